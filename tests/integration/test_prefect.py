"""Runs through Prefect (the real API of the test harness), each a DVC experiment, each MLflow run with one owner.

One project for the module; the runs build on each other in file order, as a user's would:
``base`` (a whole run, applied to the workspace) -> ``again`` (same params: every stage restored, nothing
trained) -> ``bad`` (an uncommitted edit makes round 1 fail its gate) -> ``fixed`` (the edit reverted) -> a
failing single-stage command on a corrupt model. After each step the MLflow states say what happened, the
workspace params.yaml is what the user wrote, and DVC agrees with what ran. The control plane is under test, so
the model is the smallest that runs every stage for real (``helpers.FAST_OVERRIDES``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli


def dvc_out(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def run_loop(proj: Path, **kwargs: Any) -> dict[str, Any]:
    from flows.loop import loop_flow

    cwd = os.getcwd()
    try:
        name = kwargs.get("name")
        return loop_flow.with_options(flow_run_name=name)(project=str(proj), **kwargs)
    finally:
        os.chdir(cwd)


def mlflow_runs(proj: Path, experiment: str | None = None) -> dict[str, Any]:
    """{'<experiment>/<run name>': run} for the project's store (round runs as '<experiment>/round-N')."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfimprove")
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        e = run.data.tags.get("selfimprove.experiment")
        if experiment is None or e == experiment:
            out[f"{e}/{run.info.run_name}"] = run
    return out


def statuses(proj: Path, experiment: str | None = None) -> dict[str, str]:
    return {k: r.info.status for k, r in mlflow_runs(proj, experiment).items()
            if r.data.tags.get("selfimprove.superseded") != "true"}


def test_each_task_is_its_stage_function() -> None:
    import tasks
    from selfimprove import stages

    assert tasks.bootstrap.fn is stages.run_bootstrap
    assert tasks.summary.fn is stages.run_summary
    for name, t in tasks.ROUND_TASKS.items():
        assert t.fn is getattr(stages, f"run_{name}"), name
        assert t.name == name


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, prefect_backend) -> tuple[Path, dict[str, Any], bytes]:
    from helpers import make_project

    proj = make_project(tmp_path_factory.mktemp("prefect") / "proj")
    params = (proj / "params.yaml").read_bytes()
    result = run_loop(proj, name="base", apply="auto")
    return proj, result, params


def test_a_run_is_a_dvc_experiment_applied_to_an_untouched_workspace(base) -> None:
    proj, result, params = base
    assert result["ran"] == {"r0": ["bootstrap", "evaluate"],
                             "r1": ["propose", "sample", "verify", "correct", "validate", "finetune", "evaluate"]}
    assert result["applied"] is True and result["experiment"] == "base"
    assert (proj / "params.yaml").read_bytes() == params and not git(["status", "--porcelain", "params.yaml"], proj)
    assert "base" in dvc_out(["exp", "list", "--name-only"], proj).split()
    shown = dvc_out(["exp", "show", "--no-pager", "--csv"], proj)
    assert any(line.startswith("base,") for line in shown.splitlines()), shown
    assert "up to date" in dvc_out(["status"], proj)
    assert "Running stage" not in dvc_out(["repro"], proj)
    lock = (proj / "dvc.lock").read_text()
    for stage in ("bootstrap", "evaluate@r0", "finetune@r1", "evaluate@r1", "summary"):
        assert f"{stage}:" in lock, stage
    assert not (proj / ".selfimprove" / "exps" / "base").exists(), "a finished run's workspace is removed"
    rec = json.loads(run_cli(["runs", "--json"], proj).stdout)
    assert [(r["name"], r["status"], r["applied"]) for r in rec] == [("base", "finished", True)]


