"""The sandbox layer (``selfimprove.verifiers.sandbox``): containment, pool behaviour, wire format.

Every test runs real bubblewrap sandboxes (no mocks). The containment suite gives each adversary a task
(``add(a, b)``) whose answer is correct *only if the attack worked*, so a contained attack must end in a
non-passing verdict; each row also checks the host side effect and that no process outlives the job.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from selfimprove.types import Completion, Problem
from selfimprove.verifiers.code import SandboxedTestsVerifier
from selfimprove.verifiers.sandbox import (
    Job,
    Limits,
    SandboxConfig,
    SandboxPool,
    SandboxUnavailableError,
    bwrap_argv,
    check_isolation,
)
from selfimprove.verifiers.sandbox._worker import (
    CodecError,
    FrameError,
    decode_value,
    encode_frame,
    encode_value,
    parse_frames,
)

HAVE_BWRAP = bool(shutil.which("bwrap") or os.path.exists("/usr/bin/bwrap"))
#: Tests that start sandboxes skip without bubblewrap; ``test_host_python_and_bwrap_present`` then fails.
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed (apt-get install bubblewrap)")
ROOT = os.geteuid() == 0
#: A uid no account uses, so "processes of the sandbox uid" means exactly ours.
TEST_UID = 64977 if ROOT else None
WORKERS = 2
REPO = Path(__file__).resolve().parents[2]
FAST = {"timeout_s": 1, "wall_timeout_s": 4, "memory_mb": 256, "max_processes": 8, "workers": WORKERS,
        "sandbox_uid": TEST_UID}


def _existing(procs) -> list[psutil.Process]:
    """Processes that still exist; zombies count (``is_running`` is true for them)."""
    return [p for p in procs if p.is_running()]


# Processes this pytest process already had before the module started (a Prefect harness server or an MLflow
# server of an earlier test module, a multiprocessing helper): not ours to account for.
_BEFORE: set[tuple[int, float]] = set()


def _key(p: psutil.Process) -> tuple[int, float]:
    try:
        return (p.pid, p.create_time())
    except psutil.NoSuchProcess:
        return (p.pid, -1.0)


_MODULE_START: list[float] = []


def sandbox_processes() -> list[psutil.Process]:
    """Everything this module started: descendants of this test process (plus, as root, anything of the test uid)
    created since the module began. Processes that other test modules left running in this pytest process (a
    Prefect temporary server, say) were there before and are not ours to judge."""
    since = _MODULE_START[0] if _MODULE_START else 0.0
    procs = {p.pid: p for p in psutil.Process().children(recursive=True) if _key(p) not in _BEFORE}
    if TEST_UID is not None:
        for p in psutil.process_iter(["uids"]):
            if p.info["uids"] and p.info["uids"].real == TEST_UID:
                procs[p.pid] = p
    return [p for p in _existing(procs.values()) if _key(p)[1] < 0 or _key(p)[1] >= since]


def leftovers() -> list[psutil.Process]:
    """Processes that are neither a sandbox launcher (bwrap, child of this process) nor its worker."""
    me = os.getpid()
    workers = set()
    for child in psutil.Process().children():
        workers.add(child.pid)
        try:
            if child.name() == "bwrap":
                workers |= {g.pid for g in child.children()}
        except psutil.NoSuchProcess:
            continue
    return [p for p in sandbox_processes() if p.pid not in workers and p.pid != me]


def pool_processes(pool: SandboxPool) -> list[psutil.Process]:
    procs = []
    for pid in pool.worker_pids():
        try:
            top = psutil.Process(pid)
            procs += [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return procs


def assert_gone(procs: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 5
    while _existing(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _existing(procs) == [], "processes survived closing the pool"


def assert_no_leftovers() -> None:
    """Nothing a job started survives it (zombies included)."""
    deadline = time.monotonic() + 5
    while True:
        extra = leftovers()
        if not extra:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes outlived their job: {[(p.pid, p.name(), p.status()) for p in extra]}")
        time.sleep(0.05)


@pytest.fixture(scope="module", autouse=True)
def nothing_survives_the_module():
    """Set up first, torn down last: once every pool of this module is closed, nothing of ours remains."""
    _BEFORE.update(_key(p) for p in psutil.Process().children(recursive=True))
    _MODULE_START.append(time.time() - 1.0)  # create_time has clock-tick resolution
    yield
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


@pytest.fixture(scope="module")
def verifier():
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    v = SandboxedTestsVerifier(**FAST)
    yield v
    last = pool_processes(v.pool)
    v.close()
    assert_gone(last)


ADD = Problem(
    id="adversary/add",
    prompt="Write add(a, b).",
    tests={"format": "asserts", "asserts": ["assert add(1, 2) == 3", "assert add(-5, 5) == 0", "assert add(7, 8) == 15"],
           "setup": "", "imports": []},
)


def judge(v: SandboxedTestsVerifier, code: str, problem: Problem = ADD):
    [verdict] = v.verify({problem.id: problem}, [Completion(id=f"{problem.id}#0", problem_id=problem.id, round=0,
                                                            sample_idx=0, text=code)])
    return verdict


def judge_with_result(v: SandboxedTestsVerifier, code: str, monkeypatch: pytest.MonkeyPatch):
    """``judge``, plus the raw ``JobResult`` the verdict was classified from (which limit stopped the job)."""
    futures = []
    real_submit = v.pool.submit

    def submit(job):
        futures.append(real_submit(job))
        return futures[-1]

    monkeypatch.setattr(v.pool, "submit", submit)
    verdict = judge(v, code)
    [fut] = futures
    return verdict, fut.result()


# --------------------------------------------------------------------------------------------- containment


class Listener:
    """A loopback TCP server that records every connection it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.seen.append(conn.recv(1024) or b"<connected>")
            except OSError:
                self.seen.append(b"<connected>")
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


