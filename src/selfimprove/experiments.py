"""Runs are DVC experiments: each run gets its own workspace, its own params, and ends as an experiment ref.

Why: the workspace ``params.yaml`` is the user's. A run that wrote its overrides there would leak them into
the next run, collide with a concurrent run, and leave a failed run's bad value behind. So every run
(``selfimprove run``, a Prefect deployment run, a scheduled run) works in a *run workspace*: a git worktree
of the project at its current commit, under ``.selfimprove/exps/<name>/``, whose ``params.yaml`` receives the
run's overrides. The worktree shares the project's DVC cache (and so DVC's run cache: a stage whose inputs an
earlier run already saw is restored, not recomputed). When the run finishes it is saved with
``dvc exp save``: ``dvc exp show`` lists it with its params and metrics, ``dvc exp apply NAME`` brings it into
the workspace, ``dvc exp diff A B`` compares two. A run whose params equal the workspace's is applied to the
workspace at the end (``runs/``, ``dvc.lock``; ``params.yaml`` is unchanged by construction), which is what
``make demo`` leaves behind.

Identity: a run is its name (``--name``, the Prefect run name, or generated) and the git revision it started
from. A name that an experiment, or an unfinished run, already has is refused before anything is written.
The run record ``.selfimprove/runs/<name>.json`` says what was asked (overrides, params file, rounds), which
process owns the run and how it ended; a record whose process died is reconciled to ``killed``, and
``selfimprove run --resume NAME`` continues it in its workspace with the params it started with.

This module is plain Python (git and DVC only): the Prefect flow (``flows/loop.py``) and the CLI call it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

STATE_DIR = ".selfimprove"
EXPS = "exps"  # run workspaces (git worktrees)
RECORDS = "runs"  # run records
PARAMS = "params.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")

Status = Literal["created", "running", "finished", "failed", "killed"]


class ExperimentError(RuntimeError):
    """A run cannot start, resume or be saved; the message says what to do."""


class RunRecord(BaseModel):
    """What a run was asked to do and how it ended (``.selfimprove/runs/<name>.json``)."""

    name: str
    baseline: str = Field(description="git commit the run started from")
    status: Status = "created"
    workdir: str = Field(description="the run's workspace (a git worktree of the project)")
    params_file: str = PARAMS
    overrides: list[str] = Field(default_factory=list)
    rounds: int | None = None
    from_workspace: bool = Field(True, description="uncommitted changes to tracked files were copied in")
    pid: int | None = None
    host: str | None = None
    created: float = Field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    experiment_rev: str | None = None
    applied: bool = False
    same_params_as_workspace: bool = False
    mlflow_run_id: str | None = None
    prefect_flow_run_id: str | None = None
    stopped: str | None = Field(None, description="why the run ended before its last round (plateau, health gate)")
    health: dict[str, Any] | None = Field(None, description="the failed health check: gates, values across rounds")


# ------------------------------------------------------------------------------------------------- git


@dataclass
class Run:
    """One run of the loop, as the flow carries it: its name (the DVC experiment's), the project (``home``), its
    own workspace (``work``, a git worktree), its record, and where it is tracked (the MLflow store and the loop's
    parent run). One object instead of six positional parameters; the record stays the persisted state."""

    name: str
    home: Path
    work: Path
    record: RunRecord
    store: Any = None  # selfimprove.tracking.MlflowStore, or None with tracking off
    mlflow_parent: str | None = None


def _git(args: list[str], cwd: str | Path, check: bool = True) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    env.setdefault("GIT_AUTHOR_NAME", "selfimprove")
    env.setdefault("GIT_AUTHOR_EMAIL", "selfimprove@localhost")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise ExperimentError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def git_root(project: str | Path) -> Path:
    project = Path(project).resolve()
    if shutil.which("git") is None:
        raise ExperimentError("git is not installed: runs are DVC experiments, which live in a git repository")
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExperimentError(
            f"{project} is not a git repository: runs are DVC experiments (git refs). "
            "Run: git init && dvc init && git add -A && git commit -m init"
        )
    return Path(proc.stdout.strip())


def head_commit(project: str | Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExperimentError(
            f"{project} has no commit yet: an experiment starts from a commit. Run: git add -A && git commit -m init"
        )
    return proc.stdout.strip()


def _exclude_state_dir(home: Path) -> None:
    """Keep ``.selfimprove/`` out of ``git status`` without editing the user's .gitignore."""
    common = Path(_git(["rev-parse", "--git-common-dir"], home).strip())
    exclude = (common if common.is_absolute() else home / common) / "info" / "exclude"
    text = exclude.read_text() if exclude.exists() else ""
    if f"/{STATE_DIR}/" not in text.split():
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(text + ("" if text.endswith("\n") or not text else "\n") + f"/{STATE_DIR}/\n")


def _workspace_changes(home: Path) -> tuple[list[str], list[str]]:
    """Tracked files changed against HEAD (and files staged as new), and tracked files deleted.

    Like ``dvc exp run``, a run takes the workspace's changes to *tracked* files (an edited params.yaml, edited
    code); untracked files are not part of the run (``git add`` them to include them)."""
    out = _git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], home)
    changed, deleted = [], []
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        e = entries[i]
        i += 1
        if not e:
            continue
        code, path = e[:2], e[3:]
        if code[0] in "RC":  # renamed/copied: the next entry is the source path
            i += 1
        if "D" in code and code[0] not in "RC" and "A" not in code:
            deleted.append(path)
        else:
            changed.append(path)
    return changed, deleted


