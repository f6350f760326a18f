"""Where a stage's units run: one after another in the flow's process, or side by side on Ray (prefect-ray).

``execution.runner`` (params.yaml) picks it: ``sequential``, ``ray``, or ``auto`` (Ray when this machine has more
than one core). With Ray, the loop flow starts one Ray for the whole run (or connects to ``execution.address``),
every round flow runs with prefect-ray's ``RayTaskRunner`` on it, and each stage's units (ensemble members, shards of
problems: ``selfimprove.stages.SPLITS``) are submitted as Prefect tasks with the stage's ``execution.resources``
(prefect-ray's ``remote_options``). A unit on a Ray worker reports its task run to the same Prefect API as the flow
(the run's ``PREFECT_API_URL``, the temporary server's when none is configured) and hands its MLflow calls back to
the flow, which logs them in unit order. The merge runs in the flow's process. Units write only their part folders
under the run's workspace; on a cluster, that workspace must be on storage every node mounts (infra/README.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger

import tasks
from selfimprove.config import Config
from selfimprove.paths import RoundPaths
from selfimprove.stages import SPLITS
from selfimprove.stages import parts as stage_parts
from selfimprove.tracker import Tracker, replay

# what a Ray worker needs to behave like the flow's process: offline libraries, no telemetry, one torch thread
# per unit unless the params say otherwise (setup_runtime), the project's flows/ and tasks/ importable
_WORKER_ENV = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS",
               "TOKENIZERS_PARALLELISM", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "PYTHONUNBUFFERED",
               "GX_ANALYTICS_ENABLED", "PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_HOME",
               # credentials a unit on a cluster node needs: the Prefect API's, a gated hub model's
               "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "HF_TOKEN")


def _api_url() -> str:
    """The Prefect API this flow reports to (a configured server, or the temporary one Prefect started)."""
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


def worker_env() -> dict[str, str]:
    """A Ray worker's environment, set before it imports anything: this process's settings, which include the
    stages' offline defaults (``runtime_env``, set by the loop before Ray starts), so a unit writes what the flow's
    process would."""
    env = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
    env["PREFECT_API_URL"] = _api_url()
    env.setdefault("RAY_AUTH_MODE", "disabled")
    # progress bars from several workers would interleave on the run's console; the units' Prefect task runs and
    # log lines say where they are
    env.setdefault("TQDM_DISABLE", "1")
    return env


@contextlib.contextmanager
def ray_runner(config: Config) -> Iterator[Any]:
    """A ``RayTaskRunner`` on a Ray that lasts the whole run (None when ``execution`` says sequential).

    A local Ray is started here and stopped at the end; an existing cluster (``execution.address``) is joined and
    left running. Ray that this process already joined (a notebook) is used as it is."""
    ex = config.execution
    fans_out = config.model.ensemble > 1 or config.sample.shards > 1
    if not ex.use_ray() or (ex.runner == "auto" and not fans_out):  # auto: no Ray for one model and one shard
        yield None
        return
    import ray
    from prefect_ray import RayTaskRunner

    logger = get_run_logger()
    owned = False
    if not ray.is_initialized():
        env = worker_env()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "namespace": "selfimprove",
                                  "log_to_driver": True}
        if ex.address:
            try:
                ray.init(address=ex.address, **kwargs)
            except (ConnectionError, TimeoutError, RuntimeError) as e:
                raise ConnectionError(f"execution.address = {ex.address!r}: cannot join that Ray cluster ({e}). Start "
                                      "it (infra/README.md), fix the address, or leave execution.address empty for a "
                                      "local Ray") from e
        else:
            cpus = local_cpus(config)
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 2**20, **kwargs)
        owned = True
        if not ex.address:
            _prewarm(ray)
        res = ray.cluster_resources()
        logger.info("Ray: %s, %g CPUs, %g GPUs; a stage's models and shards run side by side (execution.runner: %s)",
                    ex.address or "local, started by this run", res.get("CPU", 0), res.get("GPU", 0), ex.runner)
    try:
        yield RayTaskRunner(address=ex.address)
    finally:
        if owned:
            ray.shutdown()


def local_cpus(config: Config) -> int:
    """CPUs a local Ray offers: ``execution.num_cpus``, else this machine's cores, or the ensemble's models if there
    are more of them. A unit holds one CPU, so with 3 models on 2 cores all three train at once and share the cores
    (measured on the demo: 285 s vs 318 s for two side by side and then the third alone, docs/scaling.md)."""
    return config.execution.num_cpus or max(os.cpu_count() or 1, config.model.ensemble)


def _warm() -> None:
    """What the first unit would import (the core imports these lazily, inside the functions that use them)."""
    import prefect.task_engine  # noqa: F401
    import torch  # noqa: F401
    from datasets import Dataset  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    import selfimprove.models  # noqa: F401
    import selfimprove.samplers.hf  # noqa: F401
    import selfimprove.stages  # noqa: F401
    import selfimprove.verifiers  # noqa: F401
    import tasks  # noqa: F401


def _prewarm(ray: Any) -> None:
    """Start one worker per CPU of a local Ray and import the heavy libraries there now, while the flow sets up
    the round (the first units would otherwise wait for them). Not awaited; a failure shows up in the units."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    warm = ray.remote(num_cpus=1)(_warm)
    for _ in range(cpus):
        warm.remote()


def on_ray() -> bool:
    """Whether the current flow run submits its tasks to Ray."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "RayTaskRunner"


def run_units(stage: str, config: Config, paths: RoundPaths, tracker: Tracker) -> Any:
    """A split stage: its units as Prefect tasks (submitted side by side on Ray, else called in order), then the merge
    in this process. Same parts, same merge order, same bytes either way."""
    split = SPLITS[stage]
    t0 = time.perf_counter()
    units = split.units(config, paths)
    stage_parts.start(paths, stage)
    if on_ray() and (len(units) > 1 or config.execution.runner == "ray"):  # ray: even one unit goes to its resources
        from prefect_ray.context import remote_options

        opts = config.execution.unit_resources(stage).remote_options()
        with remote_options(**opts):
            futures = [tasks.unit.submit(stage, config, paths, u, None, os.getcwd()) for u in units]
        results = [f.result() for f in futures]
        for _, calls in results:  # unit order, whatever order they finished in
            replay(calls, tracker)
        parts = [p for p, _ in results]
        report = tasks.merge(stage, config, paths, units, parts, tracker)
        # the stage's own seconds add up its units' work; side by side, the stage took its wall time
        work = {f"{stage}/unit_seconds": report.seconds, f"{stage}/seconds": time.perf_counter() - t0}
        tracker.log_metrics(work, step=paths.round)
        return report
    parts = [tasks.unit(stage, config, paths, u, tracker)[0] for u in units]
    return tasks.merge(stage, config, paths, units, parts, tracker)


__all__ = ["on_ray", "ray_runner", "run_units", "worker_env"]