def test_infinite_loop_times_out(verifier):
    v = judge(verifier, "def add(a, b):\n    while True:\n        pass\n")
    assert (v.passed, v.status) == (False, "timeout")
    assert "CPU limit" in v.reason
    assert_no_leftovers()


def test_memory_bomb_is_stopped(verifier):
    code = ("def add(a, b):\n    hog = []\n    for _ in range(4096):\n        hog.append(bytearray(1 << 20))\n"
            "    return a + b\n")
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "memory")
    assert_no_leftovers()


def test_bounded_fork_bomb_hits_the_process_limit(verifier):
    code = """
import os, time
def add(a, b):
    n = 0
    try:
        for _ in range(200):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError:
        pass
    return a + b if n == 200 else n
"""
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "fail")
    forks = int(v.details["tests"][0]["observed"][0].rsplit("-> ", 1)[1])
    assert 0 < forks <= FAST["max_processes"]  # EAGAIN from RLIMIT_NPROC, which root would have ignored
    assert_no_leftovers()


def test_ten_gigabyte_file_is_bounded(verifier):
    code = """
def add(a, b):
    written = 0
    try:
        with open("big.bin", "wb") as f:
            for _ in range(10 * 1024):
                f.write(b"x" * (1 << 20))
                written += 1
    except OSError:
        pass
    return a + b if written >= 10 * 1024 else written
"""
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "fail")
    assert v.details["tests"][0]["observed"][0].endswith("-> 16")  # 16 MiB: RLIMIT_FSIZE
    assert_no_leftovers()


def test_gigabyte_of_stdout_is_cut_off(verifier, monkeypatch):
    v, r = judge_with_result(verifier, "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n"
                                       "def add(a, b):\n    return a + b\n", monkeypatch)
    assert (v.passed, v.status) == (False, "output_limit")
    # Cut off at the output limit, not left to run into the wall-clock limit, and read no further than the
    # limit plus the pipe's last chunks: 1 MiB and a little of the gigabyte, never the rest of it.
    assert r.output_limit and not r.wall_timeout
    assert (1 << 20) < r.output_bytes <= (1 << 20) + (1 << 18), r.output_bytes
    assert psutil.Process().memory_info().rss < 2 << 30  # the host never buffered the flood
    assert_no_leftovers()


def test_network_to_host_loopback_is_unreachable(verifier):
    listener = Listener()
    try:
        code = f"""
import socket
def add(a, b):
    try:
        s = socket.create_connection(("127.0.0.1", {listener.port}), timeout=1)
        s.sendall(b"exfiltrated")
        return a + b
    except OSError as e:
        return str(e)
"""
        v = judge(verifier, code)
        time.sleep(0.3)
        assert (v.passed, v.status) == (False, "fail")
        assert "refused" in v.details["tests"][0]["observed"][0] or "unreachable" in v.details["tests"][0]["observed"][0]
        assert listener.seen == []
    finally:
        listener.close()
    assert_no_leftovers()


