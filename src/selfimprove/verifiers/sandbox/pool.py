"""Host side of the sandbox: a pool of pre-started bubblewrap sandboxes, each running a fork server.

What: ``SandboxPool`` runs untrusted Python jobs in N long-lived sandboxes (one per core by default). A job is
either a *program* (run as ``__main__``; exit status and bounded output come back, for benchmarks and
containment checks) or a *test job* (candidate code plus a test spec; the per-test report comes back from
a tester process the candidate cannot reach, see ``_worker``).

Why a pool: a fresh bwrap sandbox per run costs tens of milliseconds of namespace and interpreter set-up;
forking a job from a warm worker costs a few. Every job still gets a fresh process, fresh rlimits, a fresh
temp dir and a sweep of every process it started.

How each sandbox is built (``bwrap_argv``):

* bwrap is started as an unprivileged uid (65534 by default) even when the caller is root; bwrap started
  by root would map the sandbox to host root. ``RLIMIT_NPROC`` only works for non-root uids, too.
* all namespaces unshared (no network: only an empty loopback), ``--disable-userns``, ``--cap-drop ALL``,
  ``--die-with-parent``, ``--new-session``, ``--clearenv``, ``--as-pid-1`` (the worker is the namespace's
  init: jobs cannot signal it, and its ``kill(-1)`` is the per-job sweep);
* a read-only ``/usr`` (plus the ``/bin``/``/lib`` links), a new ``/proc``, a minimal read-only ``/dev``
  with a capped ``/dev/shm``, a capped private ``/tmp`` and a read-only root: nothing from the project,
  home directories, the venv or the test data;
* the interpreter is the system ``/usr/bin/python3`` (standard library only).

The host never trusts the sandbox: every reply has a deadline (job wall limit + grace) and a size cap;
a worker that dies, hangs or answers garbage is killed and restarted, and its job is retried once in a
fresh worker (``infra_error`` if that fails too). Workers are also recycled after ``recycle_after`` jobs
and whenever a job left something behind that the sweep could not clean.

When bubblewrap or user namespaces are unavailable the pool refuses to start (``SandboxUnavailableError``
says what to install or enable). ``isolation="none"`` runs the same worker without any namespace, as an
explicit, loudly logged opt-in for disposable machines only.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import math
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Self

from selfimprove.verifiers.sandbox import _worker
from selfimprove.verifiers.sandbox._worker import FrameError, encode_frame, parse_frames

logger = logging.getLogger(__name__)

Isolation = Literal["bwrap", "none"]

WORKER_SOURCE = Path(_worker.__file__).read_text(encoding="utf-8")
#: Default uid the sandboxes run as when the caller is root (``nobody``).
DEFAULT_SANDBOX_UID = 65534
#: Extra seconds the host waits for a worker's reply beyond the job's own wall limit.
REPLY_GRACE_S = 5.0
_MAX_REPLY_BYTES = 4 << 20
_MAX_STDERR_KEEP = 16 << 10

UNSAFE_WARNING = (
    "SANDBOX ISOLATION IS OFF (isolation='none'): generated code runs as an ordinary process that can read "
    "host files, use the network and interfere with other processes. Use this only on a disposable machine."
)


class SandboxUnavailableError(RuntimeError):
    """Isolation cannot be set up on this machine; the message says what to install or enable."""


@dataclass(frozen=True)
class Limits:
    """Per-job limits. CPU is the verdict-deciding budget; wall time only catches sleeping or stuck jobs."""

    cpu_s: float = 5.0
    """CPU seconds of the candidate process (``RLIMIT_CPU``, rounded up to whole seconds)."""
    wall_s: float | None = None
    """Wall-clock seconds for the whole job; default ``max(10, 3 * cpu_s)`` so CPU contention does not flip verdicts."""
    memory_mb: int = 1024
    """Address space of each job process (``RLIMIT_AS``), in MiB."""
    max_output_bytes: int = 1 << 20
    """stdout+stderr the candidate may write before the job is stopped (``output_limit``)."""
    max_file_bytes: int = 16 << 20
    """Largest file the job may write (``RLIMIT_FSIZE``); the sandbox's /tmp is capped separately."""
    max_processes: int = 8
    """Processes/threads the candidate may add (``RLIMIT_NPROC`` on top of the worker, tester and candidate)."""
    max_open_files: int = 64
    """Open file descriptors per job process (``RLIMIT_NOFILE``)."""
    max_value_bytes: int = 16 << 20
    """Largest serialised return value the tester accepts from one call."""

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "max_output_bytes", "max_file_bytes", "max_open_files", "max_value_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_processes < 0:
            raise ValueError(f"Limits.max_processes must be >= 0, got {self.max_processes!r}")
        if self.wall_s is not None and self.wall_s <= 0:
            raise ValueError(f"Limits.wall_s must be positive, got {self.wall_s!r}")

    @property
    def effective_wall_s(self) -> float:
        return self.wall_s if self.wall_s is not None else max(10.0, 3.0 * self.cpu_s)

    @property
    def effective_cpu_s(self) -> int:
        """``RLIMIT_CPU`` counts whole seconds."""
        return max(1, math.ceil(self.cpu_s))

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["wall_s"] = self.effective_wall_s
        return d


