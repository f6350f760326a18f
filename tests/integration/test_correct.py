"""The ``correct`` stage end to end: second attempts after feedback, traces versioned, validated, trained on, gated.

Through ``selfimprove run`` on the registered fakes (the ``scripted`` sampler answers a second attempt from the model's
skill, breaking a right first answer with the model's recorded ``revise`` share; ``noop`` fine-tuning raises both),
with real Prefect, DVC, MLflow and GX."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FAKE_OVERRIDES, make_project, run_cli

ROUNDS = "rounds={r1: {prev: r0, difficulties: [3]}, r2: {prev: r1, difficulties: [3]}}"
CORRECT = ["correct.enabled=true", "correct.train=traces", "sample.k=3", "sample.problems_per_round=24",
           "evaluate.problems_per_difficulty=8", "verify.verifier=exact_match", ROUNDS]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory, prefect_backend) -> Path:
    return make_project(tmp_path_factory.mktemp("correct") / "proj", FAKE_OVERRIDES + CORRECT)


def test_traces_are_versioned_validated_trained_on_and_tracked(proj: Path) -> None:
    run_cli(["run", "--name", "fix", "--apply", "always"], proj, timeout=900)
    lock = (proj / "dvc.lock").read_text()
    assert "correct@r1" in lock and "runs/r1/correct" in lock
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "--md"], cwd=proj, capture_output=True, text=True,
                         check=True).stdout
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    assert ("verify@r1", "correct@r1") in edges and ("correct@r1", "validate@r1") in edges, dag[:2000]
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=proj, capture_output=True, text=True)
    assert "changed" not in status.stdout, status.stdout

    traces = jsonl(proj / "runs/r1/correct/traces.jsonl")
    samples = jsonl(proj / "runs/r1/sample/samples.jsonl")
    verdicts = {v["sample_id"]: v for v in jsonl(proj / "runs/r1/verify/verdicts.jsonl")}
    assert len(traces) == 24, "one second attempt per problem: the greedy first attempt (correct.per_problem 1)"
    greedy = {s["id"]: s for s in samples if s["greedy"]}
    for t in traces:
        first = t["id"].rsplit("/2#", 1)[0]
        assert first in greedy and t["y1"] == greedy[first]["text"] and t["r1"] == verdicts[first]["passed"]
        assert t["mode"] == "intrinsic" and t["feedback"] == "=" and t["attempted"]
        assert set(t) >= {"x", "y1", "r1", "feedback", "y2", "r2"}
    # SFT rows from the traces: (x, y1, "=") -> y2 for wrong->right, right->right up to keep_ratio 1 per fix
    train = jsonl(proj / "runs/r1/validate/train.jsonl")
    rows = [r for r in train if "/2#" in r["id"]]
    fixed = [t for t in traces if t["r2"] and not t["r1"]]
    kept = [t for t in traces if t["r2"] and t["r1"]]
    assert len(rows) == len(fixed) + min(len(kept), len(fixed)) and rows
    for r in rows:
        t = next(t for t in traces if r["id"].endswith(t["id"]))
        assert r["prompt"] == t["x"] + t["y1"].strip() + "=" and r["completion"] == t["y2"] and t["r2"]

    m1 = json.loads((proj / "runs/metrics/r1.json").read_text())
    acc1 = sum(t["r1"] for t in traces) / 24
    assert m1["correct/acc1"] == pytest.approx(acc1, abs=1e-6) and m1["validate/trace_rows"] == len(rows)
    assert m1["correct/delta"] == pytest.approx(m1["correct/acc2"] - m1["correct/acc1"], abs=1e-6)
    assert m1["correct/wrong_to_right"] == pytest.approx(len(fixed) / 24, abs=1e-6)
    assert 0 <= m1["correct_eval/acc2"] <= 1 and "correct_eval/acc2/d3" in m1, "held-out acc@2 by evaluate"
    assert "correct_eval/acc1" in json.loads((proj / "runs/metrics/r0.json").read_text()), "round 0's baseline"
    report = json.loads(run_cli(["report", "--name", "fix", "--json"], proj).stdout)
    r1 = next(r for r in report["rounds"] if r["round"] == 1)
    assert r1["metrics"]["correct/acc2"] == pytest.approx(m1["correct/acc2"]), "MLflow holds the flip metrics"
    curves = (proj / "runs/summary/correct_curves.csv").read_text()
    assert "trace right_to_wrong" in curves and "eval wrong_to_right" in curves, "dvc plots draw the flip shares"
    assert "right_to_wrong" not in (proj / "runs/summary/health_curves.csv").read_text()


def test_a_run_learning_to_break_right_answers_is_stopped_by_the_gate(tmp_path: Path, prefect_backend) -> None:
    # each noop round raises the share of right first answers the fake's second attempt breaks: right->wrong rises
    proj = make_project(tmp_path / "proj", FAKE_OVERRIDES + CORRECT + [
        "sample.scripted.accuracy=0.6", "finetune.noop.revise_gain=0.4",
        "loop.health=[{metric: correct/right_to_wrong, max_rise: 0.0}]",
        "rounds={r1: {prev: r0, difficulties: [3]}, r2: {prev: r1, difficulties: [3]}, r3: {prev: r2, difficulties: [3]}}"])
    out = run_cli(["run", "--name", "breaks", "--apply", "always"], proj, timeout=900)
    text = out.stdout + out.stderr
    assert "correct/right_to_wrong" in text and "failed in round 2" in text, text[-3000:]
    assert not (proj / "runs/metrics/r3.json").exists(), "the run stopped: round 3 never ran"
    params = (proj / "params.yaml").read_text()
    assert not re.search(r"^  r3:", params, re.M) and "stopped after this round: health gate failed: correct/right_to_wrong" in params
    m1 = json.loads((proj / "runs/metrics/r1.json").read_text())
    m2 = json.loads((proj / "runs/metrics/r2.json").read_text())
    assert m2["correct/right_to_wrong"] > m1["correct/right_to_wrong"]


def test_grpo_two_attempt_rollout_masks_the_feedback_and_rewards_improvement(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """A real TRL GRPO run on the tiny arithmetic model with the two-attempt rollout (TRL's rollout_func)."""
    import torch

    from selfimprove.config import TrainConfig
    from selfimprove.problems.arithmetic import ArithmeticProblems
    from selfimprove.trainers.grpo import GRPOOptions, RewardSpec, Rollouts, TwoAttempts, train_grpo
    from selfimprove.trainers.sft import load_for_training
    from selfimprove.types import PromptRow
    from selfimprove.verifiers import VERIFIERS

    pset = ArithmeticProblems()
    problems = {p.id: p for p in pset.training_pool(8, [2], seed=0, round=1)}
    rows = [PromptRow(id=p.id, prompt=p.prompt, problem_id=p.id, round=1, pass_rate=0.5) for p in problems.values()]
    rec = Rollouts(["improvement"], [1.0], None, 1)
    two = TwoAttempts(problems, pset, "intrinsic", None, 1.0, [RewardSpec(verifier="exact_match")],
                      lambda name: VERIFIERS.get(name)(), rec, 1)
    seen: list[dict] = []
    rollout = two.rollout

    def spy(prompts, trainer):
        out = rollout(prompts, trainer)
        seen.append({"prompts": list(prompts), **out})
        return out

    two.rollout = spy  # type: ignore[method-assign]
    cfg = TrainConfig(steps=2, batch_size=8, lr=1e-3, warmup_steps=0, max_length=32, device="cpu")
    model, tok = load_for_training(tiny_model_dir, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = train_grpo("unused", rows, tmp_path / "out", cfg, grpo=GRPOOptions(num_generations=4, temperature=1.0),
                        rewards=[], max_completion_length=3, model=model, tokenizer=tok, progress=False,
                        two_attempts=two)
    assert report["steps"] == 2 and seen
    eq = tok.convert_tokens_to_ids("=")
    for batch in seen:
        assert len(batch["completion_ids"]) == len(batch["prompts"])
        for ids, mask, r1, r2 in zip(batch["completion_ids"], batch["env_mask"], batch["r1"], batch["r2"]):
            # y1 (the model's), "=" (the intrinsic feedback: no loss), y2 (the model's)
            assert len(ids) == len(mask) and mask.count(0) == 1 and ids[mask.index(0)] == eq
    records = rec.records()
    assert records and all(r.reward in (-1.0, 0.0, 1.0, 2.0) for r in records)
    by_batch = [(a, b) for batch in seen for a, b in zip(batch["r1"], batch["r2"])]
    assert sorted(r.reward for r in records) == sorted(b + (b - a) for a, b in by_batch[:len(records)])
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "GRPO steps on two-attempt episodes moved the model"
