"""MLflow store (SQLite): who opens and closes runs, idempotent metrics, reconciliation, clear failures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT
from selfimprove.params import load_config
from selfimprove.tracker import Tracker
from selfimprove.tracking import MlflowStore, TrackingError, check_server


@pytest.fixture
def cfg(tmp_path: Path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return load_config(tmp_path / "params.yaml", ["tracking.experiment=t"])


def test_loop_and_round_runs_are_found_not_duplicated(cfg, tmp_path: Path) -> None:
    store = MlflowStore(cfg, tmp_path)
    parent = store.open_loop("exp-a", baseline="abc1234", overrides=["sample.k=1"])
    assert store.open_loop("exp-a", baseline="abc1234", overrides=["sample.k=1"]) == parent  # a retried flow
    assert store.open_loop("exp-b", baseline="abc1234", overrides=[]) != parent  # another experiment
    r1, prev = store.open_round(parent, "r1", "inputs-1", {"difficulties": [4]}, "exp-a")
    assert prev is None
    assert store.open_round(parent, "r1", "inputs-1", {"difficulties": [4]}, "exp-a") == (r1, "RUNNING")
    store.close(r1)
    assert store.open_round(parent, "r1", "inputs-1", {"difficulties": [4]}, "exp-a") == (r1, "FINISHED")
    other, _ = store.open_round(parent, "r1", "inputs-2", {"difficulties": [5]}, "exp-a")
    assert other != r1 and store.client.get_run(r1).data.tags["selfimprove.superseded"] == "true"
    assert store.client.get_run(r1).info.status == "FINISHED", "superseding never changes a finished run's status"
    run = store.client.get_run(other)
    assert run.data.params["difficulties"] == "[5]" and run.data.tags["mlflow.parentRunId"] == parent
    assert (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlruns").exists()
    exp = store.client.get_experiment(store.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs


def test_stage_tracker_logs_but_never_changes_status(cfg, tmp_path: Path) -> None:
    store = MlflowStore(cfg, tmp_path)
    parent = store.open_loop("e", baseline="abc", overrides=[])
    rid, _ = store.open_round(parent, "r1", "x", {}, "e")
    store.close(rid)
    t = store.tracker(rid, parent, 1)
    assert not any(hasattr(t, m) for m in ("finish", "fail", "close", "promote"))
    t.log_metrics({"accuracy": 0.5}, parent=True)
    store.tracker(rid, parent, 1).log_metrics({"accuracy": 0.5}, parent=True)  # a retried task
    assert [(m.step, m.value) for m in t.client.get_metric_history(rid, "accuracy")] == [(1, 0.5)]
    assert [(m.step, m.value) for m in t.client.get_metric_history(parent, "accuracy")] == [(1, 0.5)]
    assert store.client.get_run(rid).info.status == "FINISHED"


def test_killed_runs_are_reconciled(cfg, tmp_path: Path) -> None:
    store = MlflowStore(cfg, tmp_path)
    parent = store.open_loop("e", baseline="abc", overrides=[])
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.client.set_tag(parent, "selfimprove.pid", str(dead.pid))  # as if a killed process owned the run
    assert store.reconcile() == 1
    run = store.client.get_run(parent)
    assert run.info.status == "KILLED" and "gone" in run.data.tags["selfimprove.reconciled"]
    store.open_loop("e", baseline="abc", overrides=[])  # resume: the owner reopens it
    assert store.client.get_run(parent).info.status == "RUNNING"


def test_null_tracker_has_the_logging_interface() -> None:
    t = Tracker()
    t.log_metrics({"a": 1.0})
    t.log_params({"a": 1})
    t.set_tags({"a": "b"})


@pytest.mark.timeout(120)  # a hang guard only: the assertions below say why it cannot take long
def test_unreachable_server_fails_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """One HTTP attempt bounded by the given timeout, then the error (not MLflow's ~4 minutes of retries): the
    attempts are counted at the transport, not timed, so a busy machine cannot fail the test."""
    import httpx

    attempts: list[tuple[str, dict]] = []
    real = httpx.HTTPTransport.handle_request

    def handle_request(self, request):
        attempts.append((str(request.url), request.extensions.get("timeout", {})))
        return real(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    with pytest.raises(TrackingError, match=r"http://127.0.0.1:9 is unreachable.*tracking.uri"):
        check_server("http://127.0.0.1:9", timeout_s=2)
    [(url, timeout)] = attempts  # exactly one attempt, no retry
    assert url == "http://127.0.0.1:9/health"
    assert timeout == {"connect": 2, "read": 2, "write": 2, "pool": 2}  # every phase bounded by timeout_s


def test_full_disk_under_sqlite_names_the_store(cfg, tmp_path: Path, monkeypatch) -> None:
    """A full disk under MLflow's SQLite store: one sentence naming mlruns.db (not two SQLAlchemy tracebacks)."""
    import sqlite3

    store = MlflowStore(cfg, tmp_path)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.client, "create_run", full)
    with pytest.raises(TrackingError, match=r"MLflow store .*mlruns\.db: the disk is full"):
        store.open_loop("e", baseline="abc", overrides=[])


def test_a_model_above_the_copy_limit_is_registered_by_reference(cfg, tmp_path: Path, tiny_model_dir: Path) -> None:
    """A real model's weights stay in DVC's cache only: the version points at them instead of copying them."""
    import json

    from mlflow import MlflowClient

    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"model_copy_max_mb": 0.0,
                                                                               "registered_model": "by-ref"})})
    store = MlflowStore(cfg, tmp_path)
    parent = store.open_loop("exp-r", baseline="abc1234", overrides=[])
    run_id, _ = store.open_round(parent, "r1", "inputs", {"round": 1}, "exp-r")
    version = store.register(run_id, tiny_model_dir, "md5abc.dir", "Round 1 (r1) of experiment 'exp-r'.",
                             {"selfimprove.experiment": "exp-r", "selfimprove.round": "1"})
    client = MlflowClient(tracking_uri=store.uri)
    mv = client.get_model_version("by-ref", version)
    assert mv.source.endswith("/model_ref") and "stored once, in DVC" in mv.description, (mv.source, mv.description)
    ref = json.loads(Path(client.download_artifacts(run_id, "model_ref/dvc.json", str(tmp_path))).read_text())
    assert ref["dvc_md5"] == "md5abc.dir" and ref["experiment"] == "exp-r" and "dvc exp apply exp-r" in ref["fetch"]
    assert not client.list_artifacts(run_id, "model"), "no copy of the weights in MLflow"
    assert store.register(run_id, tiny_model_dir, "md5abc.dir", "again", {}) == version, "one version per model"