@dataclass(frozen=True)
class ProcessStatus:
    """How a job process ended (``None`` in ``JobResult`` when it was still running and got swept)."""

    exit_code: int | None
    signal: int | None
    cpu_s: float
    maxrss_kb: int

    @classmethod
    def from_wire(cls, d: dict | None) -> ProcessStatus | None:
        if d is None:
            return None
        return cls(exit_code=d["exit"], signal=d["signal"], cpu_s=float(d["cpu_s"]), maxrss_kb=int(d["maxrss_kb"]))


@dataclass(frozen=True)
class Job:
    """One unit of work. ``sources`` are ``(code, filename)`` pairs executed in order in one namespace."""

    kind: Literal["program", "tests"]
    sources: tuple[tuple[str, str], ...]
    spec: dict[str, Any] | None = None
    limits: Limits | None = None

    @classmethod
    def program(cls, code: str, limits: Limits | None = None) -> Job:
        return cls("program", ((code, "<program>"),), None, limits)

    @classmethod
    def tests(cls, sources: Sequence[tuple[str, str]], spec: dict[str, Any], limits: Limits | None = None) -> Job:
        return cls("tests", tuple((str(s), str(f)) for s, f in sources), spec, limits)


@dataclass
class JobResult:
    """Raw facts about one job. Test verdicts are derived from ``report`` by the verifier, never from exit codes."""

    kind: str
    limits: Limits
    candidate: ProcessStatus | None = None
    tester: ProcessStatus | None = None
    report: dict[str, Any] | None = None
    wall_s: float = 0.0
    host_wall_s: float = 0.0
    output: str = ""
    output_tail: str = ""
    output_bytes: int = 0
    output_limit: bool = False
    wall_timeout: bool = False
    swept: int = 0
    infra_error: str | None = None
    attempts: int = 1
    worker: int = -1

    @property
    def cpu_limited(self) -> bool:
        """The candidate was stopped by its CPU budget (SIGXCPU, or SIGKILL at the hard limit)."""
        c = self.candidate
        if c is None or c.signal is None:
            return False
        if c.signal == signal.SIGXCPU:
            return True
        return c.signal == signal.SIGKILL and c.cpu_s >= self.limits.effective_cpu_s - 0.05

    @property
    def crashed_by_signal(self) -> bool:
        c = self.candidate
        return c is not None and c.signal is not None and not self.cpu_limited

    @property
    def outcome(self) -> str:
        """Program jobs: ok | error | timeout | memory | output_limit | crashed | infra_error (informative only)."""
        if self.infra_error:
            return "infra_error"
        if self.output_limit:
            return "output_limit"
        if self.wall_timeout or self.cpu_limited:
            return "timeout"
        c = self.candidate
        if c is None:
            return "crashed"
        if c.exit_code == 0:
            return "ok"
        if "MemoryError" in self.output_tail:
            return "memory"
        if c.signal is not None:
            return "crashed"
        return "error"