# ----------------------------------------------------------------------------------------------- layout


def state_dir(home: str | Path) -> Path:
    return Path(home) / STATE_DIR


def workdir_of(home: str | Path, name: str) -> Path:
    return state_dir(home) / EXPS / name


def record_path(home: str | Path, name: str) -> Path:
    return state_dir(home) / RECORDS / f"{name}.json"


@contextlib.contextmanager
def project_lock(home: str | Path) -> Iterator[None]:
    """Short critical sections shared by all runs of a project: naming, saving and applying experiments."""
    path = state_dir(home) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_record(home: str | Path, name: str) -> RunRecord | None:
    p = record_path(home, name)
    if not p.exists():
        return None
    return RunRecord.model_validate_json(p.read_text())


def write_record(home: str | Path, record: RunRecord) -> None:
    from selfimprove.io import write_json

    write_json(record_path(home, record.name), record)


def list_records(home: str | Path) -> list[RunRecord]:
    d = state_dir(home) / RECORDS
    if not d.exists():
        return []
    out = []
    for p in d.glob("*.json"):
        with contextlib.suppress(ValueError):
            out.append(RunRecord.model_validate_json(p.read_text()))
    return sorted(out, key=lambda r: r.created)


def pid_alive(pid: int | None, host: str | None) -> bool:
    """Is the process alive? A run on another machine counts as alive: it cannot be told from here."""
    if host and host != socket.gethostname():
        return True  # another machine's run: we cannot tell, so never reconcile it from here
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(home: str | Path) -> list[RunRecord]:
    """Mark runs whose owning process died as ``killed``; return them."""
    dead = []
    for r in list_records(home):
        if r.status in ("created", "running") and r.pid != os.getpid() and not pid_alive(r.pid, r.host):
            r.status, r.ended = "killed", time.time()
            r.error = r.error or f"process {r.pid} on {r.host} ended without finishing the run"
            write_record(home, r)
            dead.append(r)
    return dead


def reap_orphan_servers(home: str | Path) -> list[int]:
    """Stop the temporary Prefect servers that runs of this project left behind when killed (-9).

    ``selfimprove run`` without a Prefect server lets Prefect start a temporary one as a child process; a run killed
    with SIGKILL cannot stop it, and it lived on until killed by hand, one per kill. Ours are recognised by their
    command (Prefect's ephemeral app), their ``PREFECT_HOME`` (this project's ``.prefect``) and their parent: gone
    (re-parented to init) or not a live process of a run. Returns the pids stopped."""
    import psutil

    prefect_home = os.path.realpath(os.environ.get("PREFECT_HOME") or (Path(home) / ".prefect"))
    stopped = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "prefect.server.api.server:create_app" not in cmd:
                continue
            env = proc.environ()
            if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or os.path.realpath(env.get("PREFECT_HOME", "")) != prefect_home:
                continue
            parent = psutil.Process(proc.info["ppid"]) if proc.info["ppid"] not in (0, 1) else None
            if parent is not None and parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
                continue  # a live run's server
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except psutil.TimeoutExpired:
                proc.kill()
            stopped.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    if stopped:
        log.info("stopped %d temporary Prefect server(s) left by killed runs (pid %s)", len(stopped),
                 ", ".join(map(str, stopped)))
    return stopped


