"""Prefect (real API via the test harness) runs the miniature loop; DVC and MLflow agree with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli


def dvc_out(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_each_task_is_its_stage_function() -> None:
    import tasks
    from selfimprove import stages

    assert tasks.bootstrap.fn is stages.run_bootstrap
    for name, t in tasks.ROUND_TASKS.items():
        assert t.fn is getattr(stages, f"run_{name}"), name
        assert t.name == name


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory, prefect_backend):
    from flows.loop import loop_flow
    from helpers import make_project

    proj = make_project(tmp_path_factory.mktemp("prefect") / "proj")
    cwd = os.getcwd()
    try:
        result = loop_flow(project=str(proj), params="params.yaml")
    finally:
        os.chdir(cwd)
    return proj, result


def test_flow_runs_every_stage_and_leaves_dvc_clean(flow_run) -> None:
    proj, result = flow_run
    assert result["ran"] == {"r0": ["bootstrap"], "r1": ["sample", "verify", "validate", "finetune", "evaluate"]}
    assert "up to date" in dvc_out(["status"], proj)
    assert "Running stage" not in dvc_out(["repro"], proj)
    lock = (proj / "dvc.lock").read_text()
    assert "evaluate@r1" in lock and "cmd: selfimprove evaluate --round r1" in lock


def test_mlflow_holds_the_numbers_report_prints(flow_run) -> None:
    from mlflow import MlflowClient

    proj, _ = flow_run
    report = json.loads(run_cli(["report", "--json"], proj).stdout)
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    for r in report["rounds"]:
        run = client.get_run(r["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["selfimprove.round"] == str(r["round"])
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["selfimprove.kind"] == "loop"
        for key in ("accuracy", "accuracy/d1", "accuracy/d3"):
            assert run.data.metrics[key] == pytest.approx(r["metrics"][key])
        on_disk = json.loads((proj / "runs" / f"r{r['round']}" / "metrics.json").read_text())
        assert r["metrics"]["accuracy/d3"] == pytest.approx(on_disk["accuracy/d3"], abs=1e-6)
        # the parent charts the round metrics with step = round
        hist = client.get_metric_history(parent.info.run_id, "accuracy/d3")
        assert any(m.step == r["round"] for m in hist)
    versions = client.search_model_versions("name = 'test-tiny'")
    assert sorted(int(v.tags["selfimprove.round"]) for v in versions) == [0, 1]
    best = client.get_model_version_by_alias("test-tiny", "best")
    assert best.version in {v.version for v in versions}
    # datasets are logged as run inputs with their DVC (md5) hash
    r1 = client.get_run(report["rounds"][1]["run_id"])
    names = {d.dataset.name: d.dataset.digest for d in r1.inputs.dataset_inputs}
    assert "r1/train" in names and len(names["r1/train"]) == 32


def test_retried_stage_creates_no_second_run_or_version(flow_run) -> None:
    from mlflow import MlflowClient

    from selfimprove.config import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages import run_evaluate
    from selfimprove.tracking import make_tracker

    proj, _ = flow_run
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfimprove")
    runs_before = len(client.search_runs([exp.experiment_id]))
    versions_before = len(client.search_model_versions("name = 'test-tiny'"))
    cfg = load_config(proj / "params.yaml")
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        tracker = make_tracker(cfg, proj, "r1")
        run_evaluate(cfg, RoundPaths.for_round(cfg, "r1", proj), tracker)
    finally:
        os.chdir(cwd)
    assert len(client.search_runs([exp.experiment_id])) == runs_before
    assert len(client.search_model_versions("name = 'test-tiny'")) == versions_before
    hist = client.get_metric_history(tracker.run_id, "accuracy/d3")
    assert len([m for m in hist if m.step == 1]) == 1, "a retried stage logs no duplicate metric points"


def test_interrupted_loop_resumes_from_the_missing_stage(flow_run, tmp_path: Path) -> None:
    """Losing a round's model (crash during finetune) re-runs finetune and evaluate only."""
    from flows.loop import loop_flow

    proj, _ = flow_run
    shutil.rmtree(proj / "runs" / "r1" / "model")
    cwd = os.getcwd()
    try:
        result = loop_flow(project=str(proj), params="params.yaml")
    finally:
        os.chdir(cwd)
    assert result["ran"] == {"r0": [], "r1": ["finetune", "evaluate"]}
    assert "up to date" in dvc_out(["status"], proj)