# --------------------------------------------------------------------------------------------- isolation


@dataclass(frozen=True)
class SandboxConfig:
    """Pool-level settings (the per-job ones live in ``Limits``)."""

    isolation: Isolation = "bwrap"
    python: str = "/usr/bin/python3"
    bwrap: str | None = None
    sandbox_uid: int | None = None
    sandbox_gid: int | None = None
    tmp_mb: int = 64
    shm_mb: int = 16
    start_timeout_s: float = 30.0

    def run_as(self) -> tuple[int, int] | None:
        """(uid, gid) to drop to before starting bwrap, or None to keep the caller's (already unprivileged)."""
        if os.geteuid() != 0:
            if self.sandbox_uid not in (None, os.geteuid()):
                raise SandboxUnavailableError(
                    f"sandbox_uid={self.sandbox_uid} needs root to switch to; running as uid {os.geteuid()} "
                    "(which is unprivileged already): leave sandbox_uid unset"
                )
            return None
        uid = DEFAULT_SANDBOX_UID if self.sandbox_uid is None else self.sandbox_uid
        if uid == 0:
            raise SandboxUnavailableError("sandbox_uid must not be 0: a sandbox started by root maps to host root")
        gid = self.sandbox_gid if self.sandbox_gid is not None else uid
        return uid, gid


_FEATURES: dict[str, frozenset[str]] = {}
_PROBED: dict[SandboxConfig, str] = {}
_PROBE_LOCK = threading.Lock()


def _bwrap_features(bwrap: str) -> frozenset[str]:
    """Options this bwrap build supports (``--disable-userns`` is 0.8+, ``--size`` 0.5+)."""
    if bwrap not in _FEATURES:
        with tempfile.TemporaryFile() as out:
            subprocess.run([bwrap, "--help"], stdout=out, stderr=subprocess.STDOUT, timeout=30, check=False)
            out.seek(0)
            text = out.read(1 << 16).decode("utf-8", "replace")
        _FEATURES[bwrap] = frozenset(opt for opt in ("--disable-userns", "--size", "--as-pid-1") if opt in text)
    return _FEATURES[bwrap]


def find_bwrap(config: SandboxConfig) -> str:
    path = config.bwrap or shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None)
    if not path or not os.access(path, os.X_OK):
        raise SandboxUnavailableError(
            f"bubblewrap (bwrap) was not found{f' at {config.bwrap}' if config.bwrap else ''}; the sandboxed_tests "
            "verifier refuses to run generated code without isolation. Install it: `apt-get install bubblewrap` "
            "(Debian/Ubuntu), `dnf install bubblewrap` (Fedora/RHEL) or `pacman -S bubblewrap` (Arch). "
            "To run WITHOUT isolation on a disposable machine only, pass isolation='none'."
        )
    return path


