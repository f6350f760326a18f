"""Prefect tasks: one per stage, each a thin wrapper whose ``.fn`` *is* the core stage function, plus the model
registry step; and, for the stages written as units (``selfimprove.stages.SPLITS``), ``unit`` (one member or
shard: what the flow submits to the task runner, Ray when ``execution.runner`` says so) and ``merge``.

Retries only on transient I/O errors (a lost connection to a tracking server): a bad input, a failed Great
Expectations gate or a full disk fails at once, with the stage's own message. Results are not cached or
persisted by Prefect: DVC decides what is up to date (``selfimprove.dvcstate``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from selfimprove.registration import register_round
from selfimprove.stages import (
    SPLITS,
    run_bootstrap,
    run_correct,
    run_evaluate,
    run_finetune,
    run_propose,
    run_sample,
    run_summary,
    run_validate,
    run_verify,
)

TRANSIENT = (ConnectionError, TimeoutError)


def retry_on_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry when the stage failed on a network/timeout error, never on data, config or disk-full errors."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except BaseException:  # noqa: BLE001
        return False
    return False


def _task(fn: Any, name: str, run_name: str) -> Any:
    return task(
        fn,
        name=name,
        task_run_name=run_name,
        cache_policy=NONE,
        persist_result=False,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=retry_on_transient,
    )


bootstrap = _task(run_bootstrap, "bootstrap", "bootstrap")
propose = _task(run_propose, "propose", "propose@{paths.key}")
sample = _task(run_sample, "sample", "sample@{paths.key}")
verify = _task(run_verify, "verify", "verify@{paths.key}")
correct = _task(run_correct, "correct", "correct@{paths.key}")
validate = _task(run_validate, "validate", "validate@{paths.key}")
finetune = _task(run_finetune, "finetune", "finetune@{paths.key}")
evaluate = _task(run_evaluate, "evaluate", "evaluate@{paths.key}")
summary = _task(run_summary, "summary", "summary")
register = _task(register_round, "register", "register@{paths.key}")



def run_unit(stage: str, config: Any, paths: Any, unit: Any, tracker: Any = None, workdir: str | None = None
             ) -> tuple[dict[str, Any], list[Any]]:
    """One unit of a stage (an ensemble member, a shard of problems): ``SPLITS[stage].run_unit``.

    On a Ray worker (``tracker`` None): work in the run's workspace (``workdir``), keep the unit's tracking calls
    and return them with its part, for the flow to log to MLflow in unit order."""
    from selfimprove.tracker import RecordingTracker

    if workdir is not None:
        os.chdir(workdir)  # the stage's paths are workspace-relative, as in the flow's own process
        core = logging.getLogger("selfimprove")  # the core's info lines reach the unit's task run in the UI
        if core.getEffectiveLevel() > logging.INFO:
            core.setLevel(logging.INFO)
    rec = RecordingTracker() if tracker is None else tracker
    part = SPLITS[stage].run_unit(config, paths, unit, rec)
    return part, (rec.calls if tracker is None else [])


def run_merge(stage: str, config: Any, paths: Any, units: list[Any], parts: list[dict[str, Any]], tracker: Any) -> Any:
    """The stage's outputs from its units' parts: ``SPLITS[stage].merge``."""
    return SPLITS[stage].merge(config, paths, units, parts, tracker)


def _stage_id() -> str:  # the stage's DVC name: bootstrap, sample@r1, ...
    from prefect.runtime import task_run

    from selfimprove.dvcstate import stage_id

    p = task_run.parameters
    return stage_id(p["stage"], p["paths"].key)


def _unit_run_name() -> str:  # e.g. finetune@r1/m2, sample@r1/m0/s1, bootstrap/m1
    from prefect.runtime import task_run

    return f"{_stage_id()}/{task_run.parameters['unit'].label}"


unit = _task(run_unit, "unit", _unit_run_name)
merge = _task(run_merge, "merge", _stage_id)

ROUND_TASKS = {"propose": propose, "sample": sample, "verify": verify, "correct": correct, "validate": validate, "finetune": finetune, "evaluate": evaluate}
STAGE_TASKS = {"bootstrap": bootstrap, **ROUND_TASKS, "summary": summary}

__all__ = ["ROUND_TASKS", "STAGE_TASKS", "bootstrap", "correct", "evaluate", "finetune", "merge", "propose", "register", "run_merge",
           "run_unit", "sample", "summary", "unit", "validate", "verify"]