# ------------------------------------------------------------------------------------------------ names


def experiment_refs(home: str | Path, name: str | None = None) -> dict[str, str]:
    """``{name: ref}`` of the DVC experiments in the repository (any baseline)."""
    out = _git(["for-each-ref", "--format=%(refname)", "refs/exps/"], home)
    refs = {}
    for ref in out.split():
        parts = ref.split("/")
        if len(parts) == 5 and parts[2] != "exec":  # refs/exps/ab/cdef.../<name>
            refs.setdefault(parts[4], ref)
    return {k: v for k, v in refs.items() if name is None or k == name}


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ExperimentError(
            f"run name {name!r} is not a valid experiment name: use 1-80 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (it becomes a git ref)"
        )
    return name


def slug(name: str) -> str:
    """A valid experiment name for a free-form run name (a Prefect run name typed in the UI).

    >>> slug("my run #2"), slug("crimson-tiger")
    ('my-run-2', 'crimson-tiger')
    """
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")[:80]
    return s or "run"


def generate_name(home: str | Path) -> str:
    from dvc.repo.experiments.utils import gen_random_name

    taken = set(experiment_refs(home)) | {r.name for r in list_records(home)}
    for _ in range(100):
        name = gen_random_name()
        if name not in taken:
            return name
    raise ExperimentError("could not generate a free experiment name; pass --name")


def name_taken(home: str | Path, name: str) -> str | None:
    """Why ``name`` cannot start a new run (None if it can)."""
    if experiment_refs(home, name):
        return f"an experiment named {name!r} exists (dvc exp show); pick another --name or remove it: dvc exp remove {name}"
    rec = read_record(home, name)
    if rec is not None:
        if rec.status in ("failed", "killed"):
            return (f"run {name!r} exists and did not finish ({rec.status}): continue it with "
                    f"'selfimprove run --resume {name}', or remove it with 'selfimprove runs --remove {name}'")
        if rec.status in ("created", "running"):
            return f"run {name!r} is running (pid {rec.pid} on {rec.host})"
        return f"a run named {name!r} exists; pick another --name or remove it with 'selfimprove runs --remove {name}'"
    if workdir_of(home, name).exists():
        return f"{workdir_of(home, name)} exists; remove it or pick another --name"
    return None


# ------------------------------------------------------------------------------------------ run workspace


def _link_cache(home: Path, workdir: Path) -> None:
    """The worktree uses the project's DVC cache (and run cache), plus its local config (remotes, credentials)."""
    from dvc.repo import Repo

    with Repo(str(home)) as repo:
        cache_dir = repo.cache.local_cache_dir
    local = home / ".dvc" / "config.local"
    text = local.read_text() if local.exists() else ""
    lines = [ln for ln in text.splitlines()]
    out, in_cache, wrote = [], False, False
    for ln in lines:
        stripped = ln.strip()
        if stripped.startswith("["):
            if in_cache and not wrote:
                out.append(f"    dir = {cache_dir}")
                wrote = True
            in_cache = stripped == "[cache]"
        elif in_cache and stripped.split("=")[0].strip() == "dir":
            continue
        out.append(ln)
    if in_cache and not wrote:
        out.append(f"    dir = {cache_dir}")
        wrote = True
    if not wrote:
        out += ["[cache]", f"    dir = {cache_dir}"]
    (workdir / ".dvc").mkdir(exist_ok=True)
    (workdir / ".dvc" / "config.local").write_text("\n".join(out) + "\n")


