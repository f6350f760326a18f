"""Preference pairs from a round's own samples, and DPO training on them with TRL's ``DPOTrainer``.

What:
- ``build_pairs(candidates, kept, options, round)``: per problem, *chosen* completions are the ones the validate
  filters kept (they passed the verifier and every filter); *rejected* ones are the problem's completions the
  verifier failed. With a gold verifier (``gsm8k``, ``exact_match``, ``sandboxed_tests``, ...) that is
  verified-correct vs incorrect, i.e. self-training with DPO (DPO-ST); with ``majority_vote`` (label-free) it is
  the majority answer vs minority answers, i.e. self-consistency preference optimisation (ScPO); with ``judge``
  it is above vs below the judge's threshold. Verdicts that decided nothing (``abstain``: a tie or an
  unparseable judgment; ``infra_error``) never become rejected examples, and empty completions are skipped.
- ``train_dpo(init_model, pairs, out_dir, cfg, tracker, *, dpo, ...)``: TRL ``DPOTrainer`` with the CPU
  settings of the SFT trainer (``common_args``: fp32, ``use_cpu``, no gradient checkpointing) and LoRA from
  ``train.lora``. The reference model is the init model, handled without any hub access: an explicit frozen
  copy for full fine-tuning; with LoRA, the init model is the policy with its adapter disabled (a fresh
  adapter) or TRL's frozen copy of a continued adapter.

Why it is deterministic: pairs depend only on the candidates and verdicts (ordering by greedy first, then the
completion's log-probability, then sample index), never on a random draw, so ``dvc repro`` rebuilds the same
``train.jsonl``.

Coupled positions: TRL's DPO collator passes ``input_ids``, ``attention_mask`` and ``completion_mask`` but no
``position_ids``, and its fused LM head calls the backbone directly; the tiny model's backbone computes coupled
ids itself when none are given, so DPO trains through the same positions generation uses
(``tests/integration/test_objectives.py`` checks this).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from selfimprove.options import PosInt, Strict
from selfimprove.types import PreferencePair

if TYPE_CHECKING:
    from selfimprove.trainers.options import TrainConfig
    from selfimprove.filters import Candidate
    from selfimprove.tracker import Tracker

log = logging.getLogger(__name__)

class DPOConfig(Strict):
    """``finetune.dpo``: TRL ``DPOConfig``'s beta and loss type, and how many pairs each problem gives."""

    beta: float = Field(0.1, gt=0.0)
    loss_type: str = "sigmoid"
    pairs_per_problem: PosInt = 1


#: Verdict statuses that say nothing about the completion's quality; such completions are never "rejected".
UNDECIDED = frozenset({"abstain", "infra_error"})


def _norm(text: str) -> str:
    return " ".join(text.split())


def _rank(c: Candidate) -> tuple[bool, float, int]:
    """Preferred first: the greedy completion, then higher log-probability, then sample index."""
    return (not c.completion.greedy, -(c.completion.logprob or 0.0), c.completion.sample_idx)


def _rejected_rank(c: Candidate) -> tuple[bool, float, int]:
    """Most informative rejections first: a parsed wrong answer before no answer; confident mistakes before
    unconfident ones (they are what the model would otherwise say)."""
    return (c.verdict.status == "no_answer", -(c.completion.logprob or 0.0), c.completion.sample_idx)


