"""``sandboxed_tests``: run generated code against a problem's unit tests in a bubblewrap sandbox pool.

What: for each completion, extract the code, run it in an isolated sandbox (``verifiers.sandbox``) and
judge it against ``Problem.tests``; one ``Verdict`` per completion with status ``pass | fail | timeout |
memory | output_limit | crashed | infra_error``, a reason naming the first failing test, ``cost_s`` and
per-test details.

``Problem.tests`` schema (problem sets produce exactly these shapes):

* HumanEval: ``{"format": "humaneval", "prompt": <signature + docstring>, "test": <code defining
  check(candidate)>, "entry_point": "<name>"}``
* MBPP: ``{"format": "asserts", "asserts": ["assert f(1) == 2", ...], "setup": "<test_setup_code or ''>",
  "imports": ["import math", ...]}``, optionally ``"challenge_asserts": [...]`` (MBPP's harder extra tests,
  run after ``asserts`` unless ``challenge_tests=False``) and ``"entry_point": "<name>"`` naming the
  function under test (``Problem.meta["entry_point"]`` is used too when present).

Why the verdict cannot be forged (the protocol; details in ``sandbox/_worker.py``): inside the sandbox the
candidate's code runs in its own process C, which only ever receives call requests with *arguments*. The
tests run in a second process T that the candidate cannot read (both non-dumpable, separate memory, the
test source arrives on a pipe only T holds). Names the tests use for the code under test are bound in T to
handles; calling one sends the arguments to C and rebuilds the returned value in T from a plain-value wire
format (int, float, str, bool, None, list, tuple, dict, set, frozenset, bytes, complex, range, Fraction,
Decimal, Counter/OrderedDict/defaultdict/deque, dict views, materialised iterators), by trusted
constructors and with exact type checks. Anything else (an always-equal object, an ``int`` subclass)
comes back as an opaque handle whose comparison, truth value or attributes raise, so it fails the test.
T reports per-test tallies straight to the host on a pipe C cannot reach, in a frame carrying a per-job
random tag; the host decides the verdict from that report alone, never from an exit code or from output.
``sys.exit``, ``os._exit``, ``atexit`` hooks, exceptions, killing processes or printing fake frames can
only make a report missing or failing, never passing.

Faithfulness: the tests themselves run unchanged apart from asserts becoming recorded checks (so one
failure does not hide the rest), with Python's own comparison semantics on the rebuilt values
(``abs(x - 0.5) < 1e-6`` works, ``True == 1`` holds as in the original). HumanEval helpers come from the
trusted prompt (a completion that redefines ``encode_cyclic`` cannot change what the test calls), and the
entry point name inside ``check`` also refers to the candidate, as in the original harness. MBPP names in
an assert are resolved like this: builtins, names the test ``imports`` bind and standard-library modules
used as ``module.attr`` are evaluated in T; every other name (the function under test, classes it defines,
values made by ``setup``) lives in C. ``setup`` runs in C after the candidate (MBPP 367/927 build trees
from the candidate's ``Node`` class). If an assert uses builtins only, the function it calls on the left
is the candidate's (MBPP 126 defines ``sum``). Limits: arguments must be plain values or handles (no
lambdas passed to the candidate); a test that inspects a non-plain return value fails; the tests cannot
observe mutations the candidate makes to its arguments.

How to use::

    v = SandboxedTestsVerifier(workers=2, timeout_s=5)
    verdicts = v.verify({p.id: p for p in problems}, completions)
    v.close()

Completion extraction (``extract_code``, ``humaneval_program``): ```` ```python ```` fenced blocks (the
block defining the function under test wins), ``[BEGIN] ... [DONE]`` wrappers (MBPP few-shot format, also
quoted), full-function re-emissions (the prompt's imports and helpers are kept in front) and HumanEval
body-only continuations (prompt + completion, cut at the first top-level line if the whole does not parse).
"""

from __future__ import annotations

import ast
import builtins
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from selfimprove.options import PosInt, Strict
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import Verifier
from selfimprove.verifiers.sandbox import (
    UNSAFE_WARNING,
    Job,
    JobResult,
    Limits,
    SandboxConfig,
    SandboxPool,
    check_isolation,
)

logger = logging.getLogger(__name__)