def prepare_params(workdir: Path, home: Path, params_file: str, overrides: list[str], rounds: int | None) -> None:
    """Write the run's params.yaml: the given params file (default: the project's), then rounds, then overrides.

    DVC reads ``params.yaml``; a run started from another file (``--params examples/x.params.yaml``) gets that
    file's content as its ``params.yaml``, so the experiment records exactly what ran."""
    from selfimprove.params import apply_overrides_to_file, declared_params, fill_declared, set_rounds

    target = workdir / PARAMS
    if params_file != PARAMS:
        src = workdir / params_file
        if not src.exists():
            src = home / params_file
        if not src.exists():
            raise ExperimentError(f"--params {params_file}: file not found (in {home})")
        shutil.copyfile(src, target)
    if rounds is not None:
        set_rounds(target, rounds)
    if overrides:
        apply_overrides_to_file(target, overrides)
    dvc_yaml = workdir / "dvc.yaml" if (workdir / "dvc.yaml").exists() else home / "dvc.yaml"
    if dvc_yaml.exists():
        added = fill_declared(target, declared_params(dvc_yaml))
        if added:
            log.info("run params: wrote the defaults of %s (DVC records every param a stage declares)", ", ".join(added))


def create(home: str | Path, name: str, *, overrides: list[str] | None = None, rounds: int | None = None,
           params_file: str = PARAMS, from_workspace: bool = True) -> RunRecord:
    """Make the run workspace for a new run ``name`` and its record; refuse a name already taken.

    Nothing is written before the name and the repository are checked."""
    home = git_root(home)
    check_name(name)
    baseline = head_commit(home)
    with project_lock(home):
        reconcile(home)
        why = name_taken(home, name)
        if why:
            raise ExperimentError(why)
        _exclude_state_dir(home)
        workdir = workdir_of(home, name)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        record = RunRecord(name=name, baseline=baseline, workdir=str(workdir), params_file=params_file,
                           overrides=list(overrides or []), rounds=rounds, from_workspace=from_workspace,
                           pid=os.getpid(), host=socket.gethostname())
        write_record(home, record)  # claims the name
    try:
        _git(["worktree", "add", "--detach", "--force", str(workdir), baseline], home)
        if from_workspace:
            changed, deleted = _workspace_changes(home)
            for rel in changed:
                src, dst = home / rel, workdir / rel
                if src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            for rel in deleted:
                (workdir / rel).unlink(missing_ok=True)
        _link_cache(home, workdir)
        prepare_params(workdir, home, params_file, record.overrides, rounds)
        record.same_params_as_workspace = (
            (home / PARAMS).exists() and (workdir / PARAMS).read_bytes() == (home / PARAMS).read_bytes()
        )
        write_record(home, record)
    except BaseException:
        discard(home, name)
        raise
    log.info("run %s: workspace %s (from %s%s)", name, workdir, baseline[:7],
             ", with the workspace's uncommitted changes" if from_workspace else "")
    return record


def resume(home: str | Path, name: str) -> RunRecord:
    """Reopen an unfinished run (failed or killed) in its own workspace, with the params it started with."""
    home = git_root(home)
    with project_lock(home):
        reconcile(home)
        record = read_record(home, name)
        if record is None:
            raise ExperimentError(f"no run named {name!r} to resume (selfimprove runs lists them)")
        if record.status in ("created", "running"):
            raise ExperimentError(f"run {name!r} is still running (pid {record.pid} on {record.host})")
        if record.status == "finished":
            raise ExperimentError(f"run {name!r} finished; nothing to resume (start a new run with another --name)")
        if not Path(record.workdir).exists():
            raise ExperimentError(f"run {name!r} has no workspace left at {record.workdir}; start a new run")
        record.status, record.pid, record.host, record.error, record.ended = "created", os.getpid(), socket.gethostname(), None, None
        write_record(home, record)
    return record


def mark(home: str | Path, record: RunRecord, status: Status, error: str | None = None, **fields: Any) -> None:
    record.status = status
    if status in ("finished", "failed", "killed"):
        record.ended = time.time()
    if error is not None:
        record.error = error[:4000]
    for k, v in fields.items():
        setattr(record, k, v)
    write_record(home, record)


