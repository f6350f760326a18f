"""Online RL rounds: TRL's ``GRPOTrainer`` with the project's verifiers as rewards.

What a GRPO round is here (``finetune.trainer: grpo``): ``sample`` and ``verify`` run as in every round;
``validate`` keeps the prompts whose pass rate lies in ``finetune.grpo.prompt_band`` (a group where every sample
passes, or none does, has zero reward variance and gives GRPO no signal) and writes them as ``PromptRow``s;
``finetune`` runs GRPO on them from the round's start model. Every completion GRPO generates is recorded with its
rewards (``Rollouts``) and written as the round's ``finetune/rollouts.jsonl`` (DVC output, GX-validated, logged
to MLflow).

Rewards (``finetune.grpo.rewards``, a weighted sum TRL computes with ``reward_weights``): each entry names a
registered verifier, built with its ``verify.<name>`` options.

- gold verifiers (``exact_match``, ``gsm8k``, ``math_equiv``, ``sandboxed_tests``): the verdict's score against
  the problem's gold answer or tests (1 = correct; the code verifier's score);
- ``majority_vote``: label-free (TTRL, SRT): the plurality answer of each prompt's group of ``num_generations``
  completions is the pseudo-label, reward 1 for completions that agree with it, 0 otherwise (a tie: no label,
  0 for all). Gold is never shown to it;
- ``judge``: the judge's normalised score (the round's start model judges unless ``verify.judge.model_path``).

Reward-hacking health (TTRL's label and reward accuracy): where the problems have gold, every rollout is also
graded by the problem set's gold verifier (never used as a reward unless named in ``rewards``):
``label_accuracy`` = share of groups whose pseudo-label is the gold answer, ``reward_accuracy`` = share of
rollouts whose label-free reward equals their gold reward. TRL's own entropy, KL, reward std and the share of
groups with zero reward std reach MLflow through the trainer's logs.

The option model lives here, beside the trainer; importing this module costs pydantic only (TRL and torch load
inside ``train_grpo``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from selfimprove.options import PosInt, Prob, Strict
from selfimprove.types import Completion, Problem, PromptRow, Rollout

log = logging.getLogger(__name__)


class RewardSpec(Strict):
    verifier: str = Field(description="A registered verifier: exact_match, gsm8k, math_equiv, sandboxed_tests, "
                          "majority_vote (label-free), judge.")
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO optimises.")

    @field_validator("verifier")
    @classmethod
    def _known(cls, v: str) -> str:
        from selfimprove.verifiers import VERIFIERS

        return VERIFIERS.check(v)


class GRPOOptions(Strict):
    """``finetune.grpo``: TRL ``GRPOConfig`` knobs (same names, same meaning) plus the rewards and prompt choice.

    Steps, learning rate and batch size come from ``finetune.train``; ``train.batch_size`` counts completions
    per optimizer step and must be a multiple of ``num_generations``."""

    num_generations: int = Field(8, ge=2, description="Completions per prompt (the group GRPO normalises over).")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient against the start model (0 = no reference model).")
    max_completion_length: PosInt | None = Field(None, description="Tokens per completion (None = sample.max_new_tokens).")
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Sampling temperature of the rollouts.")
    epsilon: float = Field(0.2, gt=0.0, description="PPO-style clipping range of the importance ratio.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="How token losses are averaged (TRL's loss_type).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's reward std ('group'), the batch's, or not at all.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(verifier="majority_vote")],
        description="Weighted sum of verifier rewards, e.g. [{verifier: gsm8k, weight: 1.0}].")
    vllm: Literal["none", "colocate", "server"] = Field(
        "none", description="Generate rollouts with vLLM (GPU): 'colocate' runs vLLM inside the training process and "
        "shares the GPU; 'server' talks to a separate 'trl vllm-serve' (vllm_server_base_url). docs/gpu.md.")
    vllm_server_base_url: str | None = Field(None, description="URL of 'trl vllm-serve' (vllm: server).")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0, description="GPU memory share vLLM may take in colocate mode (the rest trains).")
    prompt_band: tuple[Prob, Prob] = Field(
        (0.05, 0.95), description="validate keeps prompts whose pass rate in the round's samples lies in "
        "[low, high]: groups all right or all wrong carry no GRPO signal.")

    @field_validator("rewards")
    @classmethod
    def _some(cls, v: list[RewardSpec]) -> list[RewardSpec]:
        if not v:
            raise ValueError("finetune.grpo.rewards is empty: name at least one verifier, e.g. [{verifier: majority_vote}]")
        return v


# -------------------------------------------------------------------------------------------------- rewards


class Rollouts:
    """Every completion GRPO scored, in the order TRL generated them, with each reward function's value."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], member: str | None, round: int):
        self.names, self.weights, self.member, self.round = list(names), list(weights), member, round
        self.batches: list[dict[str, Any]] = []
        self._calls: dict[str, int] = defaultdict(int)

    def add(self, name: str, step: int, problem_ids: Sequence[str], texts: Sequence[str], scores: Sequence[float],
            verdicts: Sequence[Any]) -> None:
        n = self._calls[name]
        self._calls[name] += 1
        if n == len(self.batches):
            self.batches.append({"step": step, "problem_ids": list(problem_ids), "texts": list(texts), "scores": {},
                                 "passed": {}, "answers": [None] * len(texts), "labels": [None] * len(texts)})
        batch = self.batches[n]
        batch["scores"][name] = list(scores)
        batch["passed"][name] = [bool(v.passed) for v in verdicts]
        if name == "majority_vote":
            batch["answers"] = [v.answer for v in verdicts]
            batch["labels"] = [v.label for v in verdicts]
        elif all(a is None for a in batch["answers"]):
            batch["answers"] = [getattr(v, "answer", None) for v in verdicts]

    def _positions(self) -> Iterator[tuple[dict[str, Any], int, str, int, str]]:
        """(batch, position in it, problem id, index in its group, rollout id) of every rollout, in order."""
        for b in self.batches:
            seen: dict[str, int] = defaultdict(int)
            for i, pid in enumerate(b["problem_ids"]):
                idx = seen[pid]
                seen[pid] += 1
                yield b, i, pid, idx, f"{self.member or 'model'}/{b['step']}/{pid}#{idx}"

    def verdicts_of(self, name: str) -> dict[str, bool] | None:
        """Rollout id -> passed, for a reward verifier that ran (e.g. the gold one: no need to grade twice)."""
        if name not in self.names:
            return None
        return {rid: b["passed"][name][i] for b, i, _, _, rid in self._positions() if name in b["passed"]}

    def records(self) -> list[Rollout]:
        """The rollouts as records (``gold_passed`` is filled in by the caller, who knows the gold verifier)."""
        out = []
        for b, i, pid, idx, rid in self._positions():
            rewards = {n: float(b["scores"][n][i]) for n in self.names if n in b["scores"]}
            total = sum(w * rewards.get(n, 0.0) for n, w in zip(self.names, self.weights))
            out.append(Rollout(id=rid, problem_id=pid, round=self.round, step=b["step"], member=self.member,
                               index=idx, completion=b["texts"][i], reward=round(total, 6), rewards=rewards,
                               answer=b["answers"][i], pseudo_label=b["labels"][i]))
        return out


