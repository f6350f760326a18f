"""DVC in temporary git repos: the pipeline graph, and `dvc repro` from scratch against a run of the Prefect flow.

The cheap checks of DVC's record after a Prefect run (status clean, repro a no-op, a changed param reruns exactly
the stages that declare it) live in test_prefect.py, on its project. Here, the slow one: the invariant that a run
with no overrides on a clean workspace leaves exactly what `dvc repro` leaves (every stage command imports torch
and transformers, ~20 s each on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import make_project, run_cli


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_dag_chains_rounds(mini_project: Path) -> None:
    run_cli(["rounds", "2"], mini_project)
    dot = dvc(["dag", "--dot"], mini_project).stdout
    assert '"finetune@r1" -> "sample@r2"' in dot or "finetune@r1" in dot and "sample@r2" in dot
    assert "bootstrap" in dot and "evaluate@r0" in dot and "summary" in dot
    assert dvc(["status"], mini_project).returncode == 0


def outs(lock: Path) -> dict[str, dict[str, str]]:
    data = yaml.safe_load(lock.read_text())
    return {name: {o["path"]: o["md5"] for o in stage.get("outs", [])} for name, stage in data["stages"].items()}


@pytest.mark.slow
def test_repro_from_scratch_equals_a_prefect_run(tmp_path: Path, prefect_backend) -> None:
    from flows.loop import loop_flow

    a = make_project(tmp_path / "repro")
    out = dvc(["repro"], a).stdout
    for stage in ["bootstrap", "evaluate@r0", "sample@r1", "verify@r1", "validate@r1", "finetune@r1", "evaluate@r1",
                  "summary"]:
        assert f"Running stage '{stage}'" in out, out
    assert "up to date" in dvc(["status"], a).stdout
    assert "Running stage" not in dvc(["repro"], a).stdout

    b = make_project(tmp_path / "flow")
    cwd = os.getcwd()
    try:
        result = loop_flow.with_options(flow_run_name="same")(project=str(b), name="same", apply="auto")
    finally:
        os.chdir(cwd)
    assert result["applied"]
    assert outs(a / "dvc.lock") == outs(b / "dvc.lock"), "the Prefect run wrote other bytes than dvc repro"
    assert "Running stage" not in dvc(["repro"], b).stdout