def test_host_secret_file_is_not_readable(verifier, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("api-key-5f2b")
    secret.chmod(0o644)  # readable by anyone on the host: only the mount namespace keeps it out
    tmp_path.chmod(0o755)
    code = f"""
import os
def add(a, b):
    found = []
    for path in ({str(secret)!r}, "/etc/shadow", "/root/.bashrc", {str(REPO / "pyproject.toml")!r}):
        try:
            found.append(open(path).read())
        except OSError:
            pass
    return a + b if found else sorted(os.listdir("/"))
"""
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "fail")
    observed = v.details["tests"][0]["observed"][0]
    assert "api-key" not in observed and "etc" not in observed and "root" not in observed
    assert_no_leftovers()


def test_deleting_host_files_fails(verifier, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    victim.chmod(0o777)
    tmp_path.chmod(0o777)
    code = f"""
import os, shutil
def add(a, b):
    for path in ({str(victim)!r}, {str(REPO)!r}, os.getcwd(), "/usr/lib/python3"):
        shutil.rmtree(path, ignore_errors=True)
    return a + b if not os.path.exists({str(victim / "data.txt")!r}) and os.path.exists("/usr") else None
"""
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "fail")
    assert (victim / "data.txt").read_text() == "keep me"
    assert (REPO / "pyproject.toml").exists()
    assert_no_leftovers()


def test_killing_the_parent_and_worker_does_not_work(verifier):
    pids_before = verifier.pool.worker_pids()
    code = """
import os, signal, time
def add(a, b):
    for target in (os.getppid(), 1):
        for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGINT):
            try:
                os.kill(target, sig)
            except OSError:
                pass
    time.sleep(0.1)
    try:
        os.kill(1, 0)
        return "worker still alive"
    except OSError:
        return a + b
"""
    v = judge(verifier, code)
    assert (v.passed, v.status) == (False, "fail")
    assert v.details["attempts"] == 1
    assert verifier.pool.worker_pids() == pids_before  # no restart was even needed
    assert judge(verifier, "def add(a, b):\n    return a + b\n").passed
    assert_no_leftovers()


def test_killing_everything_in_the_sandbox_cannot_pass(verifier):
    v = judge(verifier, "import os, signal\ndef add(a, b):\n    os.kill(-1, signal.SIGKILL)\n    return a + b\n")
    assert not v.passed and v.status == "fail"
    assert "without a report" in v.reason
    assert_no_leftovers()


def test_daemon_does_not_outlive_its_job(verifier):
    plant = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(3000):
            open("/tmp/daemon-alive", "w").write(str(time.time()))
            time.sleep(0.01)
        os._exit(0)
    os._exit(0)
def add(a, b):
    return a - b
"""
    assert judge(verifier, plant).status == "fail"
    assert_no_leftovers()
    time.sleep(0.2)
    # A later job would see the daemon's marker (or its process) if it had survived.
    probe = """
import os
def add(a, b):
    alive = os.path.exists("/tmp/daemon-alive") or len([p for p in os.listdir("/proc") if p.isdigit()]) > 3
    return a + b if alive else None
"""
    for _ in range(2 * WORKERS):
        assert judge(verifier, probe).status == "fail"
    assert_no_leftovers()


def test_process_holding_the_output_pipe_is_swept_promptly(verifier, monkeypatch):
    code = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    sys.stdout.write("holding stdout\\n"); sys.stdout.flush()
    time.sleep(60)
    os._exit(0)
def add(a, b):
    return a - b
"""
    v, r = judge_with_result(verifier, code, monkeypatch)
    assert v.status == "fail"  # a job that waited for EOF would end at the wall deadline: 'timeout'
    assert not r.wall_timeout  # not the wall deadline: the job ended when its tester did, no wait for EOF
    assert v.details.get("swept_processes", 0) >= 1
    assert_no_leftovers()