def _pair_indices(n_chosen: int, n_rejected: int, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` (chosen, rejected) index pairs, spread so that each side is reused as little as possible.

    >>> _pair_indices(2, 3, 4)
    [(0, 0), (1, 1), (0, 2), (1, 0)]
    >>> _pair_indices(1, 1, 3)
    [(0, 0)]
    """
    # step s pairs chosen s mod n_c with rejected s mod n_r, shifted by one after every lcm(n_c, n_r) steps: every
    # (chosen, rejected) combination comes up exactly once in the first n_c * n_r steps.
    lcm = math.lcm(n_chosen, n_rejected) if n_chosen and n_rejected else 1
    out = [(s % n_chosen, (s + s // lcm) % n_rejected) for s in range(min(limit, n_chosen * n_rejected))]
    return out


def build_pairs(candidates: Sequence[Candidate], kept: Sequence[Candidate], options: DPOConfig, round: int) -> list[PreferencePair]:
    """DPO pairs for the round: per problem, kept completions (chosen) vs completions the verifier failed
    (rejected), at most ``finetune.dpo.pairs_per_problem`` per problem. Deterministic."""
    per_problem = options.pairs_per_problem
    kept_ids = {c.completion.id for c in kept}
    chosen_by: dict[str, list[Candidate]] = defaultdict(list)
    rejected_by: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if not c.completion.text.strip():
            continue
        if c.completion.id in kept_ids and c.verdict.passed:
            chosen_by[c.problem.id].append(c)
        elif not c.verdict.passed and c.verdict.status not in UNDECIDED:
            rejected_by[c.problem.id].append(c)
    pairs: list[PreferencePair] = []
    for pid in sorted(chosen_by):
        chosen = sorted(chosen_by[pid], key=_rank)
        # One copy per distinct text (the same answer is often sampled several times), and never a rejected text
        # that is also a chosen one.
        seen = {_norm(c.completion.text) for c in chosen}
        rejected: list[Candidate] = []
        for c in sorted(rejected_by.get(pid, []), key=_rejected_rank):
            if _norm(c.completion.text) not in seen:
                seen.add(_norm(c.completion.text))
                rejected.append(c)
        if not rejected:
            continue
        for i, j in _pair_indices(len(chosen), len(rejected), per_problem):
            ch, rj = chosen[i], rejected[j]
            pairs.append(
                PreferencePair(
                    id=f"r{round}/{ch.completion.id}>{rj.completion.sample_idx}",
                    prompt=ch.problem.prompt,
                    chosen=ch.completion.text,
                    rejected=rj.completion.text,
                    problem_id=pid,
                    round=round,
                    difficulty=ch.problem.difficulty,
                    origin="self",
                    messages=ch.problem.messages,
                )
            )
    log.info("built %d preference pairs from %d problems with a kept and a rejected completion", len(pairs),
             len({p.problem_id for p in pairs}))
    return pairs


def train_dpo(
    init_model: str | Path,
    pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    cfg: TrainConfig,
    tracker: Tracker | None = None,
    *,
    dpo: DPOConfig | None = None,
    prefix: str = "finetune",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    model: Any = None,
    tokenizer: Any = None,
    chat: bool = False,
) -> dict[str, Any]:
    """DPO on ``pairs`` from ``init_model`` (or the given in-memory model); save to ``out_dir``; return a report with
    the SFT trainer's keys plus the last logged reward accuracy and margin."""
    from selfimprove.trainers.sft import (
        TrackerCallback,
        common_args,
        load_for_training,
        peft_config,
        quiet_hf,
        quiet_progress,
        save_model,
    )

    quiet_hf()
    from datasets import Dataset
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    if not pairs:
        raise ValueError("no preference pairs: no problem had both a kept and a rejected completion this round")
    from selfimprove.tracker import Tracker

    dpo = dpo or DPOConfig()
    out_dir = Path(out_dir)
    tracker = tracker or Tracker()
    if model is None:
        model, tokenizer = load_for_training(init_model, cfg)
    tokenizer.padding_side = "right"
    lora = peft_config(cfg, model)
    ref_model = None
    if not cfg.lora.enabled:
        # An explicit frozen copy: TRL would otherwise rebuild the reference from config._name_or_path (a hub id).
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    from selfimprove.chat import messages_of

    def row(p: PreferencePair) -> dict[str, Any]:  # chat: TRL's conversational preference format
        if not chat:
            return {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        return {"prompt": messages_of(p.prompt, p.messages), "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}]}

    ds = Dataset.from_list([row(p) for p in pairs])
    args = TrlDPOConfig(**common_args(cfg, out_dir, progress, rows=len(pairs)), beta=dpo.beta,
                        loss_type=[dpo.loss_type], dataset_num_proc=None)
    tcb = TrackerCallback(tracker, prefix)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=lora, callbacks=[tcb.callback, *callbacks])
    quiet_progress(trainer)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    save_model(trainer, tokenizer, out_dir, cfg)
    report: dict[str, Any] = {
        "rows": len(pairs),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "final_loss": float(tcb.last.get(f"{prefix}/loss", result.training_loss)),
        "seconds": round(seconds, 2),
        "learning_rate": float(trainer.args.learning_rate),  # what the trainer was given (a run's own value)
        "examples_per_s": round(trainer.state.global_step * cfg.batch_size * cfg.grad_accum / max(seconds, 1e-9), 1),
    }
    for key in ("rewards/accuracies", "rewards/margins"):
        if f"{prefix}/{key}" in tcb.last:
            report[key.replace("/", "_")] = float(tcb.last[f"{prefix}/{key}"])
    log.info("DPO: %d steps on %d pairs in %.1fs (loss %.4f)", report["steps"], len(pairs), seconds, report["final_loss"])
    return report
