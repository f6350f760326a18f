"""MLflow as a user of this product meets it: `make mlflow-ui` (scripts/mlflow_ui.sh: MLflow's server with
``--app-name selfimprove``) lands on the experiments and training runs with the model registry in reach, and the
link `selfimprove run` prints opens the loop run's metric charts across rounds."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import shot
from helpers import free_port, make_project, run_cli, start_mlflow_ui

pytestmark = pytest.mark.browser


@pytest.fixture
def mlflow_ui(tmp_path: Path, prefect_backend):
    proj = make_project(tmp_path / "proj")
    done = run_cli(["run", "--name", "looked-at"], proj, timeout=900)
    link = re.search(r"make mlflow-ui\s+->\s+(\S+)", done.stdout)
    assert link, done.stdout[-3000:]
    port = free_port()
    server = start_mlflow_ui(proj, port, dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, link.group(1).replace("http://127.0.0.1:5000", base)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def test_mlflow_ui_lands_on_training_runs_and_the_cli_link_opens_the_rounds(mlflow_ui, page, tmp_path: Path) -> None:
    base, link = mlflow_ui
    page.goto(base + "/")
    page.get_by_role("link", name="selfimprove").first.wait_for()
    shot(page, tmp_path, "mlflow-landing")
    assert page.url.endswith("#/experiments"), page.url
    assert page.get_by_text("Model registry").first.is_visible()
    assert not page.get_by_text("AI Gateway").first.is_visible()

    page.get_by_role("link", name="selfimprove").first.click()  # the experiment: its training runs, not GenAI
    page.get_by_text("looked-at").first.wait_for()
    shot(page, tmp_path, "mlflow-experiment")
    assert "Traces" not in page.locator("h1, h2").all_inner_texts()
    assert "workflowType=genai" not in page.url

    assert "/model-metrics" in link, link
    page.goto(link)
    page.get_by_text("accuracy", exact=False).first.wait_for()
    page.wait_for_timeout(2000)
    shot(page, tmp_path, "mlflow-run-metrics")
    text = page.locator("body").inner_text()
    assert "looked-at" in text and "Model metrics" in text and "Step" in text, text[:2000]

    page.get_by_text("Model registry").first.click()
    page.get_by_text("test-tiny").first.wait_for()
    shot(page, tmp_path, "mlflow-registry")