def _completions(problem_ids: Sequence[str], texts: Sequence[str], round: int) -> list[Completion]:
    return [Completion(id=f"{pid}#{i}", problem_id=pid, round=round, sample_idx=i, text=t)
            for i, (pid, t) in enumerate(zip(problem_ids, texts))]


def reward_functions(specs: Sequence[RewardSpec], make: Callable[[str], Any], problems: Mapping[str, Problem],
                     recorder: Rollouts, round: int) -> list[Callable[..., list[float]]]:
    """One TRL reward function per spec; ``make(name)`` builds the verifier (with its ``verify.<name>`` options).

    Label-free verifiers see the problems without gold (as the verify stage shows them)."""
    from selfimprove.chat import completion_text

    blind = {k: p.model_copy(update={"answer": None, "solution": None, "tests": None}) for k, p in problems.items()}
    funcs = []
    for spec in specs:
        verifier = make(spec.verifier)
        visible = problems if verifier.needs_gold else blind
        vote = spec.verifier == "majority_vote"

        def fn(prompts: list[Any], completions: list[Any], problem_id: list[str], trainer_state: Any = None,
               _v: Any = verifier, _visible: Mapping[str, Problem] = visible, _vote: bool = vote,
               _name: str = spec.verifier, **_: Any) -> list[float]:
            texts = [completion_text(c) for c in completions]
            comps = _completions(problem_id, texts, round)
            verdicts = _v.verify(_visible, comps)
            scores = [(1.0 if v.passed else 0.0) if _vote else float(v.score) for v in verdicts]
            step = int(getattr(trainer_state, "global_step", 0) or 0)
            recorder.add(_name, step, problem_id, texts, scores, verdicts)
            return scores

        fn.__name__ = spec.verifier
        fn.verifier = verifier  # type: ignore[attr-defined]
        funcs.append(fn)
    return funcs


