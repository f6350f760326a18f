"""The loop on a real Ray (prefect-ray's RayTaskRunner on a local Ray with 2 CPUs) writes the same bytes as the
sequential runner, and its members and shards ran as Prefect tasks of their own on Ray workers.

Two projects with the same params but the runner (so DVC's run cache cannot hand the second run the first one's
outputs): two ensemble members and two shards, so every split stage has at least two units. ``dvc.lock`` holds
the hash of every output folder, and ``execution`` is no stage's parameter: equal lock files mean byte-identical
datasets, verdicts, models, predictions and metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import FAKE_OVERRIDES, make_project

# a minute of Ray start-up and two runs: .ci/run runs it (-m slow)
pytestmark = pytest.mark.slow

SPLIT = [*FAKE_OVERRIDES, "model.ensemble=2", "sample.shards=2", "sample.problems_per_round=24"]


def _run(proj: Path, name: str) -> dict[str, Any]:
    from flows.loop import loop_flow

    cwd = os.getcwd()
    try:
        return loop_flow.with_options(flow_run_name=name)(project=str(proj), name=name, apply="never")
    finally:
        os.chdir(cwd)


def _ray_processes() -> list[str]:
    names = ("raylet", "gcs_server", "ray::")
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(n in text for n in names) and p.pid != os.getpid():
            out.append(text[:120])
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, prefect_backend) -> dict[str, tuple[Path, dict[str, Any]]]:
    assert not _ray_processes(), "a Ray was already running before this module"
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for runner in ("sequential", "ray"):
            # as for a user who runs `selfimprove run` outside make (a stage sets it in the flow's process): the
            # workers must be offline from their first import, or the tokenizers they save say local_files_only false
            mp.delenv("HF_HUB_OFFLINE", raising=False)
            proj = make_project(tmp_path_factory.mktemp(runner) / "proj",
                                [*SPLIT, f"execution.runner={runner}", "execution.num_cpus=2"])
            out[runner] = (proj, _run(proj, f"on-{runner}"))
    return out


def _lock(proj: Path, rev: str) -> str:
    import subprocess

    return subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=proj, capture_output=True, text=True,
                          check=True).stdout


def test_ray_and_sequential_write_the_same_bytes(both) -> None:
    (sp, seq), (rp, ray_) = both["sequential"], both["ray"]
    assert seq["ran"] == ray_["ran"] == {"r0": ["bootstrap", "evaluate"],
                                        "r1": ["propose", "sample", "verify", "correct", "validate", "finetune", "evaluate"]}
    lock_seq, lock_ray = _lock(sp, seq["rev"]), _lock(rp, ray_["rev"])
    assert "runs/r1/sample" in lock_seq and "md5:" in lock_seq
    assert lock_seq == lock_ray
    assert not list((rp / "runs").glob(".parts")) and not list((sp / "runs").glob(".parts")), "part folders are removed"


def test_members_and_shards_ran_as_tasks_on_ray_workers(both) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterTaskRunId

    names: dict[str, set[str]] = {}
    with get_client(sync_client=True) as c:
        for runner in ("sequential", "ray"):
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[
                f"on-{runner}/round-r0", f"on-{runner}/round-r1"])))
            assert len(runs) == 2
            trs = c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs]}))
            assert all(t.state.is_completed() for t in trs), [(t.name, t.state.name) for t in trs]
            names[runner] = {t.name for t in trs}
            if runner == "ray":  # a unit's own log lines (made on a Ray worker) are in its task run's logs
                tr = next(t for t in trs if t.name == "finetune@r1/m1")
                logs = [lg.message for lg in c.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[tr.id])))]
                assert any(m.startswith("noop trainer: runs/.parts/r1/finetune/m1") for m in logs), logs
    units = {"bootstrap/m0", "bootstrap/m1", "sample@r1/m0/s0", "sample@r1/m0/s1", "sample@r1/m1/s0",
             "sample@r1/m1/s1", "verify@r1/s0", "verify@r1/s1", "finetune@r1/m0", "finetune@r1/m1",
             "evaluate@r1/m0", "evaluate@r1/m1"}
    for runner in ("sequential", "ray"):
        assert units <= names[runner], (runner, units - names[runner])
        assert {"bootstrap", "sample@r1", "verify@r1", "finetune@r1", "evaluate@r1"} <= names[runner]


def test_units_on_ray_logged_to_the_rounds_mlflow_run(both) -> None:
    from mlflow import MlflowClient

    proj, _ = both["ray"]
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfimprove")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("selfimprove.experiment") == "on-ray"}
    r0, r1 = runs["round-0"], runs["round-1"]
    for run, stage in ((r0, "bootstrap"), (r1, "finetune")):  # each member's trainer logs, made on a Ray worker
        for m in ("m0", "m1"):
            assert any(k.startswith(f"{stage}/{m}/") for k in run.data.metrics), (stage, m, sorted(run.data.metrics))
    assert r1.data.metrics["sample/completions"] > 0 and "verify/pass_rate" in r1.data.metrics
    # a stage on Ray reports its wall time as <stage>/seconds and its units' summed work as <stage>/unit_seconds
    assert {"finetune/seconds", "finetune/unit_seconds", "sample/unit_seconds"} <= set(r1.data.metrics)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


def test_the_run_stopped_the_ray_it_started(both) -> None:
    import ray

    assert not ray.is_initialized()
    assert not _ray_processes(), _ray_processes()
