"""DPO, LoRA and weighted SFT on the tiny model: whole rounds through the real stage functions, plus the checks
that each objective really trains what it claims to.

A module fixture runs the miniature bootstrap (round 0) once; every round test copies it into its own project and
runs ``sample -> verify -> validate -> finetune -> evaluate`` for r1 with its objective, then compares the round's
weights with round 0's. Knobs are the miniature project's (``helpers.MINI_OVERRIDES``: 60 problems x 3 samples,
5 optimizer steps) so each round takes seconds; what is asserted is that the stages ran, the data has the shape
the objective needs, and the parameters moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import MINI_OVERRIDES

from selfimprove.config import Config, LoraConfig, TrainConfig
from selfimprove.params import load_config
from selfimprove.filters import Candidate, FilterContext, run_filters
from selfimprove.io import read_verified_jsonl
from selfimprove.paths import RoundPaths
from selfimprove.stages import run_bootstrap, run_evaluate, run_finetune, run_sample, run_validate, run_verify
from selfimprove.tracker import NullTracker
from selfimprove.types import Completion, PreferencePair, Problem, TrainRow, Verdict

ROOT = Path(__file__).resolve().parents[2]
BASE = MINI_OVERRIDES + ["tracking.enabled=false"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def r0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Round 0 of the miniature project (bootstrap: tiny coupled model trained on 1-2 digit sums)."""
    proj = tmp_path_factory.mktemp("objectives-r0")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    cfg = load_config(proj / "params.yaml", BASE)
    run_bootstrap(cfg, RoundPaths.for_round(cfg, "r0", proj), NullTracker())
    return proj


def project_from(r0: Path, dest: Path, overrides: list[str]) -> tuple[Config, Path]:
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")
    shutil.copytree(r0 / "runs" / "r0", dest / "runs" / "r0")
    return load_config(dest / "params.yaml", BASE + overrides), dest


def run_round(cfg: Config, proj: Path, key: str = "r1") -> dict:
    paths = RoundPaths.for_round(cfg, key, proj)
    t = NullTracker()
    return {name: fn(cfg, paths, t) for name, fn in [("sample", run_sample), ("verify", run_verify),
                                                     ("validate", run_validate), ("finetune", run_finetune),
                                                     ("evaluate", run_evaluate)]}


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A round's weights as the next round would load them (adapter-only folders: base + adapter, merged)."""
    from selfimprove.samplers.hf import load_model

    model, _ = load_model(model_dir, device="cpu")
    if hasattr(model, "merge_and_unload") or getattr(model, "_hf_peft_config_loaded", False):
        from selfimprove.checkpoint import load_merged

        model, _ = load_merged(model_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert set(a) == set(b)
    return {k for k in a if not torch.equal(a[k], b[k])}


# ------------------------------------------------------------------------------------------------- DPO


def test_dpo_round_scpo_pairs_and_weights_change(r0: Path, tmp_path: Path) -> None:
    """Label-free DPO (ScPO): majority answer (kept) vs minority answers, trained with TRL's DPOTrainer."""
    cfg, proj = project_from(r0, tmp_path / "p", ["finetune.trainer=dpo", "finetune.dpo.pairs_per_problem=2"])
    reports = run_round(cfg, proj)
    p = RoundPaths.for_round(cfg, "r1", proj)
    pairs = read_verified_jsonl(p.validate / "train.jsonl", PreferencePair)
    assert pairs and all(x.chosen != x.rejected and x.round == 1 and x.origin == "self" for x in pairs)
    per_problem: dict[str, int] = {}
    for x in pairs:
        per_problem[x.problem_id] = per_problem.get(x.problem_id, 0) + 1
    assert max(per_problem.values()) <= 2
    verdicts = {v.sample_id: v for v in read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)}
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    by_text = {(c.problem_id, c.text): verdicts[c.id] for c in samples}
    for x in pairs:  # chosen agrees with the majority, rejected does not
        assert by_text[(x.problem_id, x.chosen)].passed and not by_text[(x.problem_id, x.rejected)].passed
    assert json.loads((p.validate / "quality.json").read_text())["success"] is True
    fm = reports["finetune"].metrics
    assert fm["finetune/steps"] == 5 and fm["finetune/rows"] == len(pairs)
    before, after = weights(RoundPaths.for_round(cfg, "r0", proj).model), weights(p.model)
    assert changed(before, after) == set(before), "every parameter should move under full-parameter DPO"
    assert "accuracy" in json.loads(p.metrics.read_text())


