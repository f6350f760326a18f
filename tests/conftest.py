"""Shared fixtures: offline environment, a miniature project, a tiny trained model, one Prefect backend.

Everything is real and local: tiny models built from a config (never downloaded), DVC in temporary git
repos, MLflow on SQLite, GX ephemeral contexts, Prefect's test harness. Expensive things are built once per
session: the harness (~10 s to start) and a tiny model trained for a few hundred steps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "benchmarks"

from selfimprove import envdefaults  # noqa: E402

envdefaults.apply("tiny", extra={"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})  # offline, no telemetry: the product's own

for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from helpers import make_project  # noqa: E402

def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def mini_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny coupled-position model trained on 1-2 digit addition (~15 s), saved in HF format."""
    from selfimprove.config import TrainConfig
    from selfimprove.models import build_char_tokenizer, build_tiny_model
    from selfimprove.problems.arithmetic import ArithmeticProblems
    from selfimprove.trainers.sft import train_sft
    from selfimprove.types import TrainRow

    out = tmp_path_factory.mktemp("tiny") / "model"
    ps = ArithmeticProblems()
    rows = [
        TrainRow(id=p.id, prompt=p.prompt, completion=p.answer, problem_id=p.id, origin="real", round=0, difficulty=p.difficulty)
        for p in ps.labelled(2000, [1, 2], seed=0)
    ]
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, seed=0)
    cfg = TrainConfig(steps=200, lr=2e-3, warmup_steps=20, batch_size=128, max_length=32, logging_steps=50)
    train_sft("unused", rows, out, cfg, model=model, tokenizer=tok, progress=False)
    return out


@pytest.fixture(scope="session")
def prefect_backend():
    """One real Prefect API (the test harness: a temporary local server + SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