def bwrap_argv(config: SandboxConfig, bwrap: str, command: Sequence[str]) -> list[str]:
    """The bubblewrap command line for one sandbox running ``command``."""
    features = _bwrap_features(bwrap)
    if "--as-pid-1" not in features:
        raise SandboxUnavailableError(f"{bwrap} does not support --as-pid-1; install bubblewrap >= 0.3")
    argv = [bwrap, "--unshare-all", "--unshare-user"]
    if "--disable-userns" in features:
        argv.append("--disable-userns")
    argv += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv",
             "--hostname", "sandbox"]
    for key, value in sandbox_env().items():
        argv += ["--setenv", key, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    sized = "--size" in features
    if sized:
        argv += ["--size", str(config.shm_mb << 20)]
    argv += ["--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if sized:
        argv += ["--size", str(config.tmp_mb << 20)]
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/", "--", *command]
    return argv


def sandbox_env() -> dict[str, str]:
    # A fixed hash seed makes set/dict-of-str iteration order, and therefore verdicts, reproducible.
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def _python_command(config: SandboxConfig, payload: Sequence[str]) -> list[str]:
    # -s -S: no user or system site-packages (standard library only); -B: never write .pyc files.
    return [config.python, "-s", "-S", "-B", *payload]


def _bounded_run(argv: list[str], run_as: tuple[int, int] | None, timeout: float) -> tuple[int, str]:
    """Run a trusted probe; read at most 16 KiB of its combined output."""
    kwargs: dict[str, Any] = {}
    if run_as is not None:
        kwargs.update(user=run_as[0], group=run_as[1], extra_groups=[])
    with tempfile.TemporaryFile() as out:
        try:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                env=sandbox_env(), timeout=timeout, check=False, **kwargs).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        except OSError as e:
            return -1, str(e)
        out.seek(0)
        return rc, out.read(16 << 10).decode("utf-8", "replace")


def check_isolation(config: SandboxConfig | None = None) -> str:
    """Raise ``SandboxUnavailableError`` unless sandboxes can start here; return the bwrap path ("" if none).

    The probe starts one real sandbox with the exact flags the pool uses; the result is cached per config.
    """
    config = config or SandboxConfig()
    if config.isolation not in ("bwrap", "none"):
        raise ValueError(f"isolation must be 'bwrap' or 'none', got {config.isolation!r}")
    if not os.access(config.python, os.X_OK):
        raise SandboxUnavailableError(f"{config.python} not found: the sandbox runs the system Python 3 "
                                      "(`apt-get install python3`)")
    run_as = config.run_as()
    if config.isolation == "none":
        return ""
    if not config.python.startswith("/usr/"):
        raise SandboxUnavailableError(f"python {config.python!r} must live under /usr: only /usr is bound into the sandbox")
    with _PROBE_LOCK:
        if config in _PROBED:
            return _PROBED[config]
        bwrap = find_bwrap(config)
        argv = bwrap_argv(config, bwrap, _python_command(config, ["-c", "import sys; sys.stdout.write('sandbox-ok')"]))
        rc, text = _bounded_run(argv, run_as, timeout=config.start_timeout_s)
        if rc != 0 or "sandbox-ok" not in text:
            raise SandboxUnavailableError(_explain_probe_failure(bwrap, rc, text))
        _PROBED[config] = bwrap
        return bwrap


def _explain_probe_failure(bwrap: str, rc: int, text: str) -> str:
    detail = text.strip()[-2000:] or f"exit status {rc}"
    lowered = text.lower()
    if any(s in lowered for s in ("namespace", "uid map", "operation not permitted", "permission denied")):
        hint = (
            "unprivileged user namespaces look disabled or restricted. Enable them: "
            "`sysctl -w user.max_user_namespaces=15000` (and on Debian <= 11 `sysctl -w "
            "kernel.unprivileged_userns_clone=1`); on Ubuntu >= 23.10 AppArmor blocks them: "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or install an AppArmor profile for bwrap; "
            "inside Docker, run the container with `--security-opt seccomp=unconfined --security-opt "
            "apparmor=unconfined` or use a VM."
        )
    else:
        hint = "check that bwrap and /usr/bin/python3 work: `bwrap --ro-bind /usr /usr --unshare-all -- /usr/bin/python3 -c pass`."
    return (
        f"bubblewrap ({bwrap}) could not start a sandbox: {detail}\nHint: {hint}\n"
        "The sandboxed_tests verifier refuses to run generated code without isolation; isolation='none' "
        "runs it unsafely (disposable machines only)."
    )


# --------------------------------------------------------------------------------------------- one sandbox


class _Sandbox:
    """One worker process and its five pipes; used by exactly one pool thread."""

    def __init__(self, config: SandboxConfig, index: int):
        self.config = config
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.fds: dict[str, int] = {}
        self.stderr = bytearray()
        self.jobs_done = 0
        self.recycle_reason: str | None = None
        self._results = bytearray()
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        ctl_r, ctl_w = os.pipe()
        rep_r, rep_w = os.pipe()
        tin_r, tin_w = os.pipe()
        tout_r, tout_w = os.pipe()
        err_r, err_w = os.pipe()
        child = (ctl_r, rep_w, tin_r, tout_w)
        cfg = json.dumps({"fds": {"ctl": ctl_r, "reply": rep_w, "tests": tin_r, "results": tout_w}})
        command = _python_command(self.config, ["-c", WORKER_SOURCE, cfg])
        if self.config.isolation == "bwrap":
            argv = bwrap_argv(self.config, find_bwrap(self.config), command)
        else:
            argv = command
        kwargs: dict[str, Any] = {}
        run_as = self.config.run_as()
        if run_as is not None:
            kwargs.update(user=run_as[0], group=run_as[1], extra_groups=[])
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_w, pass_fds=child,
                close_fds=True, cwd="/", env=sandbox_env(), start_new_session=True, **kwargs,
            )
        except BaseException:
            for fd in (ctl_w, rep_r, tin_w, tout_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (*child, err_w):
                os.close(fd)
        self.fds = {"ctl": ctl_w, "reply": rep_r, "tests": tin_w, "results": tout_r, "stderr": err_r}
        for fd in self.fds.values():
            os.set_blocking(fd, False)
        self.stderr.clear()
        self.jobs_done = 0
        self.recycle_reason = None
        frames, _ = self._exchange({}, time.monotonic() + self.config.start_timeout_s)
        if not frames or not frames[0].get("hello"):
            why = self._death_note("did not start")
            self.stop()
            raise SandboxUnavailableError(f"sandbox worker {self.index} {why}")
        if self.config.isolation == "bwrap" and not frames[0].get("pid1"):
            self.stop()
            raise SandboxUnavailableError("sandbox worker is not PID 1 of its namespace; refusing to run")
        logger.debug("sandbox %d started (host pid %d)", self.index, self.proc.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        ctl = self.fds.pop("ctl", None)
        if ctl is not None:
            os.close(ctl)  # EOF tells a healthy worker to sweep and exit
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()  # the sandbox's PID 1 dies with bwrap (--die-with-parent), taking the namespace along
                proc.wait()
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def kill(self) -> None:
        """Hard stop (hung or misbehaving worker)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def _death_note(self, what: str) -> str:
        rc = self.proc.poll() if self.proc is not None else None
        err = self.stderr.decode("utf-8", "replace").strip()[-1500:]
        return f"{what} (exit status {rc}){': ' + err if err else ''}"

    def _exchange(self, out: dict[int, bytearray], deadline: float) -> tuple[list[dict], str | None]:
        """Write ``out`` and read until one reply frame arrives; return (frames, problem)."""
        reply_buf = bytearray()
        self._results = bytearray()
        poller = select.poll()
        for name in ("reply", "results", "stderr"):
            poller.register(self.fds[name], select.POLLIN)
        for fd in out:
            poller.register(fd, select.POLLOUT)
        open_reads = {self.fds["reply"], self.fds["results"], self.fds["stderr"]}
        while True:
            try:
                frames, _used = parse_frames(reply_buf, _MAX_REPLY_BYTES)
            except FrameError as e:
                return [], f"worker sent a malformed reply ({e})"
            if frames:
                self._drain_results()
                return frames, None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], "worker did not answer before the deadline"
            for fd, ev in poller.poll(max(1, int(remaining * 1000))):
                if fd in out:
                    try:
                        n = os.write(fd, out[fd][: 1 << 16])
                        del out[fd][:n]
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, OSError):
                        poller.unregister(fd)
                        out.pop(fd)
                        if fd == self.fds["ctl"]:
                            return [], "worker closed its control pipe"
                        continue
                    if not out[fd]:
                        poller.unregister(fd)
                        out.pop(fd)
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if fd == self.fds["reply"]:
                    if not data:
                        return [], "worker exited"
                    reply_buf += data
                    if len(reply_buf) > _MAX_REPLY_BYTES + 8:
                        return [], "worker reply too large"
                elif fd == self.fds["results"]:
                    if not data:
                        poller.unregister(fd)
                        open_reads.discard(fd)
                    else:
                        self._results += data
                        if len(self._results) > _worker.MAX_REPORT_BYTES + 8:
                            return [], "tester report too large"
                else:
                    if not data:
                        poller.unregister(fd)
                        open_reads.discard(fd)
                    else:
                        self.stderr += data
                        del self.stderr[:-_MAX_STDERR_KEEP]

    def _drain_results(self) -> None:
        fd = self.fds["results"]
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data or len(self._results) > _worker.MAX_REPORT_BYTES + 8:
                return
            self._results += data

    def run(self, job: Job, limits: Limits) -> JobResult:
        t0 = time.monotonic()
        job_id = next(self._ids)
        tag = secrets.token_hex(16)
        frame = {"id": job_id, "kind": job.kind, "sources": [list(s) for s in job.sources], "limits": limits.to_wire()}
        out = {self.fds["ctl"]: bytearray(encode_frame(frame))}
        if job.kind == "tests":
            out[self.fds["tests"]] = bytearray(encode_frame({"tag": tag, "job": job_id, "spec": job.spec}))
        frames, problem = self._exchange(out, t0 + limits.effective_wall_s + REPLY_GRACE_S)
        result = JobResult(kind=job.kind, limits=limits, worker=self.index)
        if problem is not None or frames[0].get("job") != job_id:
            result.infra_error = self._death_note(problem or "worker answered for another job")
            result.host_wall_s = time.monotonic() - t0
            self.kill()
            return result
        reply = frames[0]
        self.jobs_done += 1
        result.candidate = ProcessStatus.from_wire(reply.get("candidate"))
        result.tester = ProcessStatus.from_wire(reply.get("tester"))
        result.wall_s = float(reply["wall_s"])
        result.output = reply["output"]
        result.output_tail = reply["output_tail"]
        result.output_bytes = int(reply["output_bytes"])
        result.output_limit = bool(reply["output_limit"])
        result.wall_timeout = bool(reply["wall_timeout"])
        result.swept = int(reply["swept"])
        if reply.get("dirty"):
            self.recycle_reason = f"job left state behind: {reply['dirty']}"
        if job.kind == "tests":
            result.report = self._take_report(tag, job_id)
            if result.report is None:
                # The tester died before reporting; the tests/results pipes may hold a partial frame.
                self.recycle_reason = self.recycle_reason or "tester ended without a complete report"
        if any(out.values()):
            self.recycle_reason = self.recycle_reason or "job input not fully consumed"
        result.host_wall_s = time.monotonic() - t0
        return result

    def _take_report(self, tag: str, job_id: int) -> dict | None:
        try:
            frames, used = parse_frames(self._results, _worker.MAX_REPORT_BYTES)
        except FrameError:
            return None
        if len(frames) != 1 or used != len(self._results):
            return None
        report = frames[0]
        if not isinstance(report, dict) or report.get("tag") != tag or report.get("job") != job_id:
            return None
        if not report.get("completed"):
            return None
        return report


# --------------------------------------------------------------------------------------------- the pool


class SandboxPool:
    """N pre-started sandboxes serving jobs from a shared queue; thread-safe ``submit``/``map``.

    >>> with SandboxPool(workers=1) as pool:               # doctest: +SKIP
    ...     pool.run(Job.program("print(6 * 7)")).output
    '42\\n'
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        limits: Limits | None = None,
        isolation: Isolation = "bwrap",
        sandbox_uid: int | None = None,
        sandbox_gid: int | None = None,
        python: str = "/usr/bin/python3",
        bwrap: str | None = None,
        tmp_mb: int = 64,
        shm_mb: int = 16,
        recycle_after: int = 1000,
        start_timeout_s: float = 30.0,
    ):
        self.config = SandboxConfig(isolation=isolation, python=python, bwrap=bwrap, sandbox_uid=sandbox_uid,
                                    sandbox_gid=sandbox_gid, tmp_mb=tmp_mb, shm_mb=shm_mb,
                                    start_timeout_s=start_timeout_s)
        check_isolation(self.config)
        if isolation == "none":
            logger.warning(UNSAFE_WARNING)
        self.limits = limits or Limits()
        self.workers = workers or os.cpu_count() or 1
        self.recycle_after = recycle_after
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sandboxes: list[_Sandbox | None] = [None] * self.workers
        self._closed = False
        ready = [threading.Event() for _ in range(self.workers)]
        errors: list[BaseException | None] = [None] * self.workers
        self._threads = [
            threading.Thread(target=self._serve, args=(i, ready[i], errors), name=f"sandbox-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        for event in ready:
            event.wait()
        failed = next((e for e in errors if e is not None), None)
        self._finalizer = weakref.finalize(self, SandboxPool._shutdown, self._queue, self._threads)
        if failed is not None:
            self.close()
            raise failed

    # -- public API -----------------------------------------------------------------------------------

    def submit(self, job: Job) -> concurrent.futures.Future[JobResult]:
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        fut: concurrent.futures.Future[JobResult] = concurrent.futures.Future()
        self._queue.put((job, fut))
        return fut

    def run(self, job: Job) -> JobResult:
        return self.submit(job).result()

    def map(self, jobs: Iterable[Job]) -> list[JobResult]:
        """Run jobs concurrently on all workers; results in input order."""
        return [f.result() for f in [self.submit(j) for j in jobs]]

    def worker_pids(self) -> list[int]:
        """Host pids of the running sandbox processes (bwrap, or the worker in unsafe mode)."""
        return [s.pid for s in self._sandboxes if s is not None and s.pid is not None]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _shutdown(q: queue.SimpleQueue, threads: list[threading.Thread]) -> None:
        for _ in threads:
            q.put(None)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=30)

    def _serve(self, index: int, ready: threading.Event, errors: list[BaseException | None]) -> None:
        # The sandbox is started from this thread on purpose: bwrap's --die-with-parent follows the
        # thread that forked it, so the sandbox must belong to a thread that lives as long as the pool.
        sandbox = _Sandbox(self.config, index)
        self._sandboxes[index] = sandbox
        try:
            sandbox.start()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor, which re-raises it
            errors[index] = e
            ready.set()
            return
        ready.set()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                job, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(self._execute(sandbox, job))
                except BaseException as e:  # noqa: BLE001 - delivered to the caller through the future
                    fut.set_exception(e)
                if not sandbox.alive:
                    # Restart a recycled sandbox now, while idle, rather than on the next job's clock.
                    try:
                        sandbox.stop()
                        sandbox.start()
                    except Exception as e:  # noqa: BLE001 - retried (and then raised to the caller) on the next job
                        logger.warning("sandbox %d could not restart (will retry on the next job): %s", index, e)
        finally:
            sandbox.stop()

    def _execute(self, sandbox: _Sandbox, job: Job) -> JobResult:
        limits = job.limits or self.limits
        result: JobResult | None = None
        for attempt in (1, 2):
            if not sandbox.alive:
                sandbox.stop()
                sandbox.start()
            result = sandbox.run(job, limits)
            result.attempts = attempt
            if result.infra_error is None:
                reason = sandbox.recycle_reason
                if reason is None and sandbox.jobs_done >= self.recycle_after:
                    reason = f"recycled after {sandbox.jobs_done} jobs"
                if reason is not None:
                    logger.debug("sandbox %d restarting: %s", sandbox.index, reason)
                    sandbox.stop()
                return result
            logger.warning("sandbox %d failed on a job (attempt %d): %s", sandbox.index, attempt, result.infra_error)
        assert result is not None
        return result


__all__ = [
    "DEFAULT_SANDBOX_UID",
    "UNSAFE_WARNING",
    "Job",
    "JobResult",
    "Limits",
    "ProcessStatus",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailableError",
    "bwrap_argv",
    "check_isolation",
]