_BUILTIN_NAMES = frozenset(dir(builtins))
_STDLIB = frozenset(sys.stdlib_module_names)
_PY_LANGS = frozenset({"", "python", "py", "python3", "py3", "pycon", "ipython"})
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from |@)", re.MULTILINE)


# --------------------------------------------------------------------------------------------- extraction


class CodeTestsConfig(Strict):
    """Options of the ``sandboxed_tests`` verifier (see docs/verifiers.md, "Sandboxed code tests")."""

    workers: PosInt | None = Field(None, description="Sandbox workers (None = one per CPU core).")
    timeout_s: float = Field(5.0, gt=0, description="CPU seconds per job.")
    wall_timeout_s: float | None = Field(None, gt=0, description="Wall-clock limit per job (None = derived).")
    memory_mb: PosInt = 1024
    max_output_bytes: PosInt = 1 << 20
    max_file_bytes: PosInt = 16 << 20
    max_processes: PosInt = 8
    isolation: Literal["bwrap", "none"] = Field("bwrap", description="'none' runs unisolated (loudly logged).")
    sandbox_uid: int | None = None
    tmp_mb: PosInt = 64
    challenge_tests: bool = True


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(code: str, name: str) -> bool:
    """True if ``code`` defines ``name`` at top level (column 0).

    >>> _defines("import os\\ndef f(x):\\n    return x", "f"), _defines("    def f(): pass", "f")
    (True, False)
    """
    return re.search(rf"^(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b", code, re.MULTILINE) is not None


def _unquote(code: str) -> str:
    """MBPP few-shot prompts show reference code inside quotes: ``[BEGIN]\\n 'def f(): ...' \\n[DONE]``."""
    stripped = code.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        inner = stripped[1:-1]
        if _parses(inner):
            return inner
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return inner
        return value if isinstance(value, str) else inner
    return code


def _trim_to_code(text: str) -> str:
    """Drop prose around code: start at the first code-looking line, then drop trailing lines until it parses."""
    if _parses(text):
        return text
    m = _CODE_START.search(text)
    if m:
        text = text[m.start():]
    lines = text.split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
        if len(lines) - end > 200:
            break
    return text


def extract_code(text: str, names: Sequence[str] = ()) -> tuple[str, str]:
    """Code in a completion and how it was found: ``begin_done`` | ``fenced`` | ``raw``.

    >>> extract_code("Sure!\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.", ["f"])
    ('def f(x):\\n    return x\\n', 'fenced')
    >>> extract_code("[BEGIN]\\n 'def f(x):\\n    return x' \\n[DONE]")
    ('def f(x):\\n    return x', 'begin_done')
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    begin, done = text.find("[BEGIN]"), text.find("[DONE]")
    if begin != -1 or done != -1:
        if begin != -1 and (done == -1 or begin < done):
            inner = text[begin + len("[BEGIN]"):done if done != -1 else None]
        else:  # the prompt ended with [BEGIN]; the model wrote code, then [DONE] (and maybe more shots)
            inner = text[:done]
        if "```" in inner:
            inner, _ = extract_code(inner, names)
        return _unquote(inner.strip("\n")), "begin_done"
    blocks = _FENCE.findall(text)
    if blocks:
        python = [body for lang, body in blocks if lang.lower() in _PY_LANGS] or [body for _, body in blocks]
        for body in python:
            if any(_defines(body, n) for n in names):
                return body, "fenced"
        return python[0], "fenced"
    return text, "raw"


def _indent_body(code: str) -> str:
    lines = [ln for ln in code.split("\n") if ln.strip()]
    if lines and all(not ln[0].isspace() for ln in lines[:1]) and not any(ln[0].isspace() for ln in lines):
        return "\n".join(("    " + ln) if ln.strip() else ln for ln in code.split("\n"))
    return code


def _cut_at_toplevel(body: str) -> str:
    """Codex-style stop: keep the body up to the first non-indented line after it."""
    lines = body.split("\n")
    seen_body = False
    for i, line in enumerate(lines):
        if line.strip() and not line[0].isspace():
            if seen_body:
                return "\n".join(lines[:i])
        elif line.strip():
            seen_body = True
    return body


def humaneval_program(text: str, prompt: str, entry_point: str) -> tuple[str, str, str]:
    """(program to run, extracted code, how) for a HumanEval-style completion.

    >>> p = "def inc(x):\\n    'Add one.'\\n"
    >>> humaneval_program("    return x + 1\\n\\nprint(inc(1))", p, "inc")[0]
    "def inc(x):\\n    'Add one.'\\n    return x + 1\\n"
    >>> humaneval_program("```python\\ndef inc(x):\\n    return x + 1\\n```", p, "inc")[2]
    'full_function'
    """
    code, how = extract_code(text, [entry_point])
    if _defines(code, entry_point):
        if how == "raw":
            code = _trim_to_code(code)
        return prompt.rstrip("\n") + "\n\n\n" + code, code, "full_function"
    body = _indent_body(code) if how != "raw" else code
    program = prompt + body
    if not _parses(program):
        cut = _cut_at_toplevel(body)
        if _parses(prompt + cut):
            return prompt + cut, cut, "body_truncated"
    return program, body, "body" if how == "raw" else f"body_{how}"


# --------------------------------------------------------------------------------------------- test specs


def _bound_in(tree: ast.AST) -> set[str]:
    """Names bound inside an expression (comprehension targets, lambda arguments, walrus targets)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