def test_stopping_every_process_ends_in_timeout(verifier):
    v = judge(verifier, "import os, signal\ndef add(a, b):\n    os.kill(-1, signal.SIGSTOP)\n    return a + b\n")
    assert (v.passed, v.status) == (False, "timeout")
    assert_no_leftovers()


def test_sleeping_job_hits_the_wall_limit(verifier):
    v = judge(verifier, "import time\ndef add(a, b):\n    time.sleep(60)\n    return a + b\n")
    assert (v.passed, v.status) == (False, "timeout")
    assert "wall-clock" in v.reason
    assert_no_leftovers()


# --------------------------------------------------------------------------------------------- what a job sees


@pytest.fixture(scope="module")
def pool():
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    with SandboxPool(workers=1, limits=Limits(cpu_s=2, wall_s=5, memory_mb=256), sandbox_uid=TEST_UID) as p:
        yield p


def test_sandbox_view_is_minimal(pool):
    code = """
import json, os
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print(json.dumps({
    "root": sorted(os.listdir("/")),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "env": sorted(os.environ),
    "stdin": os.read(0, 10).decode(),
    "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else [],
}))
"""
    r = pool.run(Job.program(code))
    assert r.outcome == "ok", r.output
    import json

    seen = json.loads(r.output)
    assert set(seen["root"]) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    assert len(seen["pids"]) == 2  # the worker (PID 1) and this job
    assert seen["uid"] == (TEST_UID if ROOT else os.geteuid())
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"
    assert set(seen["env"]) <= {"HOME", "LANG", "PATH", "PWD", "PYTHONHASHSEED", "TMPDIR"}
    assert seen["stdin"] == ""


@pytest.mark.parametrize(
    ("name", "code", "expect"),
    [
        ("write /usr", "open('/usr/lib/python3/evil.pth', 'w')", "Read-only file system"),
        ("write root", "open('/planted', 'w')", "Read-only file system"),
        ("write /dev", "open('/dev/planted', 'w')", "Read-only file system"),
        ("new user namespace", ("import subprocess, sys\nr = subprocess.run(['unshare', '-U', 'true'])\n"
                                "sys.exit('userns created' if r.returncode == 0 else 'refused')"), "refused"),
        ("worker memory", "open('/proc/1/mem', 'rb').read(1)", "Permission denied"),
        ("worker fds", "import os\nos.listdir('/proc/1/fd')", "Permission denied"),
        ("fill /tmp", "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))", "File too large"),
    ],
)
def test_job_cannot_escape_the_sandbox(pool, name, code, expect):
    r = pool.run(Job.program(code))
    assert r.outcome != "ok", f"{name}: {r.output}"
    assert expect in r.output, f"{name}: {r.output}"


def test_tmp_is_wiped_between_jobs(pool):
    assert pool.run(Job.program("open('/tmp/left-behind', 'w').write('x')\nopen('/dev/shm/x', 'w')")).outcome == "ok"
    r = pool.run(Job.program("import os\nprint(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'))"))
    assert r.output.strip() == "['job'] []"


def test_program_outcomes(pool):
    assert pool.run(Job.program("raise SystemExit(3)")).candidate.exit_code == 3
    assert pool.run(Job.program("import os\nos.abort()")).outcome == "crashed"
    assert pool.run(Job.program("1/0")).outcome == "error"


# --------------------------------------------------------------------------------------------- pool behaviour


@needs_bwrap
def test_worker_crash_is_an_infra_error_retried_in_a_fresh_worker():
    with SandboxPool(workers=1, limits=Limits(cpu_s=2, wall_s=10), sandbox_uid=TEST_UID) as p:
        first = pool_processes(p)
        [old] = p.worker_pids()
        fut = p.submit(Job.program("import time\ntime.sleep(1.0)\nprint('done')"))
        time.sleep(0.4)
        os.kill(old, signal.SIGKILL)  # the whole sandbox dies with bwrap (--die-with-parent)
        r = fut.result(timeout=30)
        assert r.attempts == 2 and r.infra_error is None and r.output == "done\n"
        [new] = p.worker_pids()
        assert new != old
        assert_gone(first)  # the killed sandbox took its whole namespace along
        assert_no_leftovers()
        last = pool_processes(p)
    assert_gone(last)