def test_mlflow_runs_have_one_owner_and_say_what_differed(base) -> None:
    from mlflow import MlflowClient

    proj, result, _ = base
    assert statuses(proj, "base") == {"base/base": "FINISHED", "base/round-0": "FINISHED", "base/round-1": "FINISHED"}
    runs = mlflow_runs(proj, "base")
    r1 = runs["base/round-1"]
    p = r1.data.params
    assert p["round_key"] == "r1" and p["difficulties"] == "[3]" and p["trainer"] == "noop"
    assert p["start_model"].startswith("r0") and p["lr"] == "0.001" and p["problems"] == "16"
    assert runs["base/round-0"].data.params["kind"] == "bootstrap"
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfimprove")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    versions = client.search_model_versions("name = 'test-tiny'")
    assert sorted(int(v.tags["selfimprove.round"]) for v in versions) == [0, 1]
    for v in versions:
        assert "experiment 'base'" in v.description and "accuracy" in v.description, v.description
    assert client.get_model_version_by_alias("test-tiny", "best").version in {v.version for v in versions}
    names = {d.dataset.name: d.dataset.digest for d in r1.inputs.dataset_inputs}
    assert "r1/train" in names and len(names["r1/train"]) == 32
    # the report reads the numbers back, and they are the DVC metrics files' numbers
    report = json.loads(run_cli(["report", "--name", "base", "--json"], proj).stdout)
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    for r in report["rounds"]:
        on_disk = json.loads((proj / "runs" / "metrics" / f"r{r['round']}.json").read_text())
        assert r["metrics"]["accuracy/d3"] == pytest.approx(on_disk["accuracy/d3"], abs=1e-6)
        hist = client.get_metric_history(runs["base/base"].info.run_id, "accuracy/d3")
        assert any(m.step == r["round"] for m in hist), "the loop run charts round metrics with step = round"


def test_prefect_names_runs_and_tasks_say_what_they_did(base) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[
            "base", "base/round-r0", "base/round-r1"])))
        assert sorted(r.name for r in runs) == ["base", "base/round-r0", "base/round-r1"]
        r1 = next(r for r in runs if r.name == "base/round-r1")
        logs = [lg.message for lg in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r1.id])))]
        tasks_ = {t.name for t in c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [r1.id]}))}
    text = "\n".join(logs)
    assert {"sample@r1", "verify@r1", "validate@r1", "finetune@r1", "evaluate@r1"} <= tasks_, tasks_
    assert "validate@r1: accepted" in text and "expectations passed" in text, text
    assert "finetune@r1: done" in text and "recorded in dvc.lock" in text, text
    assert "at lr 0.001" in text, text


def test_noop_rerun_restores_everything_and_leaves_every_run_finished(base) -> None:
    from selfimprove.params import load_config
    from selfimprove.tracking import MlflowStore

    proj, _, params = base
    before = statuses(proj, "base")
    t0 = time.monotonic()
    result = run_loop(proj, name="again", apply="auto")
    assert result["ran"] == {"r0": [], "r1": []}, result["rounds"]
    assert set(result["rounds"]["r1"]["states"].values()) <= {"restored", "fresh"}
    assert statuses(proj, "base") == before
    assert statuses(proj, "again") == {"again/again": "FINISHED", "again/round-0": "FINISHED",
                                       "again/round-1": "FINISHED"}
    assert "RUNNING" not in statuses(proj).values()
    store = MlflowStore(load_config(proj / "params.yaml"), proj)
    assert store.reconcile() == 0, "no run is left RUNNING without a live process"
    assert (proj / "params.yaml").read_bytes() == params
    assert "up to date" in dvc_out(["status"], proj)
    print(f"no-op rerun: {time.monotonic() - t0:.0f}s")


