"""Prefect tasks: one per stage, each a thin wrapper whose ``.fn`` *is* the core stage function.

Retries only on transient I/O errors (a lost connection to a tracking server, a full temporary disk): a bad
input or a failed Great Expectations gate fails at once, with the stage's own message. Results are not
cached or persisted by Prefect: DVC decides what is up to date (``selfimprove.dvcstate``).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from selfimprove.stages import run_bootstrap, run_evaluate, run_finetune, run_sample, run_validate, run_verify

TRANSIENT = (ConnectionError, TimeoutError)


def retry_on_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry when the stage failed on a network/timeout error, never on data or config errors."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except OSError as e:
        return e.__class__ is OSError  # bare OSError (EIO, ENOSPC...), not FileNotFoundError & co.
    except BaseException:  # noqa: BLE001
        return False
    return False


def _stage_task(fn: Any, name: str) -> Any:
    return task(
        fn,
        name=name,
        task_run_name=name + "-{paths.key}",
        cache_policy=NONE,
        persist_result=False,
        retries=2,
        retry_delay_seconds=[5, 30],
        retry_condition_fn=retry_on_transient,
    )


bootstrap = _stage_task(run_bootstrap, "bootstrap")
sample = _stage_task(run_sample, "sample")
verify = _stage_task(run_verify, "verify")
validate = _stage_task(run_validate, "validate")
finetune = _stage_task(run_finetune, "finetune")
evaluate = _stage_task(run_evaluate, "evaluate")

ROUND_TASKS = {"sample": sample, "verify": verify, "validate": validate, "finetune": finetune, "evaluate": evaluate}

__all__ = ["ROUND_TASKS", "bootstrap", "evaluate", "finetune", "sample", "validate", "verify"]