@needs_bwrap
def test_workers_are_recycled_and_leave_no_zombies():
    with SandboxPool(workers=2, recycle_after=3, sandbox_uid=TEST_UID) as p:
        pids = set()
        for r in p.map([Job.program("print(1)")] * 20):
            assert r.outcome == "ok"
        for _ in range(4):
            pids |= set(p.worker_pids())
            p.map([Job.program("print(1)")] * 4)
        assert len(pids) > 2
        assert_no_leftovers()
        last = pool_processes(p)
    assert_gone(last)


@needs_bwrap
def test_throughput_is_pool_like():
    """Pool-like: 200 runs are forked from the same warm sandboxes, none built per run (what makes a pool
    ~300-600 runs/s unloaded where a fresh sandbox per run manages ~20). Asserted by counting sandboxes, not
    by a rate, which depends on the machine and its load; the rate is printed for information only."""
    with SandboxPool(workers=WORKERS, sandbox_uid=TEST_UID) as p:
        p.map([Job.program("pass")] * 20)
        sandboxes = p.worker_pids()
        t0 = time.perf_counter()
        results = p.map([Job.program("print(1 + 2)")] * 200)
        rate = 200 / (time.perf_counter() - t0)
        assert p.worker_pids() == sandboxes  # not one sandbox was started (or restarted) for the 200 runs
    print(f"sandbox pool: {rate:.0f} runs/s with {WORKERS} workers (information, not asserted)")
    assert all(r.output == "3\n" for r in results)
    assert len(sandboxes) == WORKERS and {r.worker for r in results} == set(range(WORKERS))  # all of them served


def test_missing_bwrap_is_refused_with_install_hint():
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap") as e:
        SandboxPool(workers=1, bwrap="/nonexistent/bwrap", sandbox_uid=TEST_UID)
    assert "isolation='none'" in str(e.value)


def test_broken_bwrap_is_refused_with_explanation(tmp_path):
    fake = tmp_path / "bwrap"
    # Behaves like bwrap on a host with user namespaces disabled: help works, sandboxes do not.
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --help ]; then echo '--as-pid-1 --size --disable-userns'; exit 0; fi\n"
                    "echo 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    with pytest.raises(SandboxUnavailableError, match="user namespaces") as e:
        check_isolation(SandboxConfig(bwrap=str(fake), sandbox_uid=TEST_UID))
    assert "refuses to run generated code without isolation" in str(e.value)


def test_root_sandbox_uid_is_refused():
    if not ROOT:
        pytest.skip("only meaningful when the caller is root")
    with pytest.raises(SandboxUnavailableError, match="must not be 0"):
        SandboxPool(workers=1, sandbox_uid=0)


@needs_bwrap
def test_bwrap_command_has_the_hardening_flags():
    argv = bwrap_argv(SandboxConfig(), "/usr/bin/bwrap", ["/usr/bin/python3"])
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--as-pid-1", "--clearenv"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--dev-bind")]
    assert all(b.startswith("/usr") or b in ("/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32") for b in binds)
    assert "--bind" not in argv and "--dev-bind" not in argv


@needs_bwrap
def test_bwrap_started_as_root_would_map_to_root_so_we_drop_first():
    if not ROOT:
        pytest.skip("only meaningful when the caller is root")
    with SandboxPool(workers=1, sandbox_uid=TEST_UID) as p:
        [pid] = p.worker_pids()
        assert psutil.Process(pid).uids().real == TEST_UID
        assert all(c.uids().real == TEST_UID for c in psutil.Process(pid).children(recursive=True))