def test_a_taken_name_is_refused_before_anything_is_written(base) -> None:
    from selfimprove.experiments import ExperimentError

    proj, _, _ = base
    records = sorted((proj / ".selfimprove" / "runs").glob("*.json"))
    snap = {p: p.read_bytes() for p in records}
    n_runs = len(mlflow_runs(proj))
    with pytest.raises(ExperimentError, match="'base' exists"):
        run_loop(proj, name="base")
    assert {p: p.read_bytes() for p in records} == snap and len(mlflow_runs(proj)) == n_runs
    proc = run_cli(["run", "--name", "base"], proj, check=False)
    assert proc.returncode == 1 and "'base' exists" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_change_fail_revert_keeps_every_round_in_the_report(base) -> None:
    from selfimprove.params import apply_overrides_to_file
    from selfimprove.quality import DataQualityError

    proj, _, params = base
    apply_overrides_to_file(proj / "params.yaml", ["validate.expectations.min_rows=100000"])  # the user's edit
    edited = (proj / "params.yaml").read_bytes()
    with pytest.raises(DataQualityError, match="failed validation"):
        run_loop(proj, name="bad", from_workspace=True, apply="auto")
    assert (proj / "params.yaml").read_bytes() == edited, "a failed run leaves the user's file as it was"
    assert statuses(proj, "bad") == {"bad/bad": "FAILED", "bad/round-0": "FINISHED", "bad/round-1": "FAILED"}
    rec = {r["name"]: r for r in json.loads(run_cli(["runs", "--json"], proj).stdout)}
    assert rec["bad"]["status"] == "failed" and not rec["bad"]["dvc_experiment"]
    git(["checkout", "params.yaml"], proj)  # the user reverts
    assert (proj / "params.yaml").read_bytes() == params
    result = run_loop(proj, name="fixed", from_workspace=True, apply="auto")
    assert result["applied"] is True
    for name in ("fixed", "base"):
        report = json.loads(run_cli(["report", "--name", name, "--json"], proj).stdout)
        assert [r["round"] for r in report["rounds"]] == [0, 1], name
        assert all("accuracy" in r["metrics"] for r in report["rounds"]), report
        assert all(r["status"] == "FINISHED" for r in report["rounds"]), report
    table = run_cli(["report", "--name", "fixed"], proj).stdout
    assert " - " not in table.split("\n", 4)[-1].split("Nd:")[0].replace("-  ", ""), table
    assert statuses(proj, "bad")["bad/round-0"] == "FINISHED", "a later run never changes an earlier one"
    assert "RUNNING" not in statuses(proj).values()


def test_a_failed_run_is_listed_then_removed(base) -> None:
    proj, _, _ = base
    listed = run_cli(["runs"], proj).stdout
    assert "bad" in listed and "failed" in listed, listed
    assert (proj / ".selfimprove" / "exps" / "bad").exists(), "a failed run keeps its workspace for --resume"
    out = " ".join(run_cli(["runs", "--remove", "bad"], proj).stdout.split())
    assert "removed bad" in out and "workspace" in out and "record" in out, out
    assert not (proj / ".selfimprove" / "exps" / "bad").exists()
    assert "bad" not in {r["name"] for r in json.loads(run_cli(["runs", "--json"], proj).stdout)}
    assert "bad" not in git(["worktree", "list"], proj)


