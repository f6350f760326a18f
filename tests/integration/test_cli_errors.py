"""Failures a user meets before a run starts: one clean sentence that says what to do, no traceback, nothing
written (no run workspace, no run record, the workspace params.yaml untouched), and no Prefect start-up first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_project, run_cli


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("errors") / "proj")


def env_without_prefect(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"} | extra


def assert_nothing_written(proj: Path, params: bytes) -> None:
    assert (proj / "params.yaml").read_bytes() == params
    assert not (proj / ".selfimprove" / "exps").exists() or not any((proj / ".selfimprove" / "exps").iterdir())
    assert not (proj / ".selfimprove" / "runs").exists() or not any((proj / ".selfimprove" / "runs").iterdir())
    assert not (proj / "mlruns.db").exists()


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Beginning flow run" not in proc.stderr, proc.stderr
    assert "temporary server" not in proc.stderr, "config is checked before any Prefect server starts"
    return " ".join(proc.stderr.split())


def test_yaml_error_names_line_and_column(proj: Path) -> None:
    params = (proj / "params.yaml").read_bytes()
    try:
        (proj / "params.yaml").write_text(params.decode().replace("sample:\n", "sample:\n  k: [1,\n", 1))
        err = one_sentence(run_cli(["run", "--name", "broken"], proj, check=False, env=env_without_prefect()))
        assert f"{proj / 'params.yaml'}:" in err and "YAML syntax error" in err, err  # file:line:column
    finally:
        (proj / "params.yaml").write_bytes(params)
    assert_nothing_written(proj, params)


def test_misspelt_override_names_the_key_and_suggests(proj: Path) -> None:
    params = (proj / "params.yaml").read_bytes()
    err = one_sentence(run_cli(["run", "-S", "finetune.train.lrr=0.1"], proj, check=False, env=env_without_prefect()))
    assert "lrr" in err and "did you mean 'lr'" in err, err
    assert_nothing_written(proj, params)


def test_unreachable_mlflow_fails_in_one_sentence_and_leaves_no_value_behind(proj: Path) -> None:
    params = (proj / "params.yaml").read_bytes()
    err = one_sentence(run_cli(["run", "-S", "tracking.uri=http://127.0.0.1:9"], proj, check=False,
                               env=env_without_prefect()))
    assert "http://127.0.0.1:9 is unreachable" in err and "tracking.uri" in err, err
    assert_nothing_written(proj, params)
    run_cli(["check"], proj, env=env_without_prefect())  # the bad value belonged to that run only


def test_unreachable_prefect_api_fails_in_one_sentence(proj: Path) -> None:
    params = (proj / "params.yaml").read_bytes()
    proc = run_cli(["run", "--name", "noapi"], proj, check=False,
                   env=env_without_prefect(PREFECT_API_URL="http://127.0.0.1:9/api"))
    err = one_sentence(proc)
    assert "Prefect API at http://127.0.0.1:9/api is unreachable" in err and "make ui" in err, err
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
    assert_nothing_written(proj, params)


def test_resume_of_an_unknown_run_says_how_to_list_runs(proj: Path) -> None:
    err = one_sentence(run_cli(["run", "--resume", "nope"], proj, check=False, env=env_without_prefect()))
    assert "no run named 'nope'" in err and "selfimprove runs" in err, err