def test_unsafe_mode_is_opt_in_and_loud(caplog, tmp_path):
    caplog.set_level("WARNING")
    v = SandboxedTestsVerifier(isolation="none", workers=1, timeout_s=2, wall_timeout_s=5, sandbox_uid=TEST_UID)
    try:
        assert "ISOLATION IS OFF" in caplog.text
        caplog.clear()
        assert judge(v, "def add(a, b):\n    return a + b\n").passed
        assert "ISOLATION IS OFF" in caplog.text  # every call, not just once
        forged = judge(v, "import os\ndef add(a, b):\n    os._exit(0)\n")
        assert forged.status == "fail"
        # The sweep still works without a PID namespace (subreaper): the daemon is gone.
        judge(v, "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                 "def add(a, b):\n    return a\n")
        time.sleep(0.2)
        assert_no_leftovers()
        last = pool_processes(v.pool)
    finally:
        v.close()
    assert_gone(last)


def test_isolation_value_is_checked():
    with pytest.raises(ValueError, match="isolation"):
        SandboxedTestsVerifier(isolation="docker")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_s"):
        Limits(cpu_s=0)
    assert Limits(cpu_s=0.3).effective_cpu_s == 1
    assert Limits(cpu_s=5).effective_wall_s == 15


def test_host_python_and_bwrap_present():
    """The canary: without working isolation the tests above skip, and this one fails, loudly."""
    assert HAVE_BWRAP, "bubblewrap is not installed: apt-get install bubblewrap (the sandbox tests were skipped)"
    assert subprocess.run(["bwrap", "--version"], stdout=subprocess.DEVNULL, check=False).returncode == 0
    assert check_isolation(SandboxConfig(sandbox_uid=TEST_UID)).endswith("bwrap")


# --------------------------------------------------------------------------------------------- wire format


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -7, 2**64 + 1, -(2**200), 10**5000, 1.5, float("inf"), -0.0, "", "héllo\ud800",
        [1, [2, [3]]], (1, "a", (None,)), {1: "a", (2, 3): [4]}, {1, 2}, frozenset({"x"}), b"\x00\xff",
        bytearray(b"ab"), 3 + 4j, range(1, 10, 3),
    ],
    ids=lambda v: type(v).__name__,  # str(10**5000) would exceed the int-to-str digit limit
)
def test_plain_values_round_trip_exactly(value):
    frames, _ = parse_frames(encode_frame(encode_value(value, None)), 1 << 30)  # through JSON, as on the wire
    back = decode_value(frames[0], None)
    assert type(back) is type(value)
    assert back == value or (math.isnan(value) and math.isnan(back))


def test_stdlib_containers_round_trip():
    import collections
    import decimal
    import fractions

    for value in (collections.Counter("abca"), collections.OrderedDict(b=1, a=2), collections.deque([1, 2], 5),
                  fractions.Fraction(3, 7), decimal.Decimal("1.10")):
        back = decode_value(encode_value(value, None), None)
        assert type(back) is type(value) and back == value
    d = collections.defaultdict(list, a=[1])
    assert decode_value(encode_value(d, None), None) == {"a": [1]}
    assert list(decode_value(encode_value({"a": 1}.keys(), None), None)) == ["a"]


def test_nan_round_trips():
    back = decode_value(encode_value(float("nan"), None), None)
    assert type(back) is float and math.isnan(back)


@pytest.mark.parametrize(
    "value",
    [type("IntSub", (int,), {"__eq__": lambda s, o: True})(3), type("AlwaysEq", (), {"__eq__": lambda s, o: True})(),
     type("StrSub", (str,), {})("x"), [type("ListSub", (list,), {})()]],
)
def test_non_plain_values_are_not_encoded(value):
    with pytest.raises(CodecError):
        encode_value(value, None)
    assert encode_value(value, lambda v: ["ref", 0, type(v).__name__]) is not None


@pytest.mark.parametrize(
    "wire",
    [
        ["zz", []], ["l", "notalist"], ["s", [["l", []]]], ["d", [[["l", []], 1]]], ["d", [[1]]], ["I", "nothex"],
        ["r", 0, 10, 0], ["Q", 1, 0], ["b", "xyz"], ["ref", 0, "X"], ["c", "1", 2], ["M", "not a number"],
        {"a": 1}, ["t"], [1, 2],
    ],
)
def test_hostile_wire_values_are_rejected(wire):
    with pytest.raises(CodecError):
        decode_value(wire, None)


def test_deeply_nested_wire_value_is_rejected():
    wire: list = ["l", []]
    for _ in range(500):
        wire = ["l", [wire]]
    with pytest.raises(CodecError):
        decode_value(wire, None)


def test_frames_parse_incrementally_and_reject_oversize():
    data = encode_frame({"a": 1}) + encode_frame([2])
    frames, used = parse_frames(data[:-1], 1 << 10)
    assert frames == [{"a": 1}] and used == len(encode_frame({"a": 1}))
    assert parse_frames(data, 1 << 10) == ([{"a": 1}, [2]], len(data))
    with pytest.raises(FrameError):
        parse_frames(encode_frame("x" * 100), 10)