def _top_level_bindings(code: str) -> set[str]:
    out: set[str] = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return out
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        else:
            out |= _bound_in(node)
    return out


def _subject(tree: ast.Module) -> str | None:
    """Base name of the call on the left of ``assert <call> <op> ...`` (the function under test)."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    node = test.left if isinstance(test, ast.Compare) else test
    if not isinstance(node, ast.Call):
        return None
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def analyze_asserts(asserts: Sequence[str], imports: str = "", entry_point: str | None = None) -> tuple[list[str], list[str]]:
    """(names that live in the candidate process, stdlib modules the tests use without importing).

    >>> analyze_asserts(["assert math.isclose(area(2), 12.56, rel_tol=1e-3)"], "import math")
    (['area'], [])
    >>> analyze_asserts(["assert tuple_size((1,)) == sys.getsizeof((1,))"])
    (['tuple_size'], ['sys'])
    >>> analyze_asserts(["assert sum(10, 15) == 6"])
    (['sum'], [])
    """
    imported = _top_level_bindings(imports)
    remote: set[str] = set()
    modules: set[str] = set()
    subjects: set[str | None] = set()
    for src in asserts:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        bound = _bound_in(tree)
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Name) or not isinstance(node.ctx, ast.Load):
                continue
            name = node.id
            if name in bound or name in imported or name in _BUILTIN_NAMES:
                continue
            if name in _STDLIB and name not in called:
                modules.add(name)
            else:
                remote.add(name)
        subjects.add(_subject(tree))
    if entry_point:
        remote.add(entry_point)
    if not remote:
        named = subjects - {None}
        if len(named) == 1:
            remote |= named  # the candidate shadows a builtin (MBPP 126 tests its own `sum`)
    return sorted(remote), sorted(modules)


@dataclass
class PreparedTests:
    """Everything about a problem's tests that does not depend on the completion (cached per problem)."""

    mode: str
    spec: dict[str, Any]
    before: list[tuple[str, str]]
    after: list[tuple[str, str]]
    sources: dict[int, str]
    n_tests: int
    entry_point: str | None
    prompt: str = ""
    remote_names: list[str] = field(default_factory=list)


