"""Every params file in ``examples/`` is a valid configuration, the GPU recipes say what they promise, and the
tiny-model variants run one round of their recipe end to end on CPU (bootstrap, sample, verify, validate,
finetune, evaluate) with the recipe's verifier by name, on the benchmark rows in ``tests/fixtures``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from selfimprove.params import load_config
from selfimprove.io import read_verified_jsonl
from selfimprove.paths import RoundPaths
from selfimprove.tracker import NullTracker
from selfimprove.types import Completion, Verdict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"gsm8k.params.yaml", "mbpp.params.yaml", "gsm8k-tiny.params.yaml", "mbpp-tiny.params.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.rounds, f"{path.name} defines no rounds"


@pytest.mark.parametrize("name, verifier, problems", [("gsm8k", "gsm8k", "gsm8k"), ("mbpp", "sandboxed_tests", "mbpp")])
def test_gpu_recipes(name: str, verifier: str, problems: str) -> None:
    c = load_config(ROOT / "examples" / f"{name}.params.yaml")
    assert c.model.source == "hub" and c.model.path and "Instruct" in c.model.path
    assert c.problems.name == problems and c.verify.verifier == verifier
    assert c.sample.sampler == "vllm" and c.finetune.train.lora.enabled and c.finetune.train.lora.merge
    assert len(c.rounds) >= 2
    assert any(f.function == "keep_correct" for f in c.validate_cfg.filters)
    assert c.problems.options()["data_dir"], "the recipe names where the benchmark data lives"


@pytest.mark.parametrize("name, gold", [("smollm2", True), ("smollm2-label-free", False)])
def test_real_model_recipes(name: str, gold: bool) -> None:
    """The CPU recipes on SmolLM2 (docs/real-model.md): round 0 is the GGUF import, the rounds train LoRA on
    reasoning-gym, and the label-free one reads no gold (the vote labels, the agreement filter keeps)."""
    c = load_config(ROOT / "examples" / f"{name}.params.yaml")
    assert c.model.source == "gguf" and c.problems.name == "reasoning_gym" and c.finetune.train.lora.enabled
    assert len(c.rounds) == 3 and c.threads == 2
    filters = [f.function for f in c.validate_cfg.filters]
    if gold:
        assert c.verify.verifier == "reasoning_gym" and "keep_correct" in filters
    else:
        assert c.verify.verifier == "majority_vote" and c.verify.options()["answer"] == "reasoning_gym"
        assert "agreement" in filters and "keep_correct" not in filters


def run_one_round(example: str, tmp_path: Path) -> tuple[object, Path]:
    from selfimprove.stages import (
        run_bootstrap,
        run_evaluate,
        run_finetune,
        run_sample,
        run_validate,
        run_verify,
    )

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "examples" / example, proj / "params.yaml")
    cfg = load_config(proj / "params.yaml")
    t = NullTracker()
    run_bootstrap(cfg, RoundPaths.for_round(cfg, "r0", proj), t)
    paths = RoundPaths.for_round(cfg, "r1", proj)
    for fn in (run_sample, run_verify, run_validate, run_finetune, run_evaluate):
        fn(cfg, paths, t)
    return cfg, proj


def check_round(cfg: object, proj: Path, verifier: str) -> None:
    p = RoundPaths.for_round(cfg, "r1", proj)  # type: ignore[arg-type]
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    verdicts = read_verified_jsonl(p.verify / "verdicts.jsonl", Verdict)
    assert samples and len(samples) == len(verdicts) and {v.verifier for v in verdicts} == {verifier}
    assert any(c.text.strip() for c in samples)
    assert (p.model / "config.json").exists()
    metrics = json.loads(p.metrics.read_text())
    assert metrics["round"] == 1 and 0.0 <= metrics["accuracy"] <= 1.0  # near zero is expected
    tok = json.loads((RoundPaths.for_round(cfg, "r0", proj).model / "tokenizer.json").read_text())  # type: ignore[arg-type]
    assert len(tok["model"]["vocab"]) > 40, "the character vocabulary should cover the benchmark's text"


def test_gsm8k_tiny_runs_one_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFIMPROVE_BENCHMARKS_DIR", str(FIXTURES))
    cfg, proj = run_one_round("gsm8k-tiny.params.yaml", tmp_path)
    check_round(cfg, proj, "gsm8k")


def test_mbpp_tiny_runs_one_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed: the sandboxed_tests verifier needs it (apt-get install bubblewrap)")
    monkeypatch.setenv("SELFIMPROVE_BENCHMARKS_DIR", str(FIXTURES))
    cfg, proj = run_one_round("mbpp-tiny.params.yaml", tmp_path)
    check_round(cfg, proj, "sandboxed_tests")
