"""The first journey in a browser: `make ui`, then Deployments -> selfimprove -> Run -> Custom run, filled in as a
person does (run name, rounds, one override), submitted, watched until Completed, and the run's summary artifact
read on its page. A real `prefect server` on 127.0.0.1 (scripts/ui.sh), the served deployment, Debian's chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import shot
from helpers import free_port, make_project, prefect_server_env

pytestmark = pytest.mark.browser


@pytest.fixture
def served(tmp_path: Path):
    proj = make_project(tmp_path / "proj")
    port = free_port()
    env = prefect_server_env(proj, port)
    out = subprocess.run(["bash", "scripts/ui.sh", "start"], cwd=proj, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    base = f"http://127.0.0.1:{port}"
    try:
        yield proj, base
    finally:
        subprocess.run(["bash", "scripts/ui.sh", "stop"], cwd=proj, env=env, capture_output=True, timeout=120)


def _deployment_id(base: str) -> str:
    import time

    for _ in range(240):  # the served deployment registers a few seconds after the server is up
        deps = httpx.post(f"{base}/api/deployments/filter", json={}, timeout=10).json()
        if deps:
            return deps[0]["id"]
        time.sleep(0.5)
    raise AssertionError("the served deployment never appeared")


def test_custom_run_from_the_form_completes_and_shows_its_summary(served, page, tmp_path: Path) -> None:
    proj, base = served
    dep = _deployment_id(base)
    page.goto(f"{base}/deployments")
    page.get_by_role("link", name="selfimprove", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    page.get_by_text("overrides (Optional)").wait_for()
    page.wait_for_timeout(1000)  # the form fills in a generated run name once it has loaded: type after it
    page.locator("input").first.fill("form-run")
    page.get_by_role("button", name="Add item").click()
    page.locator("textarea").first.fill("evaluate.k=2")
    page.get_by_role("button", name="int", exact=True).first.click()
    page.locator("input[type=number]").first.fill("1")
    shot(page, tmp_path, "prefect-custom-run-form")
    page.get_by_role("button", name="Submit").click()

    # the form returns to the deployment's page, whose Runs tab lists the new run by the name typed
    page.get_by_role("link", name="form-run", exact=True).first.click(timeout=60_000)
    page.wait_for_url("**/runs/flow-run/**", timeout=60_000)
    run_url = page.url
    state = ""
    for _ in range(180):  # up to ~15 min on a busy machine: the verdict, not the time, is asserted
        page.wait_for_timeout(5000)
        page.goto(run_url)
        page.wait_for_timeout(1000)
        text = page.locator("body").inner_text()
        state = next((s for s in ("Completed", "Failed", "Crashed", "Cancelled") if s in text.split("\n")[:40]
                      or f"\n{s}\n" in text), "")
        if state:
            break
    shot(page, tmp_path, "prefect-custom-run-done")
    assert state == "Completed", (proj / ".prefect" / "serve.log").read_text()[-4000:]

    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("form-run-summary").first.click()
    page.wait_for_timeout(2000)
    text = page.locator("body").inner_text()
    shot(page, tmp_path, "prefect-summary-artifact")
    assert "form-run" in text and "accuracy" in text.lower(), text[:2000]

    # what the form asked for is what the run got: its own experiment with the override and one round
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=proj, capture_output=True,
                           text=True, check=True).stdout
    exps = {}
    for baseline in json.loads(shown):
        for e in baseline.get("experiments") or []:
            for r in e.get("revs") or []:
                exps[r.get("name")] = (r.get("data") or {})["params"]["params.yaml"]["data"]
    assert exps["form-run"]["evaluate"]["k"] == 2 and list(exps["form-run"]["rounds"]) == ["r1"], exps.get("form-run")