def prepare_tests(problem: Problem, challenge_tests: bool = True) -> PreparedTests:
    """Validate ``problem.tests`` and build the tester spec; raise ``ValueError`` naming the problem."""
    tests = problem.tests
    if not tests:
        raise ValueError(f"problem {problem.id!r} has no tests; the 'sandboxed_tests' verifier needs Problem.tests")
    fmt = tests.get("format")
    if fmt == "humaneval":
        missing = [k for k in ("prompt", "test", "entry_point") if not isinstance(tests.get(k), str)]
        if missing:
            raise ValueError(f"problem {problem.id!r}: humaneval tests need string fields {missing}")
        try:
            tree = ast.parse(tests["test"])
        except SyntaxError as e:
            raise ValueError(f"problem {problem.id!r}: test code does not parse: {e}") from None
        sources = {
            n.lineno: (ast.get_source_segment(tests["test"], n) or "assert ...").strip()
            for n in ast.walk(tree)
            if isinstance(n, ast.Assert)
        }
        entry = tests["entry_point"]
        spec = {"mode": "humaneval", "preamble": tests["prompt"], "local_modules": [], "remote_names": [entry],
                "test": tests["test"], "entry": "check", "entry_arg": entry}
        return PreparedTests("humaneval", spec, [], [], sources, len(sources), entry, tests["prompt"], [entry])
    if fmt == "asserts":
        asserts = tests.get("asserts")
        challenge = tests.get("challenge_asserts") or []
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
            raise ValueError(f"problem {problem.id!r}: 'asserts' must be a non-empty list of strings")
        if not isinstance(challenge, list) or not all(isinstance(a, str) for a in challenge):
            raise ValueError(f"problem {problem.id!r}: 'challenge_asserts' must be a list of strings")
        if challenge_tests:
            asserts = [*asserts, *challenge]
        imports = tests.get("imports") or []
        setup = tests.get("setup") or ""
        if not isinstance(imports, list) or not isinstance(setup, str):
            raise ValueError(f"problem {problem.id!r}: 'imports' must be a list and 'setup' a string")
        imports_src = "\n".join(imports)
        entry = tests.get("entry_point") or problem.meta.get("entry_point")
        remote, modules = analyze_asserts(asserts, imports_src, entry if isinstance(entry, str) else None)
        if not remote:
            raise ValueError(f"problem {problem.id!r}: no assert calls a function of the candidate")
        spec = {"mode": "asserts", "preamble": imports_src, "local_modules": modules, "remote_names": remote,
                "tests": list(asserts)}
        before = [(imports_src, "<imports>")] if imports_src else []
        after = [(setup.replace("\r\n", "\n"), "<setup>")] if setup.strip() else []
        sources = {i: a.strip() for i, a in enumerate(asserts)}
        return PreparedTests("asserts", spec, before, after, sources, len(asserts),
                             entry if isinstance(entry, str) else None, remote_names=remote)
    raise ValueError(f"problem {problem.id!r}: unknown tests format {fmt!r} (expected 'humaneval' or 'asserts')")


def build_program(prep: PreparedTests, text: str) -> tuple[list[tuple[str, str]], str, str]:
    """(sources for the candidate process, extracted code, how it was extracted)."""
    if prep.mode == "humaneval":
        program, code, how = humaneval_program(text, prep.prompt, prep.entry_point or "")
    else:
        code, how = extract_code(text, prep.remote_names)
        if how == "raw":
            code = _trim_to_code(code)
        program = code
    return [*prep.before, (program, "<candidate>"), *prep.after], code, how


# --------------------------------------------------------------------------------------------- verdicts


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "none"
    except ValueError:
        return f"signal {sig}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(result: JobResult, prep: PreparedTests) -> tuple[str, bool, str, dict[str, Any]]:
    """(status, passed, reason, details) from a test job's raw result; only the tester's report can pass.

    Where the tester could not rebuild a returned set in the candidate's iteration order (``rebuild_set``
    in the worker), the reason says so: a test that depends on that order may then differ from plain CPython.
    """
    status, passed, reason, details = _classify(result, prep)
    if details.get("faithful") is False:
        reason += (f" (note: {details['set_order_mismatches']} set value(s) crossed the sandbox boundary in another "
                   "iteration order than the candidate's; a test that depends on set order may differ from "
                   "plain CPython)")
    return status, passed, reason, details