def grade_gold(rollouts: Sequence[Rollout], problems: Mapping[str, Problem], verifier: Any) -> dict[str, bool]:
    """Gold verdict of every rollout whose problem has gold (health only; not a reward unless configured)."""
    with_gold = [r for r in rollouts if problems.get(r.problem_id) is not None
                 and (problems[r.problem_id].answer is not None or problems[r.problem_id].tests)]
    if not with_gold:
        return {}
    comps = [Completion(id=r.id, problem_id=r.problem_id, round=r.round, sample_idx=r.index, text=r.completion)
             for r in with_gold]
    verdicts = verifier.verify(problems, comps)
    return {r.id: bool(v.passed) for r, v in zip(with_gold, verdicts)}


def label_reward_accuracy(rollouts: Sequence[Rollout], problems: Mapping[str, Problem],
                          verifier: Any) -> dict[str, float]:
    """TTRL's health of a label-free reward against gold: label accuracy (share of groups whose pseudo-label is
    the gold answer) and reward accuracy (share of rollouts whose majority-vote reward equals the gold reward),
    plus the gold reward's mean. Empty when there is no gold or no majority-vote reward."""
    graded = [r for r in rollouts if r.gold_passed is not None]
    out: dict[str, float] = {}
    if not graded:
        return out
    out["gold_reward"] = sum(r.gold_passed for r in graded) / len(graded)  # type: ignore[misc]
    voted = [r for r in graded if "majority_vote" in r.rewards]
    if not voted:
        return out
    out["reward_accuracy"] = sum((r.rewards["majority_vote"] >= 0.5) == r.gold_passed for r in voted) / len(voted)
    groups: dict[tuple[str | None, int, str], Rollout] = {}
    for r in voted:
        groups.setdefault((r.member, r.step, r.problem_id), r)
    hits = []
    for r in groups.values():
        gold = problems[r.problem_id].answer
        label = r.pseudo_label
        ok = label is not None and gold is not None and (label == gold or (hasattr(verifier, "equivalent")
                                                                           and verifier.equivalent(label, gold)))
        hits.append(ok)
    out["label_accuracy"] = sum(hits) / len(hits)
    return out


# ------------------------------------------------------------------------------------------------- training


def _check_vllm(grpo: GRPOOptions, cuda: bool) -> None:
    """vLLM rollouts need a GPU and vLLM in this environment (colocate) or a running server (server)."""
    import importlib.util

    if not cuda:
        raise RuntimeError(f"finetune.grpo.vllm is {grpo.vllm!r} but training runs on CPU (no GPU, or "
                           "finetune.train.device: cpu); set finetune.grpo.vllm: none to generate with transformers")
    if grpo.vllm == "colocate" and importlib.util.find_spec("vllm") is None:
        raise RuntimeError("finetune.grpo.vllm is 'colocate' but vLLM is not installed in this environment (TRL runs "
                           "it in-process); install it here, or use vllm: server with 'trl vllm-serve' (docs/gpu.md)")
    if grpo.vllm == "server" and not grpo.vllm_server_base_url:
        raise RuntimeError("finetune.grpo.vllm is 'server': set finetune.grpo.vllm_server_base_url to the URL of "
                           "'trl vllm-serve --model <start model>' (docs/gpu.md)")