# ------------------------------------------------------------------------------------------------ GRPO


def test_grpo_round_label_free_rollouts_versioned_validated_and_weights_change(r0: Path, tmp_path: Path) -> None:
    """Online RL round: validate picks prompts by pass rate, GRPO trains with the label-free majority reward, and
    every rollout lands in runs/r1/finetune/rollouts.jsonl with its reward, pseudo-label and gold verdict."""
    from selfimprove.types import PromptRow, Rollout

    cfg, proj = project_from(r0, tmp_path / "p", ["finetune.trainer=grpo", "finetune.grpo.num_generations=4",
                                                  "finetune.train.batch_size=16", "finetune.grpo.beta=0.04",
                                                  "finetune.grpo.prompt_band=[0.3, 0.7]"])
    reports = run_round(cfg, proj)
    p = RoundPaths.for_round(cfg, "r1", proj)
    prompts = read_verified_jsonl(p.validate / "train.jsonl", PromptRow)
    assert prompts and all(0.3 <= r.pass_rate <= 0.7 for r in prompts)
    assert len({r.problem_id for r in prompts}) == len(prompts)
    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    shares = {v.problem_id: v.agreement for v in verdicts}
    assert all(abs(shares[r.problem_id] - r.pass_rate) < 1e-6 for r in prompts)  # the vote share of the round
    rollouts = read_verified_jsonl(p.finetune / "rollouts.jsonl", Rollout)
    assert len(rollouts) == 5 * 16  # steps x completions per step
    groups: dict[tuple[int, str], list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault((r.step, r.problem_id), []).append(r)
    assert {len(g) for g in groups.values()} == {4}
    assert {r.problem_id for r in rollouts} <= {x.problem_id for x in prompts}
    for g in groups.values():  # reward 1 exactly for the completions whose answer is the group's plurality answer
        label = g[0].pseudo_label
        assert all(r.pseudo_label == label for r in g)
        assert all(r.reward == (1.0 if label is not None and r.answer == label else 0.0) for r in g)
    assert all(r.gold_passed is not None for r in rollouts)  # arithmetic has gold: graded for health only
    assert json.loads((p.finetune / "quality.json").read_text())["success"] is True
    assert (p.finetune / "manifest.json").exists()
    fm = reports["finetune"].metrics
    for key in ("finetune/label_accuracy", "finetune/reward_accuracy", "finetune/gold_reward", "finetune/last_kl",
                "finetune/last_entropy", "finetune/last_reward_std", "finetune/last_frac_reward_zero_std"):
        assert key in fm, key
    assert 0.0 <= fm["finetune/label_accuracy"] <= 1.0 and fm["finetune/rollouts"] == len(rollouts)
    before, after = weights(RoundPaths.for_round(cfg, "r0", proj).model), weights(p.model)
    assert changed(before, after), "GRPO should move the weights"
    assert "finetune/reward_accuracy" in json.loads(p.metrics.read_text())


def test_grpo_round_gold_and_weighted_rewards(r0: Path, tmp_path: Path) -> None:
    """A weighted sum of a gold reward and the label-free vote: the rollout's reward is the sum TRL optimised."""
    from selfimprove.types import Rollout

    cfg, proj = project_from(r0, tmp_path / "p", [
        "finetune.trainer=grpo", "finetune.grpo.num_generations=4", "finetune.train.batch_size=8",
        "finetune.train.steps=2", "finetune.grpo.prompt_band=[0.0, 1.0]",
        "finetune.grpo.rewards=[{verifier: exact_match, weight: 1.0}, {verifier: majority_vote, weight: 0.5}]"])
    run_round(cfg, proj)
    p = RoundPaths.for_round(cfg, "r1", proj)
    rollouts = read_verified_jsonl(p.finetune / "rollouts.jsonl", Rollout)
    assert len(rollouts) == 2 * 8
    for r in rollouts:
        assert set(r.rewards) == {"exact_match", "majority_vote"}
        assert r.reward == pytest.approx(r.rewards["exact_match"] + 0.5 * r.rewards["majority_vote"], abs=1e-6)
        assert r.rewards["exact_match"] == float(r.gold_passed)  # the gold reward is the gold verdict


def test_dpo_goes_through_coupled_positions(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: TRL's DPO collator passes no position_ids and its fused LM head calls the backbone directly;
    the tiny model's backbone must then compute coupled ids (they reset at BOS, '+' and '=')."""
    from transformers import LlamaModel

    from selfimprove.models.tiny import TinyLlamaModel, coupled_position_ids
    from selfimprove.trainers.dpo import train_dpo
    from selfimprove.trainers.sft import load_for_training

    received: list[object] = []
    used: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    tiny_forward, llama_forward = TinyLlamaModel.forward, LlamaModel.forward

    def spy_tiny(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        received.append(position_ids)
        return tiny_forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)

    def spy_llama(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        used.append((input_ids.detach().clone(), None if attention_mask is None else attention_mask.detach().clone(),
                     position_ids.detach().clone()))
        return llama_forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)

    monkeypatch.setattr(TinyLlamaModel, "forward", spy_tiny)
    monkeypatch.setattr(LlamaModel, "forward", spy_llama)
    cfg = TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=0, max_length=32)
    model, tok = load_for_training(tiny_model_dir, cfg)
    pairs = [PreferencePair(id=str(i), prompt=f"{i}+{i + 1}=", chosen=str(2 * i + 1)[::-1].ljust(2, "0"),
                            rejected="99", problem_id=str(i), round=1) for i in range(1, 5)]
    report = train_dpo("unused", pairs, tmp_path / "out", cfg, model=model, tokenizer=tok, progress=False)
    assert report["steps"] == 1 and used
    assert all(p is None for p in received), "TRL's DPO path started passing position_ids: check they are coupled"
    resets = model.config.position_reset_token_ids
    for ids, mask, pos in used:
        assert torch.equal(pos, coupled_position_ids(ids, resets, mask))
        assert not torch.equal(pos, torch.arange(ids.shape[1]).expand_as(ids))


def _cand(pid: str, idx: int, text: str, passed: bool, status: str, *, greedy: bool = False, lp: float = -1.0,
          answer: str | None = "a") -> Candidate:
    p = Problem(id=pid, prompt=f"{pid}?", difficulty=1)
    c = Completion(id=f"{pid}#{idx}", problem_id=pid, round=1, sample_idx=idx, text=text, greedy=greedy,
                   token_logprobs=[lp])
    v = Verdict(sample_id=c.id, problem_id=pid, round=1, verifier="x", passed=passed, score=float(passed),
                status=status, answer=answer)  # type: ignore[arg-type]
    return Candidate(p, c, v)


def test_build_pairs_gold_and_label_free_are_deterministic() -> None:
    from selfimprove.trainers.dpo import build_pairs

    cands = [
        _cand("a", 0, "good", True, "pass", greedy=True),
        _cand("a", 1, "good too", True, "pass", lp=-0.5),
        _cand("a", 2, "bad confident", False, "fail", lp=-0.1),
        _cand("a", 3, "bad", False, "fail", lp=-3.0),
        _cand("a", 4, "bad confident", False, "fail", lp=-0.2),  # duplicate text: used once
        _cand("a", 5, "???", False, "no_answer", lp=-0.01, answer=None),
        _cand("b", 0, "tie", False, "abstain"),                 # undecided: never rejected
        _cand("b", 1, "ok", True, "pass"),
        _cand("c", 0, "only right", True, "pass"),              # nothing to reject: no pair
        _cand("d", 0, "   ", False, "fail"),                    # empty: skipped
        _cand("d", 1, "fine", True, "pass"),
    ]
    kept = [c for c in cands if c.verdict.passed]
    cfg = Config.model_validate({"finetune": {"trainer": "dpo", "dpo": {"pairs_per_problem": 3}}})
    pairs = build_pairs(cands, kept, cfg.finetune.dpo, 1)
    assert [(p.problem_id, p.chosen, p.rejected) for p in pairs] == [
        ("a", "good", "bad confident"),   # greedy chosen; a parsed, confident mistake first
        ("a", "good too", "bad"),
        ("a", "good", "???"),              # unparseable last
    ]
    assert build_pairs(list(reversed(cands)), kept, cfg.finetune.dpo, 1) == pairs  # order of the candidates does not matter
    assert len({p.id for p in pairs}) == len(pairs)
    # only kept completions can be chosen: the validate filters decide what is good enough
    assert [p.chosen for p in build_pairs(cands, kept[1:], cfg.finetune.dpo, 1) if p.problem_id == "a"] == ["good too"] * 3


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_round_merged_changes_adapted_weights_only(r0: Path, tmp_path: Path) -> None:
    cfg, proj = project_from(r0, tmp_path / "p", ["finetune.train.lora.enabled=true", "finetune.train.lora.r=4",
                                                  "finetune.train.lora.alpha=8", "finetune.train.lr=0.01"])
    run_round(cfg, proj)
    p = RoundPaths.for_round(cfg, "r1", proj)
    assert (p.model / "model.safetensors").exists() and not (p.model / "adapter_config.json").exists()
    before, after = weights(RoundPaths.for_round(cfg, "r0", proj).model), weights(p.model)
    moved = changed(before, after)
    linear = {k for k in before if k.endswith(("proj.weight",))}
    assert moved == linear, f"LoRA (all-linear) should move exactly the linear layers; moved {sorted(moved ^ linear)}"


def test_lora_adapter_only_rounds_load_and_continue(r0: Path, tmp_path: Path) -> None:
    """merge: false saves only the adapter; evaluate loads it, the next round (here DPO) keeps training it."""
    cfg, proj = project_from(r0, tmp_path / "p", [
        "finetune.train.lora.enabled=true", "finetune.train.lora.merge=false", "finetune.train.lora.r=4",
        "finetune.train.lr=0.01", "rounds={r1: {prev: r0, difficulties: [3]}, r2: {prev: r1, difficulties: [3]}}"])
    run_round(cfg, proj, "r1")
    r0m, r1m = RoundPaths.for_round(cfg, "r0", proj).model, RoundPaths.for_round(cfg, "r1", proj).model
    assert (r1m / "adapter_config.json").exists() and not (r1m / "model.safetensors").exists()
    assert json.loads((r1m / "adapter_config.json").read_text())["base_model_name_or_path"] == str(r0m.resolve())
    w0, w1 = weights(r0m), weights(r1m)
    assert changed(w0, w1)
    dpo_cfg = cfg.model_copy(deep=True)
    dpo_cfg.finetune.trainer = "dpo"
    run_round(dpo_cfg, proj, "r2")
    r2m = RoundPaths.for_round(cfg, "r2", proj).model
    adapter_cfg = json.loads((r2m / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(r0m.resolve())  # one adapter on the plain base, never stacked
    assert not (r2m / "ref").exists()  # TRL's frozen reference adapter is not part of the round's model
    assert changed(w1, weights(r2m))


def test_lora_config_validation() -> None:
    lc = LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"], r=2, alpha=4, dropout=0.0)
    from selfimprove.trainers.sft import peft_config

    pc = peft_config(TrainConfig(lora=lc))
    assert pc.r == 2 and pc.lora_alpha == 4 and set(pc.target_modules) == {"q_proj", "v_proj"}
    assert peft_config(TrainConfig()) is None


# ---------------------------------------------------------------------------------------- weighted SFT


def test_weighted_sft_round_with_entropy_weights(r0: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    filters = ("[{function: entropy_weight, sharpness: 1.0}, {function: format}, {function: agreement, min: 0.0}, "
               "{function: decontaminate}, {function: dedup}, {function: per_problem_cap, max: 1}]")
    cfg, proj = project_from(r0, tmp_path / "p", ["finetune.trainer=weighted_sft", f"validate.filters={filters}"])
    with caplog.at_level("INFO", logger="selfimprove.trainers.weighted"):
        reports = run_round(cfg, proj)
    assert "weighted SFT:" in caplog.text  # the WeightedSFTTrainer, not plain SFT, trained the round
    p = RoundPaths.for_round(cfg, "r1", proj)
    rows = read_verified_jsonl(p.validate / "train.jsonl", TrainRow)
    own = [r for r in rows if r.origin == "self"]
    assert own
    # each kept row's weight is proportional to its problem's normalised answer entropy (over all of its samples:
    # entropy_weight runs first), floored at min_weight; how diverse the tiny model's answers are is up to it
    import math
    from collections import Counter

    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    answers: dict[str, list[str]] = {}
    for i, v in enumerate(verdicts):
        answers.setdefault(v.problem_id, []).append(v.answer if v.answer is not None else f"unparsed{i}")

    def factor(pid: str) -> float:
        n, counts = len(answers[pid]), Counter(answers[pid]).values()
        return max(-sum(c / n * math.log(c / n) for c in counts) / math.log(n), 0.05)

    ratios = {round(r.weight / factor(r.problem_id), 6) for r in own}
    assert len(ratios) == 1, f"weights are not proportional to the answer entropy: {ratios}"
    assert all(r.weight == 1.0 for r in rows if r.origin == "real")
    removed = {f["function"]: f["rows_in"] - f["rows_out"] for f in reports["validate"].details["filters"]}
    assert removed["entropy_weight"] == 0  # it weighs, it never drops
    before, after = weights(RoundPaths.for_round(cfg, "r0", proj).model), weights(p.model)
    assert changed(before, after) == set(before)


def test_weighted_loss_zero_weight_row_is_ignored(tmp_path: Path) -> None:
    """Per-sequence weighted mean, scaled by 1/mean(weight): rows {A: 1, B: 0} train exactly like {A} alone."""
    from selfimprove.models import build_char_tokenizer, build_tiny_model
    from selfimprove.trainers.sft import train_weighted_sft

    tok = build_char_tokenizer("0123456789+=")

    def train(rows: list[TrainRow]) -> dict[str, torch.Tensor]:
        model = build_tiny_model(tok, layers=1, hidden=32, heads=2, intermediate=64, seed=0)
        cfg = TrainConfig(steps=1, lr=1e-2, warmup_steps=0, batch_size=len(rows), max_length=16, scheduler="constant")
        train_weighted_sft("unused", rows, tmp_path / f"o{len(rows)}{rows[-1].weight}", cfg, model=model, tokenizer=tok,
                           progress=False)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a = TrainRow(id="a", prompt="1+2=", completion="30", problem_id="a", origin="self", round=1, weight=1.0)
    b = TrainRow(id="b", prompt="4+4=", completion="80", problem_id="b", origin="self", round=1, weight=0.0)
    only_a = train([a])
    with_zero_b = train([a, b])
    with_b = train([a, b.model_copy(update={"weight": 1.0})])
    assert all(torch.allclose(only_a[k], with_zero_b[k], atol=1e-6) for k in only_a)
    assert any(not torch.allclose(only_a[k], with_b[k], atol=1e-6) for k in only_a)


def test_entropy_weight_filter() -> None:
    def rows(pid: str, answers: list[str | None]) -> list[Candidate]:
        return [_cand(pid, i, f"t{i}", True, "pass", answer=a) for i, a in enumerate(answers)]

    unanimous, split, noisy = rows("u", ["1"] * 4), rows("s", ["1", "1", "2", "2"]), rows("n", ["1", "2", "3", None])
    out, _ = run_filters(unanimous + split + noisy, [("entropy_weight", {"sharpness": 1.0})], FilterContext())
    w = {c.problem.id: c.weight for c in out}
    assert len(out) == 12 and w["u"] < w["s"] < w["n"]  # uncertain problems weigh more (EAST)
    assert sum(c.weight for c in out) / len(out) == pytest.approx(1.0)
    flat, _ = run_filters(unanimous + split, [("entropy_weight", {"sharpness": 0.0})], FilterContext())
    assert {c.weight for c in flat} == {1.0}
    inverse, _ = run_filters(unanimous + split, [("entropy_weight", {"sharpness": -1.0})], FilterContext())
    wi = {c.problem.id: c.weight for c in inverse}
    assert wi["u"] > wi["s"]
    with pytest.raises(ValueError, match="does not take"):
        run_filters(split, [("entropy_weight", {"temperature": 1.0})], FilterContext())
