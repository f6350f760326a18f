"""What `make ui` starts (scripts/ui.sh: a real `prefect server` on 127.0.0.1 and the served deployment), used as a
person uses the UI: a custom run from the form with a run name and overrides, a Quick run, a schedule added in the
UI that survives serving again, and `make ui-stop` stopping everything it started.

One test, because the server and the deployment are the expensive part (~20 s to start on 2 cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers import free_port, make_project, prefect_server_env

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def client_code(api: str, body: str) -> str:
    return f"""
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
NAME = "selfimprove-loop/selfimprove"
async def deployment(c):
    for _ in range(240):
        try:
            return await c.read_deployment_by_name(NAME)
        except Exception:
            await asyncio.sleep(0.5)
    raise SystemExit("deployment never appeared")
async def main():
    async with get_client() as c:
{body}
asyncio.run(main())
"""


def py(code: str, env: dict[str, str], timeout: float = 900) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


@pytest.fixture
def project(tmp_path: Path):
    proj = make_project(tmp_path / "proj")
    port = free_port()
    env = prefect_server_env(proj, port)
    yield proj, env, f"http://127.0.0.1:{port}/api"
    subprocess.run(["bash", "scripts/ui.sh", "stop"], cwd=proj, env=env, capture_output=True, timeout=120)


def ui(proj: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(["bash", "scripts/ui.sh", *args], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow  # minutes of orchestration: .ci/run runs it
def test_ui_form_quick_run_schedules_and_stop(project) -> None:
    proj, env, api = project
    params = (proj / "params.yaml").read_bytes()
    first = ui(proj, env, "start")
    assert "starting Prefect server" in first and "serving deployment" in first, first
    server_pid, serve_pid = (int((proj / ".prefect" / f).read_text()) for f in ("server.pid", "serve.pid"))
    again = ui(proj, env, "start")  # idempotent: reuses both
    assert "already running" in again and "already served" in again, again
    assert int((proj / ".prefect" / "server.pid").read_text()) == server_pid
    assert int((proj / ".prefect" / "serve.pid").read_text()) == serve_pid
    cenv = {**env, "PREFECT_API_URL": api}

    # a schedule added in the UI survives serving the deployment again (what the next `make ui` does)
    py(client_code(api, """
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import CronSchedule
        d = await deployment(c)
        await c.create_deployment_schedules(d.id, [DeploymentScheduleCreate(
            schedule=CronSchedule(cron="30 4 * * 1", timezone="UTC"), active=True)])
"""), cenv)
    os.killpg(serve_pid, signal.SIGTERM)
    for _ in range(60):
        if not alive(serve_pid):
            break
        time.sleep(0.5)
    (proj / ".prefect" / "serve.pid").unlink()
    ui(proj, env, "start")
    out = py(client_code(api, """
        for _ in range(60):
            d = await deployment(c)
            crons = [s.schedule.cron for s in d.schedules]
            if "0 3 * * *" in crons:
                break
            await asyncio.sleep(0.5)
        props = d.parameter_openapi_schema["properties"]
        print(json.dumps({"crons": sorted(crons), "described": sorted(k for k, v in props.items() if v.get("description"))}))
"""), cenv)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["crons"] == ["0 3 * * *", "30 4 * * 1"], got  # declared in infra/prefect.yaml once, plus the user's
    assert {"overrides", "rounds", "params", "name", "resume", "apply"} <= set(got["described"]), got

    # a custom run from the form (run name + overrides), then a Quick run with an uncommitted edit in the workspace
    out = py(client_code(api, """
        run = await run_deployment(NAME, parameters={"overrides": ["evaluate.k=2"]}, flow_run_name="form-run", timeout=900)
        print(run.state.type.value)
"""), cenv)
    assert out.strip().splitlines()[-1] == "COMPLETED", (proj / ".prefect" / "serve.log").read_text()[-4000:]
    from selfimprove.params import apply_overrides_to_file

    apply_overrides_to_file(proj / "params.yaml", ["evaluate.problems_per_difficulty=5"])  # not committed
    out = py(client_code(api, """
        run = await run_deployment(NAME, timeout=900)
        subs = await c.read_flow_runs()
        arts = await c.read_artifacts()
        print(json.dumps({"state": run.state.type.value, "name": run.name, "runs": sorted(r.name for r in subs),
                          "artifacts": sorted(a.key for a in arts if a.key)}))