def _classify(result: JobResult, prep: PreparedTests) -> tuple[str, bool, str, dict[str, Any]]:
    lim = result.limits
    details: dict[str, Any] = {
        "cpu_s": result.candidate.cpu_s if result.candidate else None,
        "wall_s": round(result.wall_s, 4),
        "output_bytes": result.output_bytes,
        "attempts": result.attempts,
    }
    if result.swept:
        details["swept_processes"] = result.swept
    if result.candidate is not None and (result.candidate.signal or result.candidate.exit_code):
        details["candidate_exit"] = {"exit": result.candidate.exit_code, "signal": _signal_name(result.candidate.signal)}
    if result.output_tail:
        details["output_tail"] = result.output_tail[-500:]
    rep = result.report
    memory_hint = "MemoryError" in result.output_tail
    if rep is not None:
        texts = [str(rep.get("load_error", "")), str(rep.get("check_error", ""))]
        texts += [str(t.get("error", "")) for t in rep.get("tests", [])]
        memory_hint = memory_hint or any(t.startswith("MemoryError") for t in texts)
        details["tests"] = [
            {**t, "source": _short(prep.sources.get(t["id"], ""), 200)} for t in rep.get("tests", [])[:100]
        ]
        details["calls"] = rep.get("calls", 0)
        if rep.get("set_order_mismatches"):
            details["faithful"] = False
            details["set_order_mismatches"] = rep["set_order_mismatches"]

    def bad(default: str) -> str:
        if result.wall_timeout or result.cpu_limited:
            return "timeout"
        if memory_hint:
            return "memory"
        if result.crashed_by_signal:
            return "crashed"
        return default

    if result.infra_error:
        return "infra_error", False, f"sandbox worker failed twice on this job: {_short(result.infra_error)}", details
    if result.output_limit:
        return "output_limit", False, f"the candidate wrote more than {lim.max_output_bytes} bytes of output", details
    if rep is None:
        status = bad("fail")
        reason = {
            "timeout": f"exceeded the {'wall-clock' if result.wall_timeout else 'CPU'} limit "
                       f"({lim.effective_wall_s if result.wall_timeout else lim.effective_cpu_s} s)",
            "memory": f"ran out of memory (limit {lim.memory_mb} MiB)",
            "crashed": f"the candidate process crashed ({_signal_name(result.candidate.signal if result.candidate else None)})",
        }.get(status, "the test process ended without a report (the candidate killed or stopped it)")
        return status, False, reason, details
    if not rep.get("loaded"):
        status = bad("fail")
        if status == "timeout":
            return status, False, f"loading the candidate exceeded the CPU limit ({lim.effective_cpu_s} s)", details
        return status, False, f"the candidate code failed to load: {_short(str(rep.get('load_error')))}", details

    tests = rep.get("tests", [])
    failing = [t for t in tests if t.get("failed")]
    ran = {t["id"] for t in tests}
    passed_ids = [t for t in tests if not t.get("failed")]
    details["tests_total"] = prep.n_tests if prep.mode == "asserts" else len(tests)
    details["tests_passed"] = len(passed_ids)
    limit_note = ""
    status = bad("fail")
    if status == "timeout":
        limit_note = (f"exceeded the {'wall-clock' if result.wall_timeout else 'CPU'} limit "
                      f"({lim.effective_wall_s if result.wall_timeout else lim.effective_cpu_s} s); ")
    elif status == "memory":
        limit_note = f"ran out of memory (limit {lim.memory_mb} MiB); "
    elif status == "crashed":
        limit_note = f"the candidate process crashed ({_signal_name(result.candidate.signal if result.candidate else None)}); "
    if failing:
        first = failing[0]
        where = (f"test {first['id'] + 1}/{prep.n_tests}" if prep.mode == "asserts" else f"assert at line {first['id']}")
        observed = "; ".join(first.get("observed") or [])
        reason = f"{where} failed: `{_short(prep.sources.get(first['id'], '?'), 160)}`: {_short(first.get('error', ''), 160)}"
        if observed:
            reason += f" (observed {_short(observed, 200)})"
        return status, False, limit_note + reason, details
    if rep.get("check_error"):
        line = rep.get("check_error_line")
        reason = f"check() raised {_short(str(rep['check_error']), 200)}" + (f" at line {line}" if line else "")
        observed = "; ".join(rep.get("check_observed") or [])
        if observed:
            reason += f" (observed {_short(observed, 200)})"
        return status, False, limit_note + reason, details
    if prep.mode == "asserts" and ran != set(range(prep.n_tests)):
        return status, False, f"{limit_note}only {len(ran)} of {prep.n_tests} tests ran", details
    if not tests:
        return status, False, f"{limit_note}no assertion was executed", details
    if not rep.get("calls"):
        return "fail", False, "the tests never called the candidate's code", details
    return "pass", True, f"all {len(tests)} {'tests' if prep.mode == 'asserts' else 'asserts'} passed", details


# --------------------------------------------------------------------------------------------- verifier


