"""Faults a user meets, each with the sentence and the state it must leave (the fault table of docs/runs.md).

Through the CLI, as a user types it, on the smallest model that runs every stage (``helpers.FAST_OVERRIDES``):
a failed Great Expectations gate, an output edited before ``--resume``, a shorter run applied after a longer one,
``--rounds`` with an override of a round it adds, a CLI killed with -9 (its temporary Prefect server and the
killed attempt's Prefect runs), and the Prefect or MLflow server dying in the middle of a run (``slow``: they
start servers of their own). Timeouts are verdicts: a run that does not end in time failed the test."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import cli_env, free_port, make_project, run_cli, start_mlflow_ui


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory, prefect_backend) -> Path:
    return make_project(tmp_path_factory.mktemp("faults") / "proj")


def dvc(args: list[str], cwd: Path) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def test_a_failed_gate_is_one_sentence_naming_its_report_in_the_project(proj: Path) -> None:
    out = run_cli(["run", "--name", "gate", "-S", "validate.expectations.min_rows=100000"], proj, check=False,
                  timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    for noise in ("Traceback", "Encountered exception", "Finished in state Failed", 'File "'):
        assert noise not in text, f"{noise!r} on the console:\n{text[-3000:]}"
    assert text.count("dataset failed validation") == 1, text[-3000:]
    report = re.search(r"Full report: (\S+)", text)
    assert report and report.group(1).startswith(".selfimprove/reports/gate/"), text[-2000:]
    assert json.loads((proj / report.group(1)).read_text())["report"], "the copy is the whole report"
    assert "To go on" in text and "rounds.r1.problems" in text, text[-2000:]
    assert "selfimprove runs --remove gate" in text, text[-2000:]


def test_resume_after_an_edited_output_says_which_file_to_restore(proj: Path) -> None:
    work = proj / ".selfimprove" / "exps" / "gate"
    samples = sorted((work / "runs" / "r1" / "sample").rglob("*.jsonl"))
    assert samples, "the failed run keeps its round-1 samples"
    samples[0].write_text(samples[0].read_text() + "\n")  # the user edits what the run recorded
    out = run_cli(["run", "--resume", "gate"], proj, check=False, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text and "Use `-f` to force" not in text, text[-3000:]
    assert "was changed after the run recorded it" in text and "dvc checkout --force runs/r1/sample" in text, \
        text[-2000:]
    assert samples[0].read_text().endswith("\n\n"), "the user's edit is never overwritten"
    run_cli(["runs", "--remove", "gate"], proj)


@pytest.mark.slow  # minutes of orchestration: .ci/run runs it
def test_rounds_with_an_override_of_a_round_it_adds_then_a_shorter_run_applied(proj: Path) -> None:
    run_cli(["run", "--name", "two", "--rounds", "2", "-S", "rounds.r2.problems=8", "--apply", "always"], proj,
            timeout=900)
    params = json.loads(json.dumps(__import__("yaml").safe_load((proj / "params.yaml").read_text())))
    assert params["rounds"]["r2"]["problems"] == 8 and (proj / "runs" / "metrics" / "r2.json").exists()
    subprocess.run(["git", "checkout", "params.yaml"], cwd=proj, check=True)
    run_cli(["run", "--name", "one", "--apply", "always"], proj, timeout=900)
    assert not (proj / "runs" / "r2").exists() and not (proj / "runs" / "metrics" / "r2.json").exists()
    assert "up to date" in dvc(["status"], proj)
    assert "up to date" in dvc(["repro", "--dry"], proj) or "didn't change" in dvc(["repro", "--dry"], proj)


def _ours(proj: Path) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "prefect.server.api.server:create_app" in (p.info["cmdline"] or []) and \
                    os.path.realpath(p.environ().get("PREFECT_HOME", "")) == os.path.realpath(proj / ".prefect"):
                pids.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _start(proj: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, list[str]]:
    p = subprocess.Popen([sys.executable, "-m", "selfimprove.cli", "run", *args], cwd=proj, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log: list[str] = []

    def read() -> None:
        while chunk := os.read(p.stdout.fileno(), 65536):
            log.append(chunk.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return p, log


def _wait_for(log: list[str], p: subprocess.Popen, text: str, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while text not in "".join(log):
        assert p.poll() is None, "".join(log)[-3000:]
        assert time.monotonic() < deadline, f"never saw {text!r}:\n" + "".join(log)[-3000:]
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_leaves_no_server_behind_and_a_resume_marks_the_killed_runs_crashed(proj: Path) -> None:
    env = {k: v for k, v in cli_env().items() if k != "PREFECT_API_URL"}  # the CLI's own temporary server
    p, log = _start(proj, env, "--name", "killed", "-S", "finetune.trainer=sft", "-S", "finetune.train.steps=3000")
    _wait_for(log, p, "/3000 [")
    assert _ours(proj), "the run's temporary Prefect server is up"
    os.kill(p.pid, signal.SIGKILL)  # the CLI alone, as the OOM killer or `kill -9 PID` does
    p.wait()
    time.sleep(1)
    assert _ours(proj), "Prefect's temporary server outlives a CLI killed with -9"
    listed = run_cli(["runs"], proj, env=env)
    assert "killed" in listed.stdout and not _ours(proj), "the next command stops the orphaned server"

    run_cli(["run", "--resume", "killed"], proj, env=env, timeout=900)
    assert not _ours(proj)
    code = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        print(json.dumps([[r.name, r.state.type.value] for r in await c.read_flow_runs()]))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PREFECT_HOME": str(proj / ".prefect")},
                         capture_output=True, text=True, timeout=300, check=True).stdout
    states = [tuple(x) for x in json.loads(out.strip().splitlines()[-1]) if x[0].startswith("killed")]
    assert ("killed", "CRASHED") in states and ("killed", "COMPLETED") in states, states
    assert not [s for s in states if s[1] in ("RUNNING", "PENDING")], states


@pytest.mark.slow
def test_the_prefect_server_dying_mid_run_is_named_with_its_url(proj: Path) -> None:
    port = free_port()
    senv = {**cli_env(), "PREFECT_HOME": str(proj / ".prefect-ui"), "PREFECT_PORT": str(port),
            "BIN": str(Path(sys.executable).parent)}
    senv.pop("PREFECT_API_URL", None)
    subprocess.run(["bash", "scripts/ui.sh", "start"], cwd=proj, env=senv, check=True, capture_output=True, timeout=300)
    api = f"http://127.0.0.1:{port}/api"
    try:
        # steps differ from the other tests': DVC's run cache would restore their finetune instead of running it
        p, log = _start(proj, {**senv, "PREFECT_API_URL": api}, "--name", "no-prefect",
                        "-S", "finetune.trainer=sft", "-S", "finetune.train.steps=3100")
        _wait_for(log, p, "/3100 [")
        server = int((proj / ".prefect" / "server.pid").read_text())
        os.killpg(server, signal.SIGKILL)
        rc = p.wait(timeout=600)  # the verdict: a CLI that hangs on a dead server fails here
        text = "".join(log)
        assert rc == 1, text[-3000:]
        tail = text[text.rfind("error:"):]
        assert "Prefect API" in tail and f"127.0.0.1:{port}" in tail and "Traceback" not in text, tail
    finally:
        subprocess.run(["bash", "scripts/ui.sh", "stop"], cwd=proj, env=senv, capture_output=True, timeout=120)


@pytest.mark.slow
def test_the_mlflow_server_dying_mid_run_fails_the_run_and_names_it(proj: Path) -> None:
    port = free_port()
    env = cli_env()
    server = start_mlflow_ui(proj, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        p, log = _start(proj, env, "--name", "no-mlflow", "-S", f"tracking.uri={url}",
                        "-S", "finetune.trainer=sft", "-S", "finetune.train.steps=3200")
        _wait_for(log, p, "/3200 [")
        os.killpg(server.pid, signal.SIGKILL)
        rc = p.wait(timeout=600)
        text = "".join(log)
        assert rc == 1, text[-3000:]
        tail = text[text.rfind("error:"):]
        assert "MLflow" in tail and url in tail and "Traceback" not in text, tail
        rec = {r["name"]: r for r in json.loads(run_cli(["runs", "--json"], proj).stdout)}
        assert rec["no-mlflow"]["status"] == "failed", rec["no-mlflow"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
