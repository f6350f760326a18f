"""A real `prefect server` on 127.0.0.1 plus the served deployment (what `make ui` starts): a loop started
through the API with parameters, as the UI's "Custom run" does, completes and publishes its round table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers import make_project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", 120)
        yield f"http://127.0.0.1:{port}/api", env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_loop_started_from_the_deployment_with_parameters(server, tmp_path: Path) -> None:
    api, env = server
    proj = make_project(tmp_path / "proj")
    env = {**env, "PREFECT_API_URL": api, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    root = Path(__file__).resolve().parents[2]
    serve = subprocess.Popen([sys.executable, str(root / "flows" / "serve.py"), "--project", str(proj)], env=env,
                             stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = f"""
import asyncio, sys
from prefect.deployments import run_deployment
from prefect.client.orchestration import get_client
async def main():
    for _ in range(120):
        async with get_client() as c:
            try:
                await c.read_deployment_by_name("selfimprove-loop/selfimprove"); break
            except Exception:
                await asyncio.sleep(1)
    run = await run_deployment("selfimprove-loop/selfimprove", parameters={{"overrides": ["evaluate.k=1"]}}, timeout=600)
    async with get_client() as c:
        arts = await c.read_artifacts()
    print(run.state.type.value, sorted(a.key for a in arts if a.key))
asyncio.run(main())
"""
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        state, keys = out.stdout.strip().split(" ", 1)
        assert state == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert "default-round-1" in keys and "default-summary" in keys, keys
        assert "k: 1" in (proj / "params.yaml").read_text().split("evaluate:")[1][:400]  # overrides were applied
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=proj, capture_output=True, text=True, env=env)
    assert "up to date" in status.stdout, status.stdout + status.stderr