def keep_report(home: str | Path, record: RunRecord, report: str | Path) -> Path:
    """A copy of a failure report written inside the run's workspace, at ``.selfimprove/reports/<run>/`` in the
    project, where a user who reads the message finds it (the workspace's ``runs/r1/...`` is not the project's)."""
    src = Path(report)
    if not src.is_absolute():
        src = Path(record.workdir) / src
    dst = state_dir(home) / "reports" / record.name / f"{src.parent.name}-{src.name}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst


def _untracked(workdir: Path) -> list[str]:
    out = _git(["ls-files", "--others", "--exclude-standard", "-z"], workdir)
    return sorted(p for p in out.split("\0") if p)


def save(home: str | Path, record: RunRecord) -> str:
    """Save the finished run as DVC experiment ``record.name`` (``dvc exp save``); return its commit.

    The experiment commit holds what git tracks of a DVC pipeline: params.yaml, dvc.lock, the uncached metrics
    and plots files, and DVC's .gitignore entries; the outputs themselves are in the shared DVC cache."""
    from dvc.repo import Repo

    workdir = Path(record.workdir)
    with project_lock(home), Repo(str(workdir)) as repo:
        include = _untracked(workdir)
        rev = repo.experiments.save(name=record.name, include_untracked=include or None)
    record.experiment_rev = rev
    write_record(home, record)
    log.info("run %s saved as DVC experiment %s (%s)", record.name, record.name, (rev or "")[:7])
    return rev


def apply(home: str | Path, name: str) -> None:
    """``dvc exp apply NAME`` in the project: its params, dvc.lock, metrics and outputs into the workspace."""
    from dvc.repo import Repo

    with project_lock(home), Repo(str(home)) as repo:
        repo.experiments.apply(name)
    _drop_stale_rounds(Path(home))


def _drop_stale_rounds(home: Path) -> list[str]:
    """After applying a run with fewer rounds than the workspace held, the extra rounds' files stay behind
    (``runs/metrics/r2.json``, ``runs/r2/`` with DVC's ``.gitignore``): ``dvc status`` then reports them and ``dvc
    repro`` rewrites ``dvc.lock``. They belong to the other experiment, whose commit and DVC cache keep them, so
    they are removed here. Returns what was removed."""
    import yaml

    params = yaml.safe_load((home / PARAMS).read_text()) or {}
    runs = home / str(params.get("workspace") or "runs")
    keep = {"r0", *(params.get("rounds") or {}), *(params.get("eval_rounds") or {})}
    removed = []
    for d in sorted(runs.glob("r[0-9]*")):
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d)
            removed.append(str(d.relative_to(home)))
    for f in sorted((runs / "metrics").glob("r[0-9]*.json")):
        if f.stem not in keep:
            f.unlink()
            removed.append(str(f.relative_to(home)))
    if removed:
        log.info("rounds the applied run does not have, removed from the workspace: %s", ", ".join(removed))
    return removed


def discard(home: str | Path, name: str, keep_record: bool = False) -> None:
    """Remove a run's workspace (and its record unless ``keep_record``)."""
    home = Path(home)
    workdir = workdir_of(home, name)
    if workdir.exists():
        _git(["worktree", "remove", "--force", str(workdir)], home, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    _git(["worktree", "prune"], home, check=False)
    if not keep_record:
        record_path(home, name).unlink(missing_ok=True)


def remove(home: str | Path, name: str) -> list[str]:
    """Remove a run: its workspace, its record and its DVC experiment. Returns what was removed."""
    home = git_root(home)
    done = []
    with project_lock(home):
        rec = read_record(home, name)
        if rec is not None and rec.status in ("created", "running") and pid_alive(rec.pid, rec.host):
            raise ExperimentError(f"run {name!r} is running (pid {rec.pid}); stop it first")
        if workdir_of(home, name).exists():
            done.append(f"workspace {workdir_of(home, name)}")
        if rec is not None:
            done.append(f"record {record_path(home, name)}")
        discard(home, name)
        refs = experiment_refs(home, name)
        for ref in refs.values():
            _git(["update-ref", "-d", ref], home)
            done.append(f"experiment {ref}")
    return done


def json_summary(record: RunRecord) -> dict[str, Any]:
    return json.loads(record.model_dump_json())