def train_grpo(
    init_model: str | Path,
    rows: Sequence[PromptRow],
    out_dir: str | Path,
    cfg: Any,
    tracker: Any = None,
    *,
    grpo: GRPOOptions,
    rewards: Sequence[Callable[..., list[float]]],
    max_completion_length: int,
    chat: bool = False,
    prefix: str = "finetune",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    model: Any = None,
    tokenizer: Any = None,
    two_attempts: TwoAttempts | None = None,
) -> dict[str, Any]:
    """GRPO on ``rows``' prompts from ``init_model``; save to ``out_dir``; return a report with the SFT trainer's
    keys plus TRL's last reward, reward std, zero-std share, KL and entropy."""
    from selfimprove.chat import conversational, stop_token_ids
    from selfimprove.tracker import Tracker
    from selfimprove.trainers.sft import (
        TrackerCallback,
        common_args,
        load_for_training,
        peft_config,
        quiet_hf,
        quiet_progress,
        save_model,
        use_cuda,
    )

    quiet_hf()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if not rows:
        raise ValueError("no training prompts: validate kept no prompt inside finetune.grpo.prompt_band this round")
    if cfg.batch_size % grpo.num_generations:
        raise ValueError(f"finetune.train.batch_size ({cfg.batch_size}) must be a multiple of "
                         f"finetune.grpo.num_generations ({grpo.num_generations})")
    out_dir = Path(out_dir)
    tracker = tracker or Tracker()
    if model is None:
        model, tokenizer = load_for_training(init_model, cfg)
    tokenizer.padding_side = "left"  # TRL pads prompts on the left for generation
    records = [(conversational(r.prompt, r.messages) if chat else {"prompt": r.prompt}) | {"problem_id": r.problem_id}
               for r in rows]
    args_common = common_args(cfg, out_dir, progress)
    args_common.pop("max_length", None)
    args = GRPOConfig(
        **args_common,
        num_generations=grpo.num_generations,
        beta=grpo.beta,
        max_completion_length=max_completion_length,
        temperature=grpo.temperature,
        epsilon=grpo.epsilon,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        reward_weights=[1.0] if two_attempts is not None else [s.weight for s in grpo.rewards],
        generation_kwargs={"eos_token_id": stop_token_ids(tokenizer)},
    )
    tcb = TrackerCallback(tracker, prefix)
    if grpo.vllm != "none":
        _check_vllm(grpo, use_cuda(cfg.device))
        args.use_vllm = True
        args.vllm_mode = grpo.vllm
        args.vllm_gpu_memory_utilization = grpo.vllm_gpu_memory_utilization
        if grpo.vllm_server_base_url:
            args.vllm_server_base_url = grpo.vllm_server_base_url
    extra: dict[str, Any] = {}
    if two_attempts is not None:  # self-correction: TRL's rollout_func with an env_mask over the feedback tokens
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # experimental in TRL 1.16: said in docs/correct.md
        two_attempts.index(rows, chat)
        two_attempts.max_new_tokens, two_attempts.temperature = max_completion_length, grpo.temperature
        extra["rollout_func"] = two_attempts.rollout
        rewards = [two_attempts.improvement]  # its __name__ is what TRL logs the reward as
    trainer = GRPOTrainer(model=model, reward_funcs=list(rewards), args=args, train_dataset=Dataset.from_list(records),
                          processing_class=tokenizer, peft_config=peft_config(cfg, model),
                          callbacks=[tcb.callback, *callbacks], **extra)
    quiet_progress(trainer)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    tokenizer.padding_side = "right"
    save_model(trainer, tokenizer, out_dir, cfg)
    report: dict[str, Any] = {
        "rows": len(rows),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "final_loss": float(tcb.last.get(f"{prefix}/loss", result.training_loss)),
        "seconds": round(seconds, 2),
        "learning_rate": float(trainer.args.learning_rate),
        "examples_per_s": round(trainer.state.global_step * cfg.batch_size / max(seconds, 1e-9), 1),
    }
    for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length"):
        if f"{prefix}/{key}" in tcb.last:
            report[key.replace("/", "_")] = float(tcb.last[f"{prefix}/{key}"])
    log.info("GRPO: %d steps on %d prompts x %d generations in %.1fs (reward %.3f)", report["steps"], len(rows),
             grpo.num_generations, seconds, report.get("reward", float("nan")))
    return report


# ------------------------------------------------------------------------------- two attempts (correct.train)


