"""Prefect tasks: one per stage, each a thin wrapper whose ``.fn`` *is* the core stage function, plus the model
registry step.

Retries only on transient I/O errors (a lost connection to a tracking server): a bad input, a failed Great
Expectations gate or a full disk fails at once, with the stage's own message. Results are not cached or
persisted by Prefect: DVC decides what is up to date (``selfimprove.dvcstate``).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from selfimprove.registration import register_round
from selfimprove.stages import (
    run_bootstrap,
    run_evaluate,
    run_finetune,
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
sample = _task(run_sample, "sample", "sample@{paths.key}")
verify = _task(run_verify, "verify", "verify@{paths.key}")
validate = _task(run_validate, "validate", "validate@{paths.key}")
finetune = _task(run_finetune, "finetune", "finetune@{paths.key}")
evaluate = _task(run_evaluate, "evaluate", "evaluate@{paths.key}")
summary = _task(run_summary, "summary", "summary")
register = _task(register_round, "register", "register@{paths.key}")

ROUND_TASKS = {"sample": sample, "verify": verify, "validate": validate, "finetune": finetune, "evaluate": evaluate}
STAGE_TASKS = {"bootstrap": bootstrap, **ROUND_TASKS, "summary": summary}

__all__ = ["ROUND_TASKS", "STAGE_TASKS", "bootstrap", "evaluate", "finetune", "register", "sample", "summary",
           "validate", "verify"]