def test_failing_stage_command_names_the_corrupt_file_and_changes_no_run(base) -> None:
    proj, _, _ = base
    before = statuses(proj)
    weights = sorted((proj / "runs" / "r1" / "model").rglob("model.safetensors"))
    assert weights
    data = weights[0].read_bytes()
    weights[0].write_bytes(data[: len(data) // 3])  # truncated, as by a full disk or a killed copy
    try:
        proc = run_cli(["evaluate", "--round", "r1"], proj, check=False)
    finally:
        weights[0].write_bytes(data)
    assert proc.returncode == 1
    err = " ".join(proc.stderr.split())
    assert "corrupt model" in err and "model.safetensors" in err and "manifest.json" in err, proc.stderr
    assert "Traceback" not in proc.stderr and "deserializing header" not in proc.stderr, proc.stderr
    assert statuses(proj) == before, "a stage command never changes a run's status"
    assert "up to date" in dvc_out(["status"], proj)


def _exp_file(proj: Path, name: str, path: str) -> str:
    """A DVC-tracked file as experiment ``name`` recorded it (read from the shared DVC cache)."""
    import dvc.api

    ref = git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/"], proj)
    rev = next(line.split()[0] for line in ref.splitlines() if line.endswith(f"/{name}"))
    return dvc.api.read(path, repo=str(proj), rev=rev)


@pytest.mark.slow  # two runs training at once, one killed and resumed (1.5 min): .ci/run runs it
def test_concurrent_runs_train_with_their_own_params_and_a_killed_one_resumes(base) -> None:
    """Two runs at once with different learning rates; one is killed -9 in the middle of finetune, then resumed."""
    import signal
    import threading

    from helpers import cli_env

    proj, _, params = base
    env = cli_env()
    logs: dict[str, list[str]] = {"lr-a": [], "lr-b": []}

    def start(name: str, *overrides: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "selfimprove.cli", "run", "--name", name]
        for o in overrides:
            args += ["-S", o]
        p = subprocess.Popen(args, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)

        def read() -> None:  # raw chunks: tqdm's progress bar ends its updates with \r, not \n
            while chunk := os.read(p.stdout.fileno(), 65536):
                logs[name].append(chunk.decode(errors="replace"))

        threading.Thread(target=read, daemon=True).start()
        return p

    a = start("lr-a", "finetune.trainer=sft", "finetune.train.lr=0.0005")  # real training: it is killed mid-way
    # lr-b trains long enough to be killed while training
    b = start("lr-b", "finetune.trainer=sft", "finetune.train.lr=0.003", "finetune.train.steps=1500")
    deadline = time.monotonic() + 300
    while "/1500 [" not in "".join(logs["lr-b"]):  # finetune@r1's progress bar: training has started
        assert b.poll() is None, "".join(logs["lr-b"])
        assert time.monotonic() < deadline, "".join(logs["lr-b"])
        time.sleep(0.2)
    time.sleep(1)
    assert b.poll() is None and "finetune@r1: done" not in "".join(logs["lr-b"]), "".join(logs["lr-b"])
    os.killpg(b.pid, signal.SIGKILL)
    b.wait()
    assert a.wait(timeout=600) == 0, "".join(logs["lr-a"])
    assert (proj / "params.yaml").read_bytes() == params, "runs never write the workspace's params.yaml"
    rec = {r["name"]: r for r in json.loads(run_cli(["runs", "--json"], proj).stdout)}
    assert rec["lr-b"]["status"] == "killed" and rec["lr-a"]["status"] == "finished"
    assert rec["lr-a"]["applied"] is False, "params differ from the workspace's: not applied"

    resumed = run_cli(["run", "--resume", "lr-b"], proj, timeout=600)
    assert "resuming" in resumed.stderr
    assert statuses(proj, "lr-b") == {"lr-b/lr-b": "FINISHED", "lr-b/round-0": "FINISHED", "lr-b/round-1": "FINISHED"}
    assert statuses(proj, "lr-a") == {"lr-a/lr-a": "FINISHED", "lr-a/round-0": "FINISHED", "lr-a/round-1": "FINISHED"}
    assert "RUNNING" not in statuses(proj).values()
    for name, lr in (("lr-a", 0.0005), ("lr-b", 0.003)):
        trained = json.loads(_exp_file(proj, name, "runs/r1/model/stage_report.json"))
        assert trained["details"]["members"][0]["learning_rate"] == lr, name
        assert mlflow_runs(proj, name)[f"{name}/round-1"].data.params["lr"] == str(lr)
    shown = dvc_out(["exp", "show", "--no-pager", "--csv", "--keep", "finetune.train.lr"], proj)
    assert "lr-a" in shown and "lr-b" in shown, shown


def test_a_plateau_stops_the_run_and_its_params_keep_only_the_rounds_that_ran(base) -> None:
    """loop.stop_on_plateau: a round that does not beat the best earlier round by more than the tolerance ends
    the run; the rounds after it leave the run's params.yaml (with the reason), so the experiment is what ran."""
    proj, _, params = base
    result = run_loop(proj, name="plateau", rounds=3, apply="never",
                      overrides=["loop.stop_on_plateau=1", "loop.plateau_tolerance=1.0"])
    assert list(result["ran"]) == ["r0", "r1"]
    assert result["stopped"].startswith("stopped after r1: plateau: round 1 did not improve accuracy beyond"), result
    run_params = git(["show", f"{result['rev']}:params.yaml"], proj)
    from selfimprove.config import Config
    from selfimprove.params import _plain, _yaml

    cfg = Config.model_validate(_plain(_yaml().load(run_params)))
    assert cfg.round_keys() == ["r1"] and sorted(cfg.eval_rounds) == ["r0", "r1"]
    assert "stopped after this round: plateau" in run_params
    assert (proj / "params.yaml").read_bytes() == params  # the workspace is untouched
    loop_run = mlflow_runs(proj, "plateau")["plateau/plateau"]
    assert loop_run.data.tags["selfimprove.stop_reason"].startswith("plateau: round 1")
    assert loop_run.info.status == "FINISHED"
    assert any(line.startswith("plateau,") for line in dvc_out(["exp", "show", "--no-pager", "--csv"], proj).splitlines())
    # brought into the workspace, the stopped run is exactly what dvc repro reproduces; then back to 'base'
    dvc_out(["exp", "apply", "plateau"], proj)
    assert "stopped after this round" in (proj / "params.yaml").read_text()
    assert "up to date" in dvc_out(["status"], proj)
    assert "Running stage" not in dvc_out(["repro"], proj)
    dvc_out(["exp", "apply", "base"], proj)
    assert (proj / "params.yaml").read_bytes() == params and "up to date" in dvc_out(["status"], proj)


def test_a_failed_health_gate_stops_the_run_and_rolls_back(base) -> None:
    """loop.health: a gate that round 1 fails (label precision can never reach 2) stops the run after round 1; the
    round's model is not promoted, the run names the metric, its values and the round it rolls back to, in
    MLflow, in Prefect and on disk, and round 2 leaves the run's params."""
    from mlflow import MlflowClient

    proj, _, params = base
    result = run_loop(proj, name="unhealthy", rounds=2, apply="never",
                      overrides=["loop.health=[{metric: acceptance_precision, min: 2.0}]"])
    assert list(result["ran"]) == ["r0", "r1"]
    stopped = result["stopped"]
    assert stopped.startswith("stopped after r1: health gate failed: acceptance_precision"), stopped
    assert "failed in round 1" in stopped and stopped.endswith("rolled back to r0")
    runs = mlflow_runs(proj, "unhealthy")
    r1 = runs["unhealthy/round-1"]
    assert r1.data.tags["selfimprove.health"] == "failed"
    assert r1.data.tags["selfimprove.promoted"] == "false"
    assert r1.data.tags["selfimprove.promotion"].startswith("health gate failed")
    loop_run = runs["unhealthy/unhealthy"]
    assert loop_run.data.tags["selfimprove.rolled_back_to"] == "r0" and loop_run.info.status == "FINISHED"
    from selfimprove.params import load_config

    model = load_config(proj / "params.yaml").tracking.registered_model
    best = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}").get_model_version_by_alias(model, "best")
    assert best.tags.get("selfimprove.experiment") != "unhealthy" or best.tags.get("selfimprove.round") != "1"
    record = json.loads(run_cli(["runs", "--json"], proj).stdout)
    rec = next(r for r in record if r["name"] == "unhealthy")
    assert rec["stopped"] == stopped and rec["health"]["failures"][0]["values"]["1"] < 2.0
    run_params = git(["show", f"{result['rev']}:params.yaml"], proj)
    assert "r2:" not in run_params and "stopped after this round: health gate failed" in run_params
    assert (proj / "params.yaml").read_bytes() == params


def _run_params(proj: Path, rev: str) -> tuple[str, Any]:
    from selfimprove.config import Config
    from selfimprove.params import _plain, _yaml

    text = git(["show", f"{rev}:params.yaml"], proj)
    return text, Config.model_validate(_plain(_yaml().load(text)))


def test_a_curriculum_run_writes_each_decided_round_into_its_params_and_reproduces(base) -> None:
    """loop.policy: curriculum: the params file's rounds are dropped, each next round is decided after the last
    evaluation (frontier = the easiest unsolved difficulty, one ahead, evaluated one further) and written, with its
    reason, into the run's params before it runs; MLflow and the run's result carry the decisions; the saved
    experiment reproduces with nothing to do."""
    proj, _, params = base
    result = run_loop(proj, name="curri", apply="never",
                      overrides=["loop.policy=curriculum", "loop.max_rounds=2",
                                 "loop.curriculum.problems_per_difficulty=8"])
    assert list(result["ran"]) == ["r0", "r1", "r2"]
    assert result["stopped"] == "stopped after r2: max_rounds: 2 rounds ran (loop.max_rounds)"
    text, cfg = _run_params(proj, result["rev"])
    r0 = json.loads(git(["show", f"{result['rev']}:runs/metrics/r0.json"], proj))
    unsolved = min(d for d in (1, 2, 3) if r0[f"accuracy/d{d}"] < 0.95)
    r1 = cfg.rounds["r1"]
    assert r1.prev == "r0" and r1.difficulties == [unsolved, unsolved + 1] and r1.problems == 16
    assert r1.eval_difficulties == sorted({1, 2, 3} | set(range(1, unsolved + 3)))
    assert r1.why.startswith("curriculum: start from r0 (accuracy") and f"frontier d{unsolved}" in r1.why
    assert cfg.rounds["r2"].prev in ("r0", "r1") and cfg.rounds["r2"].why
    assert "stopped after this round: max_rounds" in text and sorted(cfg.eval_rounds) == ["r0", "r1", "r2"]
    r1_metrics = json.loads(git(["show", f"{result['rev']}:runs/metrics/r1.json"], proj))
    assert {f"accuracy/d{d}" for d in r1.eval_difficulties} <= set(r1_metrics)
    assert "solved_up_to" in r1_metrics and "health/pool_gap" in r1_metrics
    runs = mlflow_runs(proj, "curri")
    assert runs["curri/round-1"].data.tags["selfimprove.decision"] == r1.why
    assert runs["curri/curri"].data.tags["selfimprove.decision.r2"] == cfg.rounds["r2"].why
    assert (proj / "params.yaml").read_bytes() == params
    dvc_out(["exp", "apply", "curri"], proj)
    assert "up to date" in dvc_out(["status"], proj)
    assert "Running stage" not in dvc_out(["repro"], proj)
    assert "solved_up_to" in (proj / "runs" / "summary" / "metrics.json").read_text()
    dvc_out(["exp", "apply", "base"], proj)
    (proj / "runs" / "metrics" / "r2.json").unlink()  # dvc exp apply leaves files the applied experiment lacks
    assert (proj / "params.yaml").read_bytes() == params and "up to date" in dvc_out(["status"], proj)


def test_a_curriculum_rolls_back_past_an_unhealthy_round_and_never_promotes_it(base) -> None:
    """loop.on_health_failure: rollback: round 1 fails its gate, so round 2 starts from round 0 (the best healthy
    round), not from round 1; neither failed round gets the 'best' alias; the reasons say so."""
    from mlflow import MlflowClient

    proj, _, _ = base
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    result = run_loop(proj, name="rollback", apply="never",
                      overrides=["loop.policy=curriculum", "loop.max_rounds=2", "loop.on_health_failure=rollback",
                                 "loop.curriculum.problems_per_difficulty=8",
                                 "loop.health=[{metric: acceptance_precision, min: 2.0}]"])
    assert list(result["ran"]) == ["r0", "r1", "r2"]
    _, cfg = _run_params(proj, result["rev"])
    assert cfg.rounds["r1"].prev == "r0"
    assert cfg.rounds["r2"].prev == "r0", "the unhealthy round 1 never starts another round"
    assert "rolled back past r1 (failed a health gate)" in cfg.rounds["r2"].why
    runs = mlflow_runs(proj, "rollback")
    for k in ("round-1", "round-2"):
        assert runs[f"rollback/{k}"].data.tags["selfimprove.health"] == "failed"
        assert runs[f"rollback/{k}"].data.tags["selfimprove.promoted"] == "false"
    failed = {runs[f"rollback/{k}"].data.tags["selfimprove.model_version"] for k in ("round-1", "round-2")}
    assert str(client.get_model_version_by_alias("test-tiny", "best").version) not in failed
    assert runs["rollback/rollback"].data.tags["selfimprove.rolled_back_to"] == "r0"


def test_a_curriculum_round_without_a_valid_dataset_ends_the_run_cleanly(base) -> None:
    """A frontier too hard to label (here: a gate no round can pass) is tried once more with retry_factor times
    the problems, then ends a curriculum run after the last round that finished, not with a failed run: the failed round leaves the params, dvc.lock and the workspace, the
    experiment is saved, and it reproduces."""
    proj, _, params = base
    result = run_loop(proj, name="nolabels", apply="never",
                      overrides=["loop.policy=curriculum", "loop.max_rounds=2", "validate.expectations.min_rows=1000",
                                 "loop.curriculum.problems_per_difficulty=4", "loop.curriculum.retry_factor=2"])
    assert list(result["ran"]) == ["r0"]
    assert result["stopped"].startswith("stopped after r0: r1 (curriculum: start from r0"), result["stopped"]
    assert "made no dataset that passes validation" in result["stopped"] and "expect_" in result["stopped"]
    assert "; retried with 16 problems: the first try made no dataset" in result["stopped"], "tried twice"
    text, cfg = _run_params(proj, result["rev"])
    assert cfg.round_keys() == [] and "r1" not in git(["show", f"{result['rev']}:dvc.lock"], proj)
    runs = mlflow_runs(proj, "nolabels")
    assert runs["nolabels/round-1"].info.status == "FAILED" and runs["nolabels/nolabels"].info.status == "FINISHED"
    dvc_out(["exp", "apply", "nolabels"], proj)
    (proj / "runs" / "metrics" / "r1.json").unlink()  # dvc exp apply leaves files the applied experiment lacks
    assert git(["ls-tree", "-r", "--name-only", result["rev"], "runs/metrics/"], proj).split() == ["runs/metrics/r0.json"]
    assert "up to date" in dvc_out(["status"], proj)
    dvc_out(["exp", "apply", "base"], proj)
    assert (proj / "params.yaml").read_bytes() == params and "up to date" in dvc_out(["status"], proj)


def test_dvc_reruns_exactly_the_stages_that_declare_a_changed_param(base) -> None:
    """Last in the module: it edits the workspace. evaluate.k is read by the evaluations only; validate declares
    just the evaluate keys that pick the held-out problems (decontamination), and bootstrap none."""
    import json as _json

    from selfimprove.params import apply_overrides_to_file

    proj, _, _ = base
    apply_overrides_to_file(proj / "params.yaml", ["evaluate.k=2"])
    status = _json.loads(dvc_out(["status", "--json"], proj))
    assert set(status) == {"evaluate@r0", "evaluate@r1"}, status
    out = dvc_out(["repro"], proj)
    assert "Running stage 'evaluate@r1'" in out and "Running stage 'evaluate@r0'" in out, out
    assert "Running stage 'finetune@r1'" not in out and "Running stage 'bootstrap'" not in out, out
    assert "up to date" in dvc_out(["status"], proj)
