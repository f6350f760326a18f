"""Each stage on a tiny problem, with real files, manifests, verifiers, GX and TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.params import load_config
from selfimprove.io import DataError, read_verified_jsonl
from selfimprove.paths import RoundPaths
from selfimprove.quality import DataQualityError
from selfimprove.samplers import SamplingParams
from selfimprove.samplers.hf import TransformersSampler
from selfimprove.stages import run_bootstrap, run_evaluate, run_finetune, run_sample, run_validate, run_verify
from selfimprove.tracker import NullTracker
from selfimprove.types import Completion, Problem, TrainRow, Verdict

from helpers import MINI_OVERRIDES


def test_transformers_sampler_records(tiny_model_dir: Path) -> None:
    from selfimprove.problems.arithmetic import ArithmeticProblems

    problems = ArithmeticProblems().eval_set(10, [1, 2], seed=0)
    params = SamplingParams(k=3, greedy=True, temperature=1.0, max_new_tokens=8, seed=3, batch_size=64)
    with TransformersSampler(tiny_model_dir) as s:
        a = s.sample(problems, params, round=4, progress=False)
        b = s.sample(problems, params, round=4, progress=False)
    assert len(a) == 4 * len(problems)
    assert [c.text for c in a] == [c.text for c in b], "same seed, same samples"
    first = [c for c in a if c.problem_id == problems[0].id]
    assert [c.sample_idx for c in first] == [0, 1, 2, 3] and first[0].greedy and not first[1].greedy
    for c in a:
        assert c.round == 4 and c.id == f"{c.problem_id}#{c.sample_idx}" and c.sampler == "transformers"
        assert c.finish_reason == "stop"  # problems declare their answer length
        assert c.token_logprobs is not None and len(c.token_logprobs) >= c.n_tokens
        assert all(lp <= 0 for lp in c.token_logprobs)
    greedy_acc = sum(c.text == next(p.answer for p in problems if p.id == c.problem_id) for c in a if c.greedy)
    assert greedy_acc / len(problems) > 0.8
    # log-probs are the model's own: a greedy token is the argmax of an independent forward pass
    import torch

    g = next(c for c in a if c.greedy and c.problem_id == problems[-1].id)
    prompt = problems[-1].prompt
    with TransformersSampler(tiny_model_dir) as s:
        ids = s.tok(prompt + g.text, return_tensors="pt")
        logp = torch.log_softmax(s.model(**ids).logits[0].float(), -1)
    n_prompt = len(s.tok(prompt)["input_ids"])
    expected = [logp[n_prompt - 1 + j].max().item() for j in range(g.n_tokens)]
    assert g.token_logprobs[: g.n_tokens] == pytest.approx(expected, abs=1e-4)
    # the two ways to get them agree: generate's per-step logits (within the budget) and one teacher-forced pass
    with TransformersSampler(tiny_model_dir) as s:
        s.logits_budget_bytes = 0  # as a 152k-vocabulary model would: recompute
        c = s.sample(problems, params, round=4, progress=False)
    assert [x.text for x in c] == [x.text for x in a]
    for x, y in zip(a, c, strict=True):
        assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)


def test_missing_model_fails_before_work(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model not found: .*nope"):
        TransformersSampler(tmp_path / "nope")


@pytest.fixture(scope="module")
def round_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """bootstrap + one round of every stage, NullTracker, in a temporary project."""
    import shutil

    root = Path(__file__).resolve().parents[2]
    proj = tmp_path_factory.mktemp("stages")
    shutil.copy(root / "params.yaml", proj / "params.yaml")
    cfg = load_config(proj / "params.yaml", MINI_OVERRIDES + ["tracking.enabled=false"])
    t = NullTracker()
    r0 = RoundPaths.for_round(cfg, "r0", proj)
    reports = {"bootstrap": run_bootstrap(cfg, r0, t), "evaluate@r0": run_evaluate(cfg, r0, t)}
    paths = RoundPaths.for_round(cfg, "r1", proj)
    for name, fn in [("sample", run_sample), ("verify", run_verify), ("validate", run_validate),
                     ("finetune", run_finetune), ("evaluate", run_evaluate)]:
        reports[name] = fn(cfg, paths, t)
    return cfg, proj, reports


def test_prefix_views_are_sampled_checked_and_never_trained_on(round_outputs, tmp_path: Path) -> None:
    """sample.views: each problem's prefix view is sampled beside it; view_agreement keeps an answer only if the
    view's label is unanimous and agrees with its low digits; no view row reaches the training set."""
    import shutil

    cfg0, proj0, _ = round_outputs
    shutil.copy(proj0 / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(proj0 / "runs" / "r0", tmp_path / "runs" / "r0")
    cfg = load_config(tmp_path / "params.yaml", MINI_OVERRIDES + [
        "tracking.enabled=false", "sample.views=[prefix]", "rounds={r1: {prev: r0, difficulties: [2]}}"])
    assert [f.function for f in cfg.validate_.filters][:3] == ["format", "agreement", "view_agreement"]
    p, t = RoundPaths.for_round(cfg, "r1", tmp_path), NullTracker()
    run_sample(cfg, p, t)
    run_verify(cfg, p, t)
    report = run_validate(cfg, p, t)
    problems = {q.id: q for q in read_verified_jsonl(p.sample / "problems.jsonl", Problem)}
    originals = [q for q in problems.values() if not q.meta.get("view_of")]
    views = {q.id: q for q in problems.values() if q.meta.get("view_of")}
    assert len(originals) == len(views) == 60
    assert all(q.meta["views"] == [f"{q.id}/prefix"] and views[f"{q.id}/prefix"].difficulty == 1 for q in originals)
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    assert {c.problem_id for c in samples} == set(problems)
    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    view_label = {v.problem_id: (v.label, v.agreement) for v in verdicts if v.problem_id in views}
    accepted = read_verified_jsonl(p.validate / "accepted.jsonl", TrainRow)
    assert accepted, "a model trained on 1-2 digit sums labels some 2-digit problems"
    for r in accepted:
        assert r.problem_id not in views
        label, agreement = view_label[f"{r.problem_id}/prefix"]
        assert agreement == 1.0 and label[:1] == r.completion[:1]
    train = read_verified_jsonl(p.validate / "train.jsonl", TrainRow)
    assert not any(r.problem_id in views for r in train)
    stats = {f["function"]: f for f in report.details["filters"]}
    assert stats["view_agreement"]["rows_out"] < stats["view_agreement"]["rows_in"]


def test_bootstrap_outputs(round_outputs) -> None:
    cfg, proj, reports = round_outputs
    r0 = RoundPaths.for_round(cfg, "r0", proj)
    real = read_verified_jsonl(r0.validate / "train.jsonl", TrainRow)
    assert len(real) == 2 * 2000 and {r.origin for r in real} == {"real"}
    assert (r0.model / "config.json").exists() and (r0.model / "manifest.json").exists()
    metrics = json.loads(r0.metrics.read_text())
    assert metrics["round"] == 0 and metrics["accuracy/d1"] > 0.5, metrics
    assert {"accuracy/d1", "accuracy/d2", "accuracy/d3", "maj_at_2/d1", "pass_at_2/d1"} <= set(metrics)


def test_sample_and_verify_outputs(round_outputs) -> None:
    cfg, proj, reports = round_outputs
    p = RoundPaths.for_round(cfg, "r1", proj)
    problems = read_verified_jsonl(p.sample / "problems.jsonl", Problem)
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    assert len(problems) == 60 and {q.difficulty for q in problems} == {3}
    assert len(samples) == 60 * 3 == len(verdicts)
    assert "answer" not in (p.sample / "samples.jsonl").read_text().split("\n")[0]  # no gold next to samples
    assert {v.verifier for v in verdicts} == {"majority_vote"}
    assert reports["verify"].details["label_free"] is True


def test_validate_builds_mixed_training_set(round_outputs) -> None:
    cfg, proj, reports = round_outputs
    p = RoundPaths.for_round(cfg, "r1", proj)
    train = read_verified_jsonl(p.validate / "train.jsonl", TrainRow)
    accepted = read_verified_jsonl(p.validate / "accepted.jsonl", TrainRow)
    n_self = sum(r.origin == "self" for r in train)
    assert n_self == len(accepted) > 0
    assert sum(r.origin == "real" for r in train) == n_self  # mix_real 0.5
    assert {f["function"] for f in reports["validate"].details["filters"]} >= {"format", "agreement", "dedup"}
    assert json.loads((p.validate / "quality.json").read_text())["success"] is True


def test_finetune_and_evaluate(round_outputs) -> None:
    cfg, proj, reports = round_outputs
    p = RoundPaths.for_round(cfg, "r1", proj)
    assert reports["finetune"].metrics["finetune/steps"] == 5
    assert (p.model / "model.safetensors").exists()
    m = json.loads(p.metrics.read_text())
    assert m["round"] == 1
    assert 0.0 <= m["acceptance_precision"] <= 1.0
    for key in ("sample/completions", "verify/pass_rate", "validate/accepted", "finetune/steps"):
        assert key in m
    # timings vary between identical runs: they go to MLflow, never into DVC-tracked files
    assert not [k for k in m if k.endswith("seconds") or k.endswith("_per_s")]
    for d in (p.sample, p.verify, p.validate, p.model, p.evaluate):
        text = (d / "stage_report.json").read_text() + (d / "manifest.json").read_text()
        assert "seconds" not in text and "created" not in text, d
    from selfimprove.stages import run_summary

    run_summary(cfg, p, NullTracker())
    head = json.loads((proj / "runs" / "summary" / "metrics.json").read_text())
    assert head["last_round"] == 1 and head["round_accuracy"]["r1"] == pytest.approx(m["accuracy"], abs=1e-6)
    csv = (proj / "runs" / "summary" / "accuracy.csv").read_text().splitlines()
    assert csv[0].startswith("round,accuracy_d1,accuracy_d2,accuracy_d3,accuracy,acceptance_precision")
    assert [line.split(",")[0] for line in csv[1:]] == ["0", "1"]
    assert (proj / "runs" / "summary" / "accuracy.png").stat().st_size > 1000
    # loop health: label-free metrics from validate, samples-vs-gold from evaluate, across rounds in the summary
    for key in ("health/distinct_answers", "health/answer_entropy", "health/distinct_2", "health/repetition_rate",
                "health/stop_rate", "health/mean_length", "health/pass_at_1", "health/pass_at_k",
                "health/exploration", "health/proxy_agreement"):
        assert key in m, key
    assert m["health/pass_at_k"] >= m["health/pass_at_1"] and 1.0 <= m["health/distinct_answers"]
    assert sum(v for k, v in m.items() if k.startswith("health/accepted/")) == m["validate/accepted"]
    health = (proj / "runs" / "summary" / "health.csv").read_text().splitlines()
    assert health[0].startswith("round,distinct_answers,answer_entropy,distinct_2,repetition_rate")
    assert health[0].endswith(",acceptance_precision") and [line.split(",")[0] for line in health[1:]] == ["0", "1"]
    assert (proj / "runs" / "summary" / "health.png").stat().st_size > 1000


def test_validate_gate_failure_stops_the_round(round_outputs, tmp_path: Path) -> None:
    """A failed GX suite raises, writes a readable report, and leaves the previous output untouched."""
    cfg, proj, _ = round_outputs
    strict = cfg.model_copy(deep=True)
    strict.validate_cfg.expectations.min_rows = 10_000
    p = RoundPaths.for_round(cfg, "r1", proj)
    before = (p.validate / "train.jsonl").read_bytes()
    with pytest.raises(DataQualityError, match=r"\[accepted\] expect_table_row_count_to_be_between"):
        run_validate(strict, p, NullTracker())
    assert (p.validate / "train.jsonl").read_bytes() == before
    report = json.loads((p.dir / "validate.failed.json").read_text())
    assert "expect_table_row_count_to_be_between" in report["error"]


def test_finetune_never_trains_on_a_partial_file(round_outputs) -> None:
    cfg, proj, _ = round_outputs
    p = RoundPaths.for_round(cfg, "r1", proj)
    train = p.validate / "train.jsonl"
    original = train.read_bytes()
    try:
        train.write_bytes(original[: len(original) // 2].rsplit(b"\n", 1)[0] + b"\n")  # valid-looking, shorter
        with pytest.raises(DataError, match="train.jsonl"):
            run_finetune(cfg, p, NullTracker())
    finally:
        train.write_bytes(original)


def test_ensemble_members_sample_vote_and_train_together(tmp_path: Path) -> None:
    """model.ensemble: every member samples, the vote pools them, each member is fine-tuned and evaluated; with
    sample.shards the problems are sampled and verified in shards and merged back in order."""
    import shutil

    from selfimprove.ensemble import members

    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    cfg = load_config(tmp_path / "params.yaml", MINI_OVERRIDES + [
        "tracking.enabled=false", "model.ensemble=2", "bootstrap.train.steps=40", "bootstrap.early_stop=null",
        "bootstrap.examples_per_difficulty=500", "sample.problems_per_round=20", "sample.k=1", "sample.shards=3",
    ])
    t = NullTracker()
    run_bootstrap(cfg, RoundPaths.for_round(cfg, "r0", tmp_path), t)
    p = RoundPaths.for_round(cfg, "r1", tmp_path)
    for fn in (run_sample, run_verify, run_validate, run_finetune):
        fn(cfg, p, t)
    report = run_evaluate(cfg, p, t)
    assert [m.name for m in members(p.model)] == ["m0", "m1"]
    assert all((m / "config.json").exists() for m in members(p.base.model))
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    assert len(samples) == 20 * 2 * 2 and {c.meta["member"] for c in samples} == {0, 1}
    assert len({c.id for c in samples}) == len(samples)
    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    assert {v.details["votes"] for v in verdicts} == {4}, "the vote pools both members' answers, across shards"
    # sample.shards=3: each model sampled 3 shards (member-major, then shard); the shards' verdicts are merged back
    # into the order of samples.jsonl
    assert [c.meta["member"] for c in samples] == [0] * 40 + [1] * 40
    assert [v.sample_id for v in verdicts] == [c.id for c in samples]
    assert not (tmp_path / "runs" / ".parts").exists()
    m = report.metrics
    assert m["accuracy/d1"] == m["members/m0/accuracy/d1"], "m0 is the product model: the headline is its own"
    assert "members/m1/accuracy/d1" in m and "members/m1/maj_at_4/d1" not in m  # helpers: greedy accuracy only


def test_same_inputs_give_the_same_bytes(round_outputs, tmp_path: Path, monkeypatch) -> None:
    """DVC outputs hold no timestamps or timings: rerunning round 1's stages on the same inputs writes the same
    bytes (so DVC's hashes, dvc.lock and a run restored from DVC's run cache agree with a fresh run). Paths are
    project-relative, as in the flow and in `dvc repro`."""
    import shutil

    cfg, proj, _ = round_outputs
    outs = []
    for name in ("a", "b"):
        copy = tmp_path / name
        shutil.copytree(proj / "runs", copy / "runs")
        monkeypatch.chdir(copy)
        paths = RoundPaths.for_round(cfg, "r1", ".")
        for d in (paths.sample, paths.verify, paths.validate, paths.model, paths.evaluate):
            shutil.rmtree(d)
        for fn in (run_sample, run_verify, run_validate, run_finetune, run_evaluate):
            fn(cfg, paths, NullTracker())
        outs.append(copy / "runs" / "r1")
    a, b = outs
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(f.name == "model.safetensors" for f in files) and any(f.name == "verdicts.jsonl" for f in files)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"runs/r1/{f} differs between identical runs"
    assert (tmp_path / "a" / "runs" / "metrics" / "r1.json").read_bytes() == \
        (tmp_path / "b" / "runs" / "metrics" / "r1.json").read_bytes()
