"""DVC bookkeeping for stages run by the Prefect flow instead of ``dvc repro``.

The invariant: a round run from Prefect leaves its workspace exactly as ``dvc repro`` would. Before a stage the
flow calls ``prepare(stage)``, which does what ``dvc repro`` does before running a command:

- ``fresh``: dvc.lock records the stage with unchanged deps, params and outs: nothing to do;
- ``restored``: DVC's run cache has a run of this stage with the same deps and params (an earlier run, another
  experiment): its outputs are checked out from the cache and dvc.lock records them, as ``dvc repro`` prints
  "Stage 'x' is cached - skipping run, checking out outputs";
- ``stale``: the stage must run. The flow runs the stage function, then ``commit(stage)`` records deps, params
  and outs in dvc.lock, the cache and the run cache (what ``dvc repro`` does after the command).

``inputs_fingerprint(stages)`` hashes what a group of stages (a round) reads from outside itself, as DVC sees it:
command, declared params and the hashes of external deps. It identifies a round run in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

State = Literal["fresh", "restored", "stale"]


class DvcError(RuntimeError):
    pass


def stage_id(stage: str, key: str) -> str:
    """The stage's name in dvc.yaml: ``bootstrap`` and ``summary`` once per run, the others per round (``sample@r2``).

    >>> stage_id("bootstrap", "r0"), stage_id("sample", "r2")
    ('bootstrap', 'sample@r2')
    """
    return stage if stage in ("bootstrap", "summary") else f"{stage}@{key}"


def _repo(project: str | Path):
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logging.getLogger("dvc").setLevel(logging.WARNING)  # we log what was recorded ourselves
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(project))
    except NotDvcRepoError:
        raise DvcError(f"{project} is not a DVC project: run 'git init && dvc init' there (or clone the selfimprove repo)") from None


def _stage(repo: Any, stage_id: str) -> Any:
    try:
        return repo.stage.get_target(stage_id)
    except Exception as e:  # noqa: BLE001 - an unknown stage means params.yaml and dvc.yaml disagree
        raise DvcError(f"DVC cannot find stage {stage_id!r} in dvc.yaml: {e}") from None


def stage_names(project: str | Path) -> list[str]:
    with _repo(project) as repo:
        return [s.addressing for s in repo.index.stages]


def is_fresh(project: str | Path, stage_id: str) -> bool:
    """True if ``stage_id`` is recorded in dvc.lock with unchanged deps, params and outs (would be skipped)."""
    with _repo(project) as repo:
        try:
            status = repo.status(targets=[stage_id])
        except Exception as e:  # noqa: BLE001
            raise DvcError(f"DVC cannot check stage {stage_id!r}: {e}") from None
    return not status


def prepare(project: str | Path, stage_id: str, run_cache: bool = True) -> State:
    """Bring ``stage_id`` up to date without running it when DVC can (see the module docstring)."""
    from dvc.exceptions import ConfirmRemoveError
    from dvc.stage.cache import RunCacheNotFoundError

    with _repo(project) as repo, repo.lock:
        stage = _stage(repo, stage_id)
        try:
            if not stage.changed():
                return "fresh"
        except Exception as e:  # noqa: BLE001
            raise DvcError(f"DVC cannot check stage {stage_id!r}: {e}") from None
        if not run_cache:
            return "stale"
        try:
            repo.stage_cache.restore(stage)
        except RunCacheNotFoundError:
            return "stale"
        except ConfirmRemoveError as e:
            raise DvcError(edited_output_message(project, stage_id, getattr(e, "path", None) or str(e))) from None
        stage.save()
        stage.commit()
        stage.dump(update_pipeline=False)
    log.debug("dvc: %s restored from the run cache", stage_id)
    return "restored"


def edited_output_message(project: str | Path, stage_id: str, path: str) -> str:
    """What to do when an output DVC recorded was changed by hand and DVC would overwrite it to restore a stage.

    Nothing is removed: the edit is the user's. Either put the recorded file back, or delete the output to have the
    stage computed again."""
    m = re.search(r"'([^']+)'", path)
    path = m.group(1) if m else path
    try:
        rel = os.path.relpath(path, project)
    except ValueError:
        rel = path
    out = rel.split(os.sep)
    folder = os.sep.join(out[:3]) if len(out) > 3 else rel
    return (f"{stage_id}: {rel} (in {project}) was changed after the run recorded it, and DVC would overwrite it "
            f"to restore {stage_id}. Put the recorded version back with `dvc checkout --force {folder}` in that "
            f"folder, or delete {folder} to compute {stage_id} again; then resume the run")


def commit(project: str | Path, stage_id: str) -> None:
    """Record ``stage_id`` in dvc.lock, the DVC cache and the run cache (``dvc commit --force <stage>``)."""
    with _repo(project) as repo:
        repo.commit(stage_id, force=True)
    log.debug("dvc: recorded %s in dvc.lock", stage_id)


def out_hash(project: str | Path, stage_id: str, path: str) -> str | None:
    """The hash dvc.lock records for output ``path`` of ``stage_id`` (a directory's ends in ``.dir``)."""
    with _repo(project) as repo:
        stage = _stage(repo, stage_id)
        for out in stage.outs:
            if out.def_path == path:
                return out.hash_info.value if out.hash_info else None
    return None


def inputs_fingerprint(project: str | Path, stage_ids: Iterable[str]) -> tuple[str, dict[str, Any]]:
    """What ``stage_ids`` read from outside the group, as DVC sees it; returns (short hash, the data hashed)."""
    from dvc.dependency.param import ParamsDependency

    stage_ids = list(stage_ids)
    data: dict[str, Any] = {}
    with _repo(project) as repo:
        stages = [_stage(repo, s) for s in stage_ids]
        produced = {os.path.normpath(o.def_path) for st in stages for o in st.outs}
        for st in stages:
            deps: dict[str, Any] = {}
            for dep in st.deps:
                if isinstance(dep, ParamsDependency):
                    deps[f"params:{dep.def_path}"] = dep.read_params()
                elif os.path.normpath(dep.def_path) in produced:
                    continue
                else:
                    try:
                        h = dep.get_hash()
                        deps[dep.def_path] = h.value if h else None
                    except Exception:  # noqa: BLE001 - a missing dep: the stage will say so when it runs
                        deps[dep.def_path] = None
            data[st.addressing] = {"cmd": st.cmd, "deps": deps}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return digest, data


def forget_round(project: str | Path, key: str, workspace: str = "runs") -> list[str]:
    """Remove what a round that will not stay in the run left behind: its ``stage@key`` entries in dvc.lock, its
    folder and its metrics file (a curriculum round whose dataset failed validation). Returns what was removed."""
    import shutil

    import yaml

    project = Path(project)
    removed = []
    lock = project / "dvc.lock"
    if lock.exists():
        data = yaml.safe_load(lock.read_text()) or {}
        stages = data.get("stages") or {}
        gone = [s for s in stages if s.endswith(f"@{key}")]
        for s in gone:
            del stages[s]
        if gone:
            lock.write_text(yaml.safe_dump(data, sort_keys=False))
            removed += [f"dvc.lock: {s}" for s in gone]
    for path in (project / workspace / key, project / workspace / "metrics" / f"{key}.json"):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(str(path))
        elif path.exists():
            path.unlink()
            removed.append(str(path))
    return removed