"""), cenv)
    quick = json.loads(out.strip().splitlines()[-1])
    assert quick["state"] == "COMPLETED", (proj / ".prefect" / "serve.log").read_text()[-4000:]
    q = quick["name"]
    assert {"form-run", "form-run/round-r0", "form-run/round-r1", q, f"{q}/round-r1"} <= set(quick["runs"]), quick
    assert {"form-run-summary", f"{q}-summary"} <= set(quick["artifacts"]), quick

    # the workspace file is the user's (with their uncommitted edit); each run's params are its own
    subprocess.run(["git", "checkout", "params.yaml"], cwd=proj, check=True)
    assert (proj / "params.yaml").read_bytes() == params
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=proj, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    exps = {}
    for baseline in shown:
        for e in baseline.get("experiments") or []:
            for r in e.get("revs") or []:
                data = r.get("data") or {}
                exps[r.get("name") or data.get("name")] = data["params"]["params.yaml"]["data"]
    assert exps["form-run"]["evaluate"]["k"] == 2, exps["form-run"]["evaluate"]
    assert exps[q]["evaluate"] == exps["form-run"]["evaluate"] | {"k": 1}, "a Quick run uses the committed params"
    assert exps[q]["evaluate"]["problems_per_difficulty"] == 4, "uncommitted edits never reach a deployment run"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfimprove")
    loops = {r.info.run_name: r.info.status for r in client.search_runs(
        [exp.experiment_id], filter_string="tags.`selfimprove.kind` = 'loop'")}
    assert loops == {"form-run": "FINISHED", q: "FINISHED"}, loops
    assert not [r for r in client.search_runs([exp.experiment_id]) if r.info.status != "FINISHED"]

    # make ui-stop stops everything make ui started
    serve_pid = int((proj / ".prefect" / "serve.pid").read_text())
    stopped = ui(proj, env, "stop")
    assert "stopped server" in stopped and "stopped serve" in stopped, stopped
    time.sleep(1)
    assert not alive(server_pid) and not alive(serve_pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)


# The committed default params, shrunk only in sizes (model, problems, steps), with the default's three models and
# `execution.runner: auto`, so a local Ray runs the units as it does for a user's Quick run of `make ui`.
DEFAULT_SHRUNK = [
    "model.tiny.layers=1",
    "model.tiny.hidden=64",
    "model.tiny.intermediate=128",
    "bootstrap.difficulties=[1, 2]",
    "bootstrap.examples_per_difficulty=1000",
    "bootstrap.train.steps=120",
    "bootstrap.train.warmup_steps=20",
    "bootstrap.early_stop.eval_every=60",
    "bootstrap.early_stop.problems_per_difficulty=20",
    "sample.problems_per_round=60",
    "validate.expectations.min_rows=1",
    "finetune.train.steps=5",
    "finetune.train.warmup_steps=1",
    "evaluate.difficulties=[1, 2, 3]",
    "evaluate.problems_per_difficulty=12",
    "evaluate.k=2",
    "rounds={r1: {prev: r0, difficulties: [2]}}",
    "tracking.registered_model=test-tiny",
]


@pytest.mark.slow
def test_quick_run_and_scheduled_run_on_ray_write_what_the_cli_writes(tmp_path: Path) -> None:
    """The first journey on the default params: a Quick run of the served deployment (3 models, Ray) finishes with
    the dvc.lock that `selfimprove run` writes for the same params; a schedule that fires runs to the end and names
    its run after the deployment and the time."""
    from helpers import cli_env, run_cli

    cli = make_project(tmp_path / "cli", DEFAULT_SHRUNK)
    proj = make_project(tmp_path / "ui", DEFAULT_SHRUNK)
    params = yaml_load(proj / "params.yaml")
    assert params["model"]["ensemble"] == 3 and params["execution"]["runner"] == "auto", params["execution"]
    env = {k: v for k, v in cli_env().items() if k != "PREFECT_API_URL"}
    run_cli(["run", "--name", "from-cli"], cli, env=env, timeout=900)

    port = free_port()
    env |= {"PREFECT_HOME": str(proj / ".prefect"), "PREFECT_PORT": str(port), "BIN": str(Path(sys.executable).parent),
            # the server's scheduler looks at a new schedule within seconds
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2"}
    api = f"http://127.0.0.1:{port}/api"
    try:
        ui(proj, env, "start")
        cenv = {**env, "PREFECT_API_URL": api}
        out = py(client_code(api, """
        d = await deployment(c)
        run = await run_deployment(NAME, timeout=900)   # Deployments -> selfimprove -> Run -> Quick run
        print(json.dumps({"state": run.state.type.value, "name": run.name}))
"""), cenv)
        quick = json.loads(out.strip().splitlines()[-1])
        log = (proj / ".prefect" / "serve.log").read_text()
        assert quick["state"] == "COMPLETED", log[-6000:]
        assert "Ray: local" in log, "the Quick run did not fan out on Ray"
        ref = experiments_ref(proj, quick["name"])
        ui_lock = subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=proj, capture_output=True, text=True,
                                 check=True).stdout
        assert ui_lock == (cli / "dvc.lock").read_text(), "a Quick run on Ray wrote other bytes than selfimprove run"

        out = py(client_code(api, """
        import datetime
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import IntervalSchedule
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        d = await deployment(c)
        start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
        await c.create_deployment_schedules(d.id, [DeploymentScheduleCreate(
            schedule=IntervalSchedule(interval=datetime.timedelta(days=1), anchor_date=start), active=True)])
        for _ in range(900):
            runs = [r for r in await c.read_flow_runs() if r.auto_scheduled and r.state and r.state.is_final()]
            if runs:
                break
            await asyncio.sleep(1)
        print(json.dumps({"state": runs[0].state.type.value, "name": runs[0].name,
                          "start": runs[0].expected_start_time.strftime("%Y%m%d-%H%M")}))
"""), cenv)
        sched = json.loads(out.strip().splitlines()[-1])
        log = (proj / ".prefect" / "serve.log").read_text()
        assert sched["state"] == "COMPLETED", log[-6000:]
        assert sched["name"] == f"selfimprove-{sched['start']}", sched
        assert experiments_ref(proj, sched["name"]), "the scheduled run's experiment is named like its flow run"
    finally:
        subprocess.run(["bash", "scripts/ui.sh", "stop"], cwd=proj, env=env, capture_output=True, timeout=120)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def experiments_ref(proj: Path, name: str) -> str:
    from selfimprove.experiments import experiment_refs

    refs = experiment_refs(proj, name)
    assert refs, f"no DVC experiment named {name!r}"
    return refs[name]
