"""MLflow tracking: find-or-create runs, idempotent metrics, reconciliation of killed runs, fast failure."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT
from selfimprove.config import load_config
from selfimprove.tracking import MlflowTracker, TrackingError, check_server, reconcile_stale_runs


@pytest.fixture
def cfg(tmp_path: Path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return load_config(tmp_path / "params.yaml", ["tracking.experiment=t"])


def test_runs_are_found_not_duplicated(cfg, tmp_path: Path) -> None:
    a = MlflowTracker(cfg, tmp_path, "r1")
    b = MlflowTracker(cfg, tmp_path, "r1")
    assert (a.parent_run_id, a.run_id) == (b.parent_run_id, b.run_id)
    c = MlflowTracker(cfg, tmp_path, "r2")
    assert c.parent_run_id == a.parent_run_id and c.run_id != a.run_id
    assert (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlruns").exists()


def test_metrics_are_logged_once_per_step(cfg, tmp_path: Path) -> None:
    t = MlflowTracker(cfg, tmp_path, "r1")
    t.log_metrics({"accuracy": 0.5}, parent=True)
    MlflowTracker(cfg, tmp_path, "r1").log_metrics({"accuracy": 0.5}, parent=True)  # a retried task
    hist = t.client.get_metric_history(t.run_id, "accuracy")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5)]
    assert [(m.step, m.value) for m in t.client.get_metric_history(t.parent_run_id, "accuracy")] == [(1, 0.5)]


def test_changed_params_supersede_the_old_round_run(cfg, tmp_path: Path) -> None:
    old = MlflowTracker(cfg, tmp_path, "r1")
    changed = cfg.model_copy(deep=True)
    changed.sample.temperature = 0.5
    new = MlflowTracker(changed, tmp_path, "r1")
    assert new.run_id != old.run_id and new.parent_run_id == old.parent_run_id
    assert new.client.get_run(old.run_id).data.tags["selfimprove.superseded"] == "true"


def test_killed_runs_are_reconciled(cfg, tmp_path: Path) -> None:
    t = MlflowTracker(cfg, tmp_path, "r1")
    dead = subprocess.Popen(["true"])
    dead.wait()
    t.client.set_tag(t.run_id, "selfimprove.pid", str(dead.pid))  # as if a killed process owned the run
    assert reconcile_stale_runs(t.client, t.experiment_id) == 1
    run = t.client.get_run(t.run_id)
    assert run.info.status == "KILLED" and "gone" in run.data.tags["selfimprove.reconciled"]


def test_unreachable_server_fails_in_seconds() -> None:
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 is unreachable.*tracking.uri"):
        check_server("http://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - start < 10