class SandboxedTestsVerifier(Verifier):
    """Judge code completions by running ``Problem.tests`` in a pool of bubblewrap sandboxes.

    Options (defaults in brackets): ``workers`` [cores] sandboxes in the pool; ``timeout_s`` [5.0] CPU
    seconds per job for the candidate (whole seconds); ``wall_timeout_s`` [max(10, 3*timeout_s)] wall
    seconds per job; ``memory_mb`` [1024] address space per process; ``max_output_bytes`` [1 MiB];
    ``max_file_bytes`` [16 MiB] largest file the job may write; ``max_processes`` [8] extra processes or
    threads; ``isolation`` ["bwrap"], or "none" to run WITHOUT isolation (logged as a warning on every
    call); ``sandbox_uid`` [65534 when run as root] uid the sandboxes run as; ``tmp_mb`` [64] size of the
    sandbox's /tmp; ``challenge_tests`` [True] also run MBPP's ``challenge_asserts``. The pool starts on the
    first ``verify`` and lives until ``close``.
    """

    name: ClassVar[str] = "sandboxed_tests"
    needs_gold: ClassVar[bool] = True

    def __init__(
        self,
        *,
        workers: int | None = None,
        timeout_s: float = 5.0,
        wall_timeout_s: float | None = None,
        memory_mb: int = 1024,
        max_output_bytes: int = 1 << 20,
        max_file_bytes: int = 16 << 20,
        max_processes: int = 8,
        isolation: str = "bwrap",
        sandbox_uid: int | None = None,
        tmp_mb: int = 64,
        challenge_tests: bool = True,
    ):
        super().__init__(workers=workers, timeout_s=timeout_s, wall_timeout_s=wall_timeout_s, memory_mb=memory_mb,
                         max_output_bytes=max_output_bytes, max_file_bytes=max_file_bytes,
                         max_processes=max_processes, isolation=isolation, sandbox_uid=sandbox_uid, tmp_mb=tmp_mb,
                         challenge_tests=challenge_tests)
        self.challenge_tests = challenge_tests
        if isolation not in ("bwrap", "none"):
            raise ValueError(f"isolation must be 'bwrap' or 'none', got {isolation!r}")
        self.limits = Limits(cpu_s=timeout_s, wall_s=wall_timeout_s, memory_mb=memory_mb,
                             max_output_bytes=max_output_bytes, max_file_bytes=max_file_bytes,
                             max_processes=max_processes)
        self.isolation = isolation
        self.workers = workers
        self.config = SandboxConfig(isolation=isolation, sandbox_uid=sandbox_uid, tmp_mb=tmp_mb)  # type: ignore[arg-type]
        check_isolation(self.config)  # refuse now, not after sampling, if isolation is unavailable
        if isolation == "none":
            logger.warning(UNSAFE_WARNING)
        self._pool: SandboxPool | None = None
        self._pool_lock = threading.Lock()
        self._prepared: dict[str, PreparedTests] = {}

    @property
    def pool(self) -> SandboxPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = SandboxPool(self.workers, limits=self.limits, isolation=self.config.isolation,
                                         sandbox_uid=self.config.sandbox_uid, tmp_mb=self.config.tmp_mb)
            return self._pool

    def _prepare(self, problem: Problem) -> PreparedTests:
        # Keyed by content too: two problem sets may reuse an id with different tests.
        key = problem.id + "\0" + json.dumps(problem.tests, sort_keys=True, default=str)
        if key not in self._prepared:
            if len(self._prepared) > 100_000:
                self._prepared.clear()
            self._prepared[key] = prepare_tests(problem, self.challenge_tests)
        return self._prepared[key]

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        if self.isolation == "none":
            logger.warning(UNSAFE_WARNING)
        pending: list[tuple[Completion, PreparedTests, str, str, Future[JobResult]]] = []
        by_problem: dict[str, PreparedTests] = {}
        for c in completions:
            prep = by_problem.get(c.problem_id)
            if prep is None:
                prep = by_problem[c.problem_id] = self._prepare(problems[c.problem_id])
            sources, code, how = build_program(prep, c.text)
            fut = self.pool.submit(Job.tests(sources, prep.spec))
            pending.append((c, prep, code, how, fut))
        verdicts = []
        for c, prep, code, how, fut in pending:
            result = fut.result()
            status, passed, reason, details = classify(result, prep)
            details["extraction"] = how
            verdicts.append(Verdict(
                sample_id=c.id, problem_id=c.problem_id, round=c.round, verifier=self.name, passed=passed,
                score=1.0 if passed else 0.0, status=status, answer=code, reason=reason,
                cost_s=round(result.host_wall_s, 4), details=details,
            ))
        return verdicts

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


__all__ = [
    "PreparedTests",
    "SandboxedTestsVerifier",
    "analyze_asserts",
    "build_program",
    "classify",
    "extract_code",
    "humaneval_program",
    "prepare_tests",
]
