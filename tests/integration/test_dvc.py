"""DVC in a temporary git repo: `dvc repro` runs the miniature loop, then everything is up to date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import run_cli


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_dag_chains_rounds(mini_project: Path) -> None:
    run_cli(["rounds", "2"], mini_project)
    dot = dvc(["dag", "--dot"], mini_project).stdout
    for edge in ['"bootstrap" -> "sample@r1"', '"finetune@r1" -> "sample@r2"', '"validate@r1" -> "validate@r2"',
                 '"finetune@r1" -> "finetune@r2"', '"sample@r2" -> "verify@r2"']:
        assert edge in dot, dot


def test_repro_then_status_clean_then_nothing_to_do(mini_project: Path) -> None:
    out = dvc(["repro"], mini_project).stdout
    for stage in ["bootstrap", "evaluate@r0", "sample@r1", "verify@r1", "validate@r1", "finetune@r1", "evaluate@r1",
                  "summary"]:
        assert f"Running stage '{stage}'" in out, out
    assert "up to date" in dvc(["status"], mini_project).stdout
    again = dvc(["repro"], mini_project).stdout
    assert "Running stage" not in again, again
    metrics = dvc(["metrics", "show", "--json"], mini_project).stdout
    assert "accuracy_d3" in metrics and "round_accuracy" in metrics
    # a changed evaluate param invalidates the evaluations (and validate, which decontaminates against the
    # evaluation problems), never bootstrap: round 0 is evaluated by evaluate@r0
    run_cli(["check", "-S", "evaluate.k=3"], mini_project)
    from selfimprove.config import apply_overrides_to_file

    apply_overrides_to_file(mini_project / "params.yaml", ["evaluate.k=3"])
    status = json.loads(dvc(["status", "--json"], mini_project).stdout)
    assert {"evaluate@r0", "evaluate@r1", "validate@r1"} <= set(status), status
    assert not {"bootstrap", "sample@r1", "verify@r1"} & set(status), status
    # ...and dvc repro reruns validate, whose output is byte-identical, so finetune is not rerun
    out = dvc(["repro"], mini_project).stdout
    assert "Running stage 'validate@r1'" in out and "Running stage 'finetune@r1'" not in out, out
