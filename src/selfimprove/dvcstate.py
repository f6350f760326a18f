"""DVC bookkeeping for runs that do not go through ``dvc repro`` (the Prefect flow).

The invariant: a round run from Prefect leaves the workspace exactly as ``dvc repro`` would. The flow asks
``is_fresh(stage)`` before running a stage (an up-to-date stage is skipped, which is how an interrupted loop
resumes), runs the stage function itself, then ``commit(stage)`` records deps, params and outs in
``dvc.lock`` and the cache, just as ``dvc repro`` records them after running the stage command.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class DvcError(RuntimeError):
    pass


def _repo(project: str | Path):
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.getLogger("dvc").setLevel(logging.WARNING)  # we log what was recorded ourselves
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(project))
    except NotDvcRepoError:
        raise DvcError(f"{project} is not a DVC project: run 'git init && dvc init' there (or clone the selfimprove repo)") from None


def stage_names(project: str | Path) -> list[str]:
    with _repo(project) as repo:
        return [s.addressing for s in repo.index.stages]


def is_fresh(project: str | Path, stage: str) -> bool:
    """True if ``stage`` is recorded in dvc.lock with unchanged deps, params and outs (would be skipped)."""
    with _repo(project) as repo:
        try:
            status = repo.status(targets=[stage])
        except Exception as e:  # noqa: BLE001 - an unknown stage means params.yaml and dvc.yaml disagree
            raise DvcError(f"DVC cannot check stage {stage!r}: {e}") from None
    return not status


def commit(project: str | Path, stage: str) -> None:
    """Record ``stage`` in dvc.lock and the DVC cache (``dvc commit --force <stage>``)."""
    with _repo(project) as repo:
        repo.commit(stage, force=True)
    log.info("dvc: recorded %s in dvc.lock", stage)