class TwoAttempts:
    """GRPO on self-correction (``correct.train: traces`` with ``finetune.trainer: grpo``): a two-attempt rollout and
    SCoRe's reward r2 + alpha * (r2 - r1), through TRL's ``rollout_func`` (experimental in TRL 1.16) and its
    ``env_mask``.

    Per prompt TRL hands it (each problem ``num_generations`` times): the model's first attempt y1 (sampled at the
    round's GRPO temperature, cut at the end of turn), graded (r1) by the reward verifiers; the feedback of
    ``correct.mode`` (the problem set's ``correction_prompt``, so the rollout, the ``correct`` stage and the SFT rows
    share one format; extrinsic: only after a wrong y1, a right one ends the episode with y2 = y1); the second attempt
    y2, graded (r2). The completion TRL trains on is y1 + feedback + y2 with ``env_mask`` 0 on the feedback tokens,
    so the loss and the KL fall on the model's own tokens only, both attempts trained as in SCoRe's second stage.

    r1 and r2 are the weighted sum of ``finetune.grpo.rewards``: gold verifiers grade each attempt; ``majority_vote``
    takes the plurality of the group's first attempts as the label and grades both attempts against it (no gold).
    The rollouts recorded are the second attempts with their reward (health grades them against gold)."""

    def __init__(self, problems: Mapping[str, Problem], pset: Any, mode: str, instruction: str | None, alpha: float,
                 specs: Sequence[RewardSpec], make: Callable[[str], Any], recorder: Rollouts, round: int):
        self.problems, self.pset, self.mode, self.instruction, self.alpha = problems, pset, mode, instruction, alpha
        self.specs, self.recorder, self.round = list(specs), recorder, round
        self.verifiers = [make(s.verifier) for s in specs]
        self.blind = {k: p.model_copy(update={"answer": None, "solution": None, "tests": None})
                      for k, p in problems.items()}
        self.by_prompt: dict[str, str] = {}
        self.chat = False
        self.max_new_tokens = 16
        self.temperature = 1.0
        self.counts = {"episodes": 0, "second_attempts": 0}

    def index(self, rows: Sequence[PromptRow], chat: bool) -> None:
        import json

        self.chat = chat
        for r in rows:
            key = json.dumps(r.messages or [{"role": "user", "content": r.prompt}]) if chat else r.prompt
            self.by_prompt[key] = r.problem_id

    def _problem_id(self, prompt: Any) -> str:
        import json

        key = json.dumps(prompt) if self.chat else prompt
        return self.by_prompt[key]

    # -------------------------------------------------------------------------------------- grading
    def grade(self, problem_ids: Sequence[str], texts: Sequence[str], labels: Sequence[str | None] | None = None
              ) -> tuple[list[float], list[Any], list[str | None]]:
        """The weighted reward of each text, its first verifier's verdict, and the group label (majority vote:
        the plurality of these texts; or the given ``labels``, graded by the vote's answer reader)."""
        comps = _completions(problem_ids, texts, self.round)
        total = [0.0] * len(texts)
        first: list[Any] = []
        out_labels: list[str | None] = [None] * len(texts)
        for k, (spec, v) in enumerate(zip(self.specs, self.verifiers)):
            vote = spec.verifier == "majority_vote"
            if vote and labels is not None:
                scores, verdicts = [], []
                for c, label in zip(comps, labels):
                    answer = v.answer_verifier.extract(c.text, self.blind[c.problem_id])
                    ok = label is not None and answer is not None and (answer == label or
                                                                        v.answer_verifier.equivalent(answer, label))
                    scores.append(1.0 if ok else 0.0)
                    verdicts.append(_Judged(ok, answer, label))
                out_labels = list(labels)
            else:
                verdicts = v.verify(self.problems if v.needs_gold else self.blind, comps)
                scores = [(1.0 if x.passed else 0.0) if vote else float(x.score) for x in verdicts]
                if vote:
                    out_labels = [x.label for x in verdicts]
            total = [t + spec.weight * s for t, s in zip(total, scores)]
            if k == 0:
                first = list(verdicts)
        return total, first, out_labels

    # -------------------------------------------------------------------------------------- rollout
    def rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """TRL's ``rollout_func``: one two-attempt episode per prompt (prompts come ``num_generations`` times)."""
        from selfimprove.chat import messages_of, render_prompt, stop_token_ids

        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        pids = [self._problem_id(p) for p in prompts]
        problems = [self.problems[pid] for pid in pids]
        text1 = [render_prompt(tok, messages_of(p.prompt, p.messages)) if self.chat else p.prompt for p in problems]
        ids1 = [tok(t, add_special_tokens=not self.chat)["input_ids"] for t in text1]
        stops = stop_token_ids(tok)
        y1_ids = _generate(model, tok, ids1, self.max_new_tokens, self.temperature, stops, keep_stop=False)
        y1 = [tok.decode(ids, skip_special_tokens=True) for ids in y1_ids]
        r1, v1, labels = self.grade(pids, y1)
        feedback_ids: list[list[int]] = []
        asked: list[int] = []
        for i, (p, t1, y, v) in enumerate(zip(problems, text1, y1, v1)):
            if self.mode == "extrinsic" and v.passed:
                feedback_ids.append([])
                continue
            fb = self.pset.feedback(self.mode, v, self.instruction)
            second = self.pset.correction_prompt(p, y, fb, id=f"{p.id}/2")
            t2 = render_prompt(tok, messages_of(second.prompt, second.messages)) if self.chat else second.prompt
            y_used = y if self.chat else y.strip() if t2.startswith(t1 + y.strip()) else y
            if not t2.startswith(t1 + y_used):
                raise ValueError(f"problem set {self.pset.name!r}: the second-attempt prompt does not continue the "
                                 f"first attempt ({t2[:120]!r}); GRPO's two-attempt rollout needs it to")
            feedback_ids.append(tok(t2[len(t1 + y_used):], add_special_tokens=False)["input_ids"])
            asked.append(i)
        y2_ids: list[list[int]] = [[] for _ in prompts]
        if asked:
            got = _generate(model, tok, [ids1[i] + y1_ids[i] + feedback_ids[i] for i in asked], self.max_new_tokens,
                            self.temperature, stops, keep_stop=True)
            for i, ids in zip(asked, got):
                y2_ids[i] = ids
        y2 = [tok.decode(y2_ids[i], skip_special_tokens=True) if i in set(asked) else y1[i] for i in range(len(y1))]
        r2, v2, _ = self.grade(pids, y2, labels)
        completion_ids = [a + f + b for a, f, b in zip(y1_ids, feedback_ids, y2_ids)]
        env_mask = [[1] * len(a) + [0] * len(f) + [1] * len(b) for a, f, b in zip(y1_ids, feedback_ids, y2_ids)]
        self.counts["episodes"] += len(prompts)
        self.counts["second_attempts"] += len(asked)
        self._last = {"y2": y2, "v2": v2}
        return {"prompt_ids": ids1, "completion_ids": completion_ids, "logprobs": None, "env_mask": env_mask,
                "r1": r1, "r2": r2, "second": y2}

    def improvement(self, prompts: list[Any], completions: list[Any], problem_id: list[str], r1: list[float],
               r2: list[float], second: list[str], trainer_state: Any = None, **_: Any) -> list[float]:
        """r2 + alpha * (r2 - r1), recorded with the second attempt as the rollout's text."""
        from selfimprove.correction import improvement_reward

        scores = [improvement_reward(a, b, self.alpha) for a, b in zip(r1, r2)]
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        verdicts = self._last["v2"] if len(self._last["v2"]) == len(scores) else [_Judged(b > 0, None, None) for b in r2]
        self.recorder.add("improvement", step, problem_id, second, scores, verdicts)
        return scores

    def close(self) -> None:
        for v in self.verifiers:
            v.close()


class _Judged:
    """A verdict-shaped record of a second attempt graded against its group's label."""

    def __init__(self, passed: bool, answer: str | None, label: str | None):
        self.passed, self.answer, self.label, self.score = passed, answer, label, 1.0 if passed else 0.0


def _generate(model: Any, tok: Any, batch: list[list[int]], max_new_tokens: int, temperature: float,
              stops: list[int], keep_stop: bool) -> list[list[int]]:
    """Sampled continuations of token-id prompts (left-padded, one batch), each cut after its first stop token
    (kept with ``keep_stop``, for the second attempt, so the model learns to end its turn)."""
    import torch

    width = max(len(b) for b in batch)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad, top_k=0, top_p=1.0)
    if was_training:
        model.train()
    result = []
    for row in out[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        if cut is None:
            result.append([t for t in row if t != pad] if pad not in stops else row)
        else:
            result.append(row[:cut + 1] if keep_stop else row[:cut])
    return result
