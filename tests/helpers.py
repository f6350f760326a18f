"""Helpers shared by the tests (importable as ``helpers``; conftest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "benchmarks"

# A loop small enough for a test (~30 s on one core) that still exercises every stage for real.
MINI_OVERRIDES = [
    "execution.runner=sequential",  # Ray starts in the tests that are about it (tests/integration/test_ray.py)
    "model.ensemble=1",
    "bootstrap.difficulties=[1, 2]",
    "bootstrap.examples_per_difficulty=2000",
    "bootstrap.train.steps=150",
    "bootstrap.train.warmup_steps=20",
    "bootstrap.early_stop.eval_every=75",
    "bootstrap.early_stop.problems_per_difficulty=20",
    "sample.problems_per_round=60",
    "sample.k=2",
    "sample.batch_size=256",
    "verify.verifier=majority_vote",
    "validate.filters.1.min=0.0",
    "sample.views=[]",  # the view_agreement filter then passes everything (views: test_stages)
    "validate.expectations.min_rows=1",
    "validate.expectations.min_parse_rate=0.0",
    "validate.expectations.acceptance_rate=[0.0, 1.0]",
    "finetune.train.steps=5",
    "finetune.train.warmup_steps=1",
    "evaluate.difficulties=[1, 2, 3]",
    "evaluate.problems_per_difficulty=12",
    "evaluate.k=2",
    "rounds={r1: {prev: r0, difficulties: [3]}}",
    "tracking.registered_model=test-tiny",
]

# The control plane (Prefect, DVC experiments, MLflow states) under test, not learning: the same stages on a
# model so small that a whole run is mostly orchestration (~30 s of stage work on one core).
FAST_OVERRIDES = MINI_OVERRIDES + [
    "model.tiny.layers=1",
    "model.tiny.hidden=32",
    "model.tiny.heads=2",
    "model.tiny.intermediate=64",
    "bootstrap.examples_per_difficulty=200",
    "bootstrap.train.steps=20",
    "bootstrap.train.warmup_steps=2",
    "bootstrap.early_stop=null",
    "sample.problems_per_round=16",
    "sample.k=1",
    "validate.filters=[{function: dedup}]",  # an untrained model's answers: keep them all, the gate still runs
    "finetune.train.steps=2",
    "evaluate.problems_per_difficulty=4",
    "evaluate.k=1",
]

# Orchestration on the registered fakes (lm-eval's dummy-LM way): the tiny model is built but never trained, the
# scripted sampler answers from the gold with a known skill, the noop trainer copies the model and raises that
# skill. Every stage, DVC, MLflow, GX and Prefect still run for real; only gradient steps and generation are
# skipped. Tests about learning keep the real tiny model (MINI_OVERRIDES, FAST_OVERRIDES).
FAKE_OVERRIDES = FAST_OVERRIDES + [
    "bootstrap.trainer=noop",
    "sample.sampler=scripted",
    "finetune.trainer=noop",
]



def make_project(dest: Path, overrides: list[str] | None = None) -> Path:
    """A selfimprove project in ``dest``: params.yaml, dvc.yaml, flows/, tasks/, code deps; git + DVC init."""
    from selfimprove.params import apply_overrides_to_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for d in ("flows", "tasks", "scripts"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "infra").mkdir(exist_ok=True)
    shutil.copy(ROOT / "infra" / "prefect.yaml", dest / "infra" / "prefect.yaml")
    # dvc.yaml lists code dependencies under src/selfimprove: a copy keeps DVC's hashes meaningful here.
    shutil.copytree(ROOT / "src" / "selfimprove", dest / "src" / "selfimprove", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".gitignore").write_text("/.selfimprove/\n/mlruns.db\n/mlartifacts/\n/.prefect/\n__pycache__/\n.parts/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dest, check=True, env=env)
    apply_overrides_to_file(dest / "params.yaml", (overrides if overrides is not None else FAKE_OVERRIDES))
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=dest, check=True, env=env)
    return dest



def free_port() -> int:
    """A free TCP port on 127.0.0.1 (servers the tests start: Prefect, MLflow)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``selfimprove`` subprocess: this venv on PATH, and the Prefect API the tests share
    (the test harness's, when one is running) so a run does not start a temporary server of its own."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
    except Exception:  # noqa: BLE001
        url = None
    if url:
        env["PREFECT_API_URL"] = url
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "selfimprove.cli", *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"selfimprove {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cpu_seconds(fn, arg) -> float:
    """Best of 3 CPU seconds of ``fn(arg)``, collector off: CPU time of this process, so a busy neighbour on a
    shared machine barely moves it, and the best of 3 drops what still does (a cache flush, an interrupt). Tests
    compare two of these (a ratio between input sizes), never one against a wall-clock bound."""
    import gc
    import time

    best = float("inf")
    for _ in range(3):
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time()
            fn(arg)
            best = min(best, time.process_time() - t0)
        finally:
            gc.enable()
    return best


def start_mlflow_ui(proj: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """``scripts/mlflow_ui.sh`` (the server ``make mlflow-ui`` runs) on ``port``, waited for until /health answers."""
    import time

    import httpx

    server = subprocess.Popen(["bash", "scripts/mlflow_ui.sh", str(port)], cwd=proj,
                              env={**env, "BIN": str(Path(sys.executable).parent)}, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        assert server.poll() is None, "mlflow server exited"
        time.sleep(0.5)
    raise AssertionError(f"the MLflow server on port {port} did not answer /health in 2 minutes")


def prefect_server_env(proj: Path, port: int) -> dict[str, str]:
    """The environment ``scripts/ui.sh`` (``make ui``) gets in a test: the project's own Prefect home and port, the
    venv's binaries, no inherited API URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {"PREFECT_HOME": str(proj / ".prefect"), "PREFECT_PORT": str(port),
                  "BIN": str(Path(sys.executable).parent), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
