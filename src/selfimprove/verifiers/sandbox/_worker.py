"""Fork-server worker that runs inside each sandbox, plus the wire format the host shares with it.

What: the long-lived process at the heart of one sandbox. It receives jobs on a pipe, forks a fresh
candidate process (and, for test jobs, a separate tester process) per job, enforces per-job limits,
kills every process the job left behind, wipes the job's files and answers with one reply frame.

Why a separate tester process: the verdict must not be forgeable by the code under test. The candidate
process C only ever sees its own code and the *arguments* of the calls made to it; it never sees the
test source or the expected values, and it cannot reach the channel the verdict travels on. The tester
process T runs the (trusted) test code; every value the candidate returns crosses a serialisation boundary
(plain builtin types only, rebuilt by trusted code in T), so no candidate-defined object (always-equal,
``int`` subclass, ...) ever takes part in a comparison. Anything that is not a plain value comes back as an
opaque handle that can only be passed back to the candidate: comparing it, testing its truth or reading
its attributes raises, which fails the test. T reports per-test results straight to the host on its own
pipe, in a frame carrying a per-job random tag that only T and the host know.

Why this worker never reads tests: a forked child inherits a copy of its parent's whole memory. If this
process ever held test sources or expected values (even freed), a candidate could scan its own memory for
them. Tests therefore reach T on a pipe this process never reads, and T's results leave on a pipe this
process never reads either. T and this worker are non-dumpable, so C cannot open ``/proc/<pid>/fd``,
``/proc/<pid>/mem`` or ptrace them.

How it runs: ``python3 -P -s -S -B -c <this file> <config json>`` under bubblewrap, as PID 1 of a fresh PID
namespace (``--as-pid-1``). PID 1 receives no signal from inside its namespace unless it installed a
handler, so a job can neither kill nor stop this worker; it also adopts every orphan, and
``kill(-1, SIGKILL)`` from PID 1 reaches every other process of the namespace: that is the per-job sweep.
Without isolation (opt-in unsafe mode) the worker is not PID 1; it becomes a child subreaper and sweeps its
own descendants instead, and it never calls ``kill(-1)``.

This module must stay standard-library only and compatible with the system Python 3.11: inside the
sandbox it runs under ``/usr/bin/python3`` with no site-packages.
"""

# ruff: noqa: BLE001, S102, S110 - this module exists to exec untrusted code and to outlive whatever it raises

from __future__ import annotations

import ast
import builtins
import collections
import decimal
import fractions
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback

# --------------------------------------------------------------------------------------------- frames

_HEADER = struct.Struct(">I")

#: Upper bounds for frames read by each party; a larger length prefix is treated as corruption.
MAX_JOB_BYTES = 64 << 20
MAX_SPEC_BYTES = 64 << 20
MAX_REPORT_BYTES = 8 << 20
MAX_REQUEST_BYTES = 64 << 20


class FrameError(Exception):
    """A frame was truncated, oversized or not valid JSON."""


def encode_frame(obj: object) -> bytes:
    """Length-prefixed JSON; ``ensure_ascii`` keeps lone surrogates representable."""
    data = json.dumps(obj, separators=(",", ":")).encode("ascii")
    return _HEADER.pack(len(data)) + data


def write_frame(fd: int, obj: object) -> None:
    view = memoryview(encode_frame(obj))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int) -> object:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(_read_exact(fd, size))
    except ValueError as e:
        raise FrameError(f"malformed frame: {e}") from None


def parse_frames(buf: bytes | bytearray, max_bytes: int) -> tuple[list[object], int]:
    """Complete frames at the start of ``buf`` and the number of bytes they used (host side)."""
    out, pos = [], 0
    while len(buf) - pos >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buf, pos)
        if size > max_bytes:
            raise FrameError(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
        if len(buf) - pos - _HEADER.size < size:
            break
        body = bytes(buf[pos + _HEADER.size : pos + _HEADER.size + size])
        try:
            out.append(json.loads(body))
        except ValueError as e:
            raise FrameError(f"malformed frame: {e}") from None
        pos += _HEADER.size + size
    return out, pos


# --------------------------------------------------------------------------------------------- values

class CodecError(ValueError):
    """A value could not be encoded as, or rebuilt from, the plain-value wire format."""


_MAX_DEPTH = 100
_MAX_ITER_ITEMS = 100_000
_BIG_INT = 1 << 63
_KEYS_T, _VALUES_T, _ITEMS_T = type({}.keys()), type({}.values()), type({}.items())
_TAGGED_SEQ = {list: "l", tuple: "t", set: "s", frozenset: "fs", collections.deque: "q"}
_TAGGED_MAP = {dict: "d", collections.Counter: "C", collections.OrderedDict: "O", collections.defaultdict: "D"}


def encode_value(value: object, fallback, depth: int = 0) -> object:
    """Encode ``value`` using exact types only; anything else goes through ``fallback(value)``.

    Scalars map to JSON scalars (ints beyond 2**63 as hex, so the 4300-digit ``str(int)`` limit never
    applies); containers become ``[tag, ...]`` lists. Subclasses are *not* plain: ``type(v) is int``.

    >>> encode_value([1, (2.5, "x"), {None: True}], None)
    ['l', [1, ['t', [2.5, 'x']], ['d', [[None, True]]]]]
    """
    t = type(value)
    if value is None or t is bool or t is str or t is float:
        return value
    if t is int:
        return value if -_BIG_INT < value < _BIG_INT else ["I", hex(value)]
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deeply")
    d = depth + 1
    tag = _TAGGED_SEQ.get(t)
    if tag is not None:
        items = [encode_value(x, fallback, d) for x in value]
        if tag in ("s", "fs"):
            return [tag, items, set_slots(value)]  # the table size: the receiver rebuilds the same order
        return ["q", items, value.maxlen] if tag == "q" else [tag, items]
    tag = _TAGGED_MAP.get(t)
    if tag is not None:
        return [tag, [[encode_value(k, fallback, d), encode_value(v, fallback, d)] for k, v in value.items()]]
    if t is bytes:
        return ["b", value.hex()]
    if t is bytearray:
        return ["ba", value.hex()]
    if t is complex:
        return ["c", value.real, value.imag]
    if t is range:
        return ["r", value.start, value.stop, value.step]
    if t is fractions.Fraction:
        return ["Q", encode_value(value.numerator, None), encode_value(value.denominator, None)]
    if t is decimal.Decimal:
        return ["M", str(value)]
    if t is _KEYS_T:
        return ["dk", [encode_value(x, fallback, d) for x in value]]
    if t is _VALUES_T:
        return ["dv", [encode_value(x, fallback, d) for x in value]]
    if t is _ITEMS_T:
        return ["di", [[encode_value(k, fallback, d), encode_value(v, fallback, d)] for k, v in value]]
    if fallback is None:
        raise CodecError(f"cannot encode a value of type {t.__name__}")
    return fallback(value)


_SET_BASE = sys.getsizeof(set())
_FROZEN_BASE = sys.getsizeof(frozenset())
#: Sets rebuilt in another iteration order than the sender's (see ``rebuild_set``); the tester reports it.
ORDER_MISMATCHES = [0]


def set_slots(value: set | frozenset) -> int:
    """The number of slots of a set's hash table (8 for the small inline table), from ``sys.getsizeof``."""
    base = _FROZEN_BASE if type(value) is frozenset else _SET_BASE
    return max(8, (sys.getsizeof(value) - base) // 16 if sys.getsizeof(value) > base else 8)


def rebuild_set(items: list, slots: object, frozen: bool) -> set | frozenset:
    """A set of ``items`` that iterates in the order given, as the sender's set did.

    A set's iteration order is the order of its hash-table slots, which depends on the table size and on
    the insertion history, not only on the elements: ``{1, 8}`` iterates as ``[8, 1]`` in a new 8-slot table
    and as ``[1, 8]`` in a table grown to 512 slots and emptied. Inserting the items, in the sender's order,
    into an empty table of the sender's size reproduces the sender's slots (both processes run with the same
    ``PYTHONHASHSEED``). The table is sized by ``set.update`` with a dict, which presizes once to the next
    power of two above twice the dict's length; placeholder objects pad the dict to the wanted size and are
    inserted after the items (so they cannot take an item's slot), then removed. If the order still differs
    (a history a clean insertion cannot reproduce) the mismatch is counted and reported with the verdict.
    """
    candidates = []
    if type(slots) is int and 8 < slots <= 1 << 24 and (slots & (slots - 1)) == 0:
        pad = max(0, slots // 4 - len(items))
        if (len(items) + pad) * 2 < slots:
            fillers = [object() for _ in range(pad)]
            s: set = set()
            s.update(dict.fromkeys([*items, *fillers]))
            s.difference_update(fillers)
            candidates.append(s)
    candidates.append(set(items))
    for s in candidates:
        if frozen:
            s = frozenset(s)
        if len(s) != len(items) or all(a is b for a, b in zip(s, items)):
            return s
    ORDER_MISMATCHES[0] += 1
    return frozenset(items) if frozen else set(items)


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise CodecError(f"malformed value: {what}")


def _int(o: object) -> int:
    if type(o) is int:
        return o
    _want(type(o) is list and len(o) == 2 and o[0] == "I" and type(o[1]) is str, "integer")
    try:
        return int(o[1], 16)
    except ValueError:
        raise CodecError("malformed value: big integer") from None


def decode_value(o: object, ref, depth: int = 0) -> object:
    """Rebuild a plain value from the wire format with trusted constructors; ``ref(o)`` handles refs.

    Untrusted input: every tag and field type is checked, and only builtin/stdlib constructors run.

    >>> decode_value(['l', [1, ['t', [2.5, 'x']], ['s', [3]]]], None)
    [1, (2.5, 'x'), {3}]
    """
    t = type(o)
    if o is None or t is bool or t is str or t is int or t is float:
        return o
    _want(t is list and len(o) >= 2 and type(o[0]) is str, "expected a tagged list")
    _want(depth <= _MAX_DEPTH + 1, "nested too deeply")
    tag, d = o[0], depth + 1
    if tag in ("l", "t", "s", "fs", "it", "dk", "dv", "q"):
        _want(type(o[1]) is list, tag)
        items = [decode_value(x, ref, d) for x in o[1]]
        try:
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            if tag in ("s", "fs"):
                return rebuild_set(items, o[2] if len(o) > 2 else None, tag == "fs")
            if tag == "it":
                return iter(items)
            if tag == "dk":
                return dict.fromkeys(items).keys()
            if tag == "dv":
                return dict(enumerate(items)).values()
            _want(len(o) == 3 and (o[2] is None or type(o[2]) is int), "deque maxlen")
            return collections.deque(items, o[2])
        except TypeError as e:  # e.g. an unhashable set element sent by a hostile encoder
            raise CodecError(f"malformed value: {e}") from None
    if tag in ("d", "C", "O", "D", "di"):
        _want(type(o[1]) is list and all(type(p) is list and len(p) == 2 for p in o[1]), "mapping pairs")
        try:
            pairs = [(decode_value(k, ref, d), decode_value(v, ref, d)) for k, v in o[1]]
            if tag == "d":
                return dict(pairs)
            if tag == "C":
                return collections.Counter(dict(pairs))
            if tag == "O":
                return collections.OrderedDict(pairs)
            if tag == "D":
                return collections.defaultdict(None, pairs)
            return dict(pairs).items()
        except TypeError as e:
            raise CodecError(f"malformed value: {e}") from None
    if tag == "I":
        return _int(o)
    if tag in ("b", "ba"):
        _want(len(o) == 2 and type(o[1]) is str, "bytes")
        try:
            raw = bytes.fromhex(o[1])
        except ValueError:
            raise CodecError("malformed value: bytes") from None
        return raw if tag == "b" else bytearray(raw)
    if tag == "c":
        _want(len(o) == 3 and all(type(x) in (int, float) for x in o[1:]), "complex")
        return complex(o[1], o[2])
    if tag == "r":
        _want(len(o) == 4 and all(type(x) is int for x in o[1:]) and o[3] != 0, "range")
        return range(o[1], o[2], o[3])
    if tag == "Q":
        _want(len(o) == 3, "fraction")
        num, den = _int(o[1]), _int(o[2])
        _want(den != 0, "fraction denominator")
        return fractions.Fraction(num, den)
    if tag == "M":
        _want(len(o) == 2 and type(o[1]) is str and len(o[1]) < 10_000, "decimal")
        try:
            return decimal.Decimal(o[1])
        except decimal.InvalidOperation:
            raise CodecError("malformed value: decimal") from None
    if tag in ("ref", "name", "builtin") and ref is not None:
        return ref(o)
    raise CodecError(f"malformed value: unknown tag {tag!r}")


# --------------------------------------------------------------------------------------------- tester side

class CandidateGone(Exception):
    """The candidate process ended (or broke its channel) before answering."""


class RemoteError(Exception):
    """The candidate raised an exception that is not re-raised as a builtin exception type."""


_REMOTE_EXC = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, (StopIteration, StopAsyncIteration, Warning))
}


def _short(text: object, limit: int = 300) -> str:
    s = text if isinstance(text, str) else repr(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def describe_exception(e: BaseException) -> str:
    try:
        msg = str(e)
    except BaseException:
        msg = "<unprintable>"
    name = type(e).__name__
    return _short(f"{name}: {msg}" if msg else name)


class Remote:
    """A handle in the tester for a candidate-side object: callable, and passable back as an argument.

    Unary queries (truth value, ``len``, iteration, ``str``, ``int``, ``float``, ``index``) are answered by
    the candidate as *plain* values, exactly as if it had returned that value itself: no test data flows
    into the candidate, so this grants nothing a plain return could not. Comparisons, arithmetic and
    attribute access would hand test values (possibly the expected ones) to candidate code, so they raise
    and the assertion fails.
    """

    __slots__ = ("_label", "_rpc", "_token")

    def __init__(self, token: list, label: str, rpc: _Rpc):
        object.__setattr__(self, "_token", token)
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_rpc", rpc)

    def __call__(self, *args, **kwargs):
        return self._rpc.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<candidate {self._label}>"

    def _refuse(self, *_args, **_kwargs):
        raise TypeError(f"{self!r} is not a plain value (only int, float, str, bool, None and builtin containers are)")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __getitem__ = _refuse
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return self._rpc.query(self, "bool", bool)

    def __len__(self) -> int:
        return self._rpc.query(self, "len", int)

    def __iter__(self):
        return iter(self._rpc.query(self, "iter", list))

    def __str__(self) -> str:
        return self._rpc.query(self, "str", str)

    def __int__(self) -> int:
        return self._rpc.query(self, "int", int)

    def __index__(self) -> int:
        return self._rpc.query(self, "index", int)

    def __float__(self) -> float:
        return self._rpc.query(self, "float", float)

    def __getattr__(self, name: str):
        raise AttributeError(f"{self!r} has no plain attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"{self!r} is read-only")


class _Rpc:
    """Tester-side end of the call channel to the candidate process."""

    def __init__(self, req_w: int, resp_r: int, max_value_bytes: int):
        self.req_w, self.resp_r, self.max_value_bytes = req_w, resp_r, max_value_bytes
        self.calls = 0
        self.gone: str | None = None
        self.recent: collections.deque = collections.deque(maxlen=3)

    def _fail(self, why: str) -> None:
        self.gone = why
        raise CandidateGone(why)

    def hello(self) -> dict:
        try:
            msg = read_frame(self.resp_r, self.max_value_bytes)
        except (EOFError, OSError):
            self._fail("the candidate process ended while loading")
        except FrameError as e:
            self._fail(f"the candidate process sent a malformed greeting ({e})")
        return msg if isinstance(msg, dict) else {"load_error": "malformed greeting"}

    def _token(self, value: object) -> object:
        if isinstance(value, Remote):
            return value._token
        name = getattr(value, "__name__", None)
        if isinstance(name, str) and getattr(builtins, name, None) is value:
            return ["builtin", name]  # e.g. MBPP 533 passes the type ``int``
        raise TypeError(f"cannot pass a {type(value).__name__} to the candidate (plain values only)")

    def _ref(self, o: list) -> Remote:
        _want(o[0] == "ref" and len(o) == 3 and type(o[1]) is int and type(o[2]) is str, "reference")
        return Remote(["ref", o[1]], f"{_short(o[2], 60)} object", self)

    def query(self, target: Remote, op: str, want: type) -> object:
        value = self._send({"target": target._token, "op": op}, [f"{op}({target._label})", (), {}, None])
        if type(value) is not want:
            raise TypeError(f"{op}() of {target!r} did not give a plain {want.__name__}")
        return value

    def call(self, target: Remote, args: tuple, kwargs: dict) -> object:
        request = {
            "target": target._token,
            "op": "call",
            "args": [encode_value(a, self._token) for a in args],
            "kwargs": [[k, encode_value(v, self._token)] for k, v in kwargs.items()],
        }
        self.calls += 1
        return self._send(request, [target._label, args, kwargs, None])

    def _send(self, request: dict, record: list) -> object:
        if self.gone:
            raise CandidateGone(self.gone)
        self.recent.append(record)
        try:
            write_frame(self.req_w, request)
            resp = read_frame(self.resp_r, self.max_value_bytes)
        except (EOFError, OSError):
            self._fail("the candidate process ended during a call")
        except FrameError as e:
            self._fail(f"the candidate process sent a malformed answer ({e})")
        if not isinstance(resp, dict):
            self._fail("the candidate process sent a malformed answer")
        if "exc" in resp:
            name, msg = _short(str(resp.get("exc")), 80), _short(str(resp.get("msg", "")))
            record[3] = ("raised", f"{name}: {msg}" if msg else name)
            cls = _REMOTE_EXC.get(name)
            try:
                exc = cls(msg) if cls is not None else RemoteError(f"{name}: {msg}")
            except Exception:
                exc = RemoteError(f"{name}: {msg}")
            raise exc
        if "ok" not in resp:
            self._fail("the candidate process sent a malformed answer")
        value = decode_value(resp["ok"], self._ref)
        record[3] = ("returned", value)
        return value

    def take_recent(self) -> list[str]:
        out = []
        for label, args, kwargs, result in self.recent:
            try:
                parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
                call = f"{label}({', '.join(parts)})"
                if result is None:
                    shown = "no answer"
                elif result[0] == "raised":
                    shown = f"raised {result[1]}"
                else:
                    shown = repr(result[1])
            except Exception as e:  # a pathological repr must not break the report
                call, shown = label, f"<repr failed: {type(e).__name__}>"
            out.append(f"{_short(call, 200)} -> {_short(shown, 200)}")
        self.recent.clear()
        return out


class _Recorder:
    """Per-test tallies: how often each assert held or failed, with the first failure's evidence."""

    def __init__(self, rpc: _Rpc):
        self.rpc = rpc
        self.results: dict[int, dict] = {}

    def record(self, test_id: int, ok: bool, exc: BaseException | None = None) -> None:
        entry = self.results.get(test_id)
        if entry is None:
            if len(self.results) >= 10_000:
                return
            entry = self.results[test_id] = {"id": test_id, "passed": 0, "failed": 0}
        recent = self.rpc.take_recent()
        if ok:
            entry["passed"] += 1
        else:
            entry["failed"] += 1
            if "error" not in entry:
                entry["error"] = "assertion failed" if exc is None else describe_exception(exc)
                entry["observed"] = recent


class _SoftAsserts(ast.NodeTransformer):
    """Turn ``assert <test>`` into a recorded check, so one failure does not hide the rest.

    ``assert t`` becomes ``try: ok = bool(t) / except BaseException as e: record(id, False, e) /
    else: record(id, ok)``. Locations are copied, so tracebacks keep the original line numbers.
    """

    def __init__(self, fixed_id: int | None = None):
        self.fixed_id = fixed_id

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        tid = self.fixed_id if self.fixed_id is not None else node.lineno

        def name(n: str, store: bool = False) -> ast.Name:
            return ast.Name(id=n, ctx=ast.Store() if store else ast.Load())

        def record(*args: ast.expr) -> ast.Expr:
            return ast.Expr(value=ast.Call(func=name("__si_record__"), args=[ast.Constant(tid), *args], keywords=[]))

        new = ast.Try(
            body=[ast.Assign(targets=[name("__si_ok__", True)],
                             value=ast.Call(func=name("__si_bool__"), args=[node.test], keywords=[]))],
            handlers=[ast.ExceptHandler(type=name("BaseException"), name="__si_e__",
                                        body=[record(ast.Constant(False), name("__si_e__"))])],
            orelse=[record(name("__si_ok__"))],
            finalbody=[],
        )
        return ast.copy_location(new, node)


def _error_line(e: BaseException, filename: str) -> int | None:
    line, tb = None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def run_tests(spec: dict, rpc: _Rpc) -> dict:
    """Run a test spec against the candidate behind ``rpc``; return the report sent to the host.

    Spec keys: ``mode`` ("humaneval" | "asserts"), ``preamble`` (trusted code run first, e.g. the
    HumanEval prompt for its helpers, or MBPP test imports), ``local_modules`` (stdlib modules the tests use
    without importing), ``remote_names`` (names bound to candidate handles), and ``test`` + ``entry`` +
    ``entry_arg`` (humaneval: ``check(candidate)``) or ``tests`` (asserts: one test per string).
    """
    report: dict = {"loaded": False, "tests": [], "calls": 0, "completed": False}
    try:
        hello = rpc.hello()
    except CandidateGone as e:
        hello = {"load_error": str(e)}
    if not hello.get("ready"):
        report["load_error"] = _short(str(hello.get("load_error", "candidate did not load")))
        report["completed"] = True
        return report
    report["loaded"] = True
    ns: dict = {"__name__": "__tests__", "__builtins__": builtins}
    if spec.get("preamble"):
        try:
            exec(compile(spec["preamble"], "<preamble>", "exec"), ns)
        except BaseException as e:
            report["preamble_error"] = describe_exception(e)
    for module in spec.get("local_modules", []):
        try:
            ns.setdefault(module, __import__(module))
        except BaseException as e:
            report["preamble_error"] = describe_exception(e)
    for remote in spec["remote_names"]:
        ns[remote] = Remote(["name", remote], remote, rpc)
    recorder = _Recorder(rpc)
    ns["__si_record__"], ns["__si_bool__"] = recorder.record, bool
    if spec["mode"] == "humaneval":
        try:
            tree = _SoftAsserts().visit(ast.parse(spec["test"], "<tests>"))
            exec(compile(ast.fix_missing_locations(tree), "<tests>", "exec"), ns)
            ns[spec["entry"]](ns[spec["entry_arg"]])
        except BaseException as e:
            report["check_error"] = describe_exception(e)
            report["check_error_line"] = _error_line(e, "<tests>")
            report["check_observed"] = rpc.take_recent()
    elif spec["mode"] == "asserts":
        for i, src in enumerate(spec["tests"]):
            try:
                tree = _SoftAsserts(fixed_id=i).visit(ast.parse(src, f"<test {i}>"))
                exec(compile(ast.fix_missing_locations(tree), f"<test {i}>", "exec"), ns)
            except BaseException as e:
                recorder.record(i, False, e)
            else:
                if i not in recorder.results:  # a statement without assert: it must run without raising
                    recorder.record(i, True)
    else:
        raise ValueError(f"unknown test mode {spec['mode']!r}")
    report["tests"] = sorted(recorder.results.values(), key=lambda r: r["id"])
    report["calls"] = rpc.calls
    if ORDER_MISMATCHES[0]:
        report["set_order_mismatches"] = ORDER_MISMATCHES[0]
    report["completed"] = True
    return report


# --------------------------------------------------------------------------------------------- candidate side

def _serve_candidate(job: dict, req_r: int, resp_w: int) -> None:
    """Load the candidate's code, then answer call requests until the tester closes the channel."""
    ns: dict = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        for src, filename in job["sources"]:
            exec(compile(src, filename, "exec"), ns)
    except BaseException as e:
        write_frame(resp_w, {"load_error": describe_exception(e)})
        return
    write_frame(resp_w, {"ready": True})
    refs: list = []
    max_value_bytes = int(job["limits"]["max_value_bytes"])

    def keep(value: object) -> list:
        refs.append(value)
        return ["ref", len(refs) - 1, type(value).__name__[:60]]

    def fallback(value: object) -> object:
        # Iterators (map, filter, generators) are materialised so ``list(f(x))`` works as in the original.
        if hasattr(type(value), "__next__") and iter(value) is value:
            items = []
            for item in value:
                items.append(item)
                if len(items) > _MAX_ITER_ITEMS:
                    raise CodecError("iterator too long")
            return ["it", [encode_value(x, fallback) for x in items]]
        return keep(value)

    def resolve(o: list) -> object:
        if o[0] == "name" and len(o) == 2 and isinstance(o[1], str):
            if o[1] not in ns:
                raise NameError(f"name {o[1]!r} is not defined")
            return ns[o[1]]
        if o[0] == "ref" and len(o) >= 2 and type(o[1]) is int and 0 <= o[1] < len(refs):
            return refs[o[1]]
        if o[0] == "builtin" and len(o) == 2 and isinstance(o[1], str) and hasattr(builtins, o[1]):
            return getattr(builtins, o[1])
        raise CodecError("bad reference")

    while True:
        try:
            msg = read_frame(req_r, MAX_REQUEST_BYTES)
        except (EOFError, OSError, FrameError):
            return
        try:
            target = resolve(msg["target"])
            op = msg.get("op")
            if op == "call":
                args = [decode_value(a, resolve) for a in msg["args"]]
                kwargs = {k: decode_value(v, resolve) for k, v in msg["kwargs"]}
                value = target(*args, **kwargs)
            elif op == "iter":
                value = []
                for item in target:
                    value.append(item)
                    if len(value) > _MAX_ITER_ITEMS:
                        raise CodecError("iterable too long")
            else:
                value = _UNARY[op](target)
            answer = {"ok": encode_value(value, fallback)}
            data = encode_frame(answer)
            if len(data) > max_value_bytes:
                answer = {"exc": "ValueError", "msg": f"return value larger than {max_value_bytes} bytes"}
                data = encode_frame(answer)
        except BaseException as e:
            data = encode_frame({"exc": type(e).__name__, "msg": _exc_message(e)})
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(resp_w, view):]
        except OSError:
            return


_UNARY = {"bool": bool, "len": len, "str": str, "int": int, "float": float, "index": lambda o: o.__index__()}


def _exc_message(e: BaseException) -> str:
    try:
        return _short(str(e))
    except BaseException:
        return "<unprintable>"


def _run_program(job: dict) -> int:
    """Program jobs: run the code as ``__main__``; the exit status is informative only, never a verdict."""
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    code = 0
    try:
        for src, filename in job["sources"]:
            exec(compile(src, filename, "exec"), ns)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return code & 0xFF


# --------------------------------------------------------------------------------------------- worker

_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}
#: Modules imported once in the worker so each forked job starts with them loaded.
PREIMPORT = (
    "array", "bisect", "cmath", "copy", "datetime", "functools", "hashlib", "heapq", "itertools", "math",
    "operator", "random", "re", "statistics", "string", "typing", "unicodedata",
)


def _prctl(option: int, arg: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _setup_child(stdio: tuple[int, int, int], keep: set[int], cwd: str, limits: list[tuple[int, int, int]]) -> None:
    """Common start of C and T: new session, fresh stdio, no inherited fds, per-job rlimits."""
    os.setsid()
    for target, src in enumerate(stdio):
        if src != target:
            os.dup2(src, target)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.chdir(cwd)
    for which, soft, hard in limits:
        _soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


class Worker:
    """The fork server. One instance per sandbox; see the module docstring."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.ctl, self.reply = cfg["fds"]["ctl"], cfg["fds"]["reply"]
        self.tests_in, self.results_out = cfg["fds"]["tests"], cfg["fds"]["results"]
        self.pid1 = os.getpid() == 1
        if self.pid1:
            self.tmp_root = "/tmp"  # the sandbox's private, size-capped tmpfs
            self.wipe_dirs = ["/tmp", "/dev/shm"]
        else:
            import tempfile

            self.tmp_root = tempfile.mkdtemp(prefix="selfimprove-unsafe-")
            self.wipe_dirs = [self.tmp_root]
        self.statuses: dict[int, tuple[int, object]] = {}
        self.devnull = os.open("/dev/null", os.O_RDWR)

    # -- process bookkeeping ------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every exited child. The worker owns all processes below it, so nothing is stolen."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.statuses[pid] = (status, usage)

    def _others(self) -> list[int]:
        """Processes that must not outlive the job: everything in the namespace (sandboxed) or below us."""
        me = os.getpid()
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        if self.pid1:
            return [p for p in pids if p != me]
        parents = {}
        for p in pids:
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    stat = f.read()
                parents[p] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        below, frontier = set(), {me}
        while frontier:
            frontier = {p for p, pp in parents.items() if pp in frontier and p not in below}
            below |= frontier
        return sorted(below)

    def _sweep(self) -> tuple[int, bool]:
        """Kill every process left by the job and reap it; return (how many, clean?)."""
        killed = 0
        deadline = time.monotonic() + 3.0
        while True:
            others = self._others()
            if not others:
                self._reap()
                return killed, True
            killed += len(others)
            if self.pid1:
                try:
                    os.kill(-1, signal.SIGKILL)  # only PID 1 of a private PID namespace may do this
                except ProcessLookupError:
                    pass
            else:
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                self._reap()
                if not self._others():
                    break
                time.sleep(0.002)
            if time.monotonic() > deadline:
                return killed, False

    def _wipe(self) -> str | None:
        """Remove everything the job wrote; report what could not be removed (the host then recycles)."""
        problems = []
        for root in self.wipe_dirs:
            try:
                names = os.listdir(root)
            except OSError as e:
                problems.append(f"{root}: {e}")
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    _remove_tree(path)
                except (OSError, RecursionError) as e:
                    problems.append(f"{path}: {type(e).__name__}")
        if self.pid1:
            for kind in ("shm", "msg", "sem"):
                try:
                    with open(f"/proc/sysvipc/{kind}") as f:
                        if len(f.read().splitlines()) > 1:
                            problems.append(f"System V {kind} objects left")
                except OSError:
                    pass
        return "; ".join(problems)[:500] or None

    @staticmethod
    def _status(entry: tuple[int, object] | None) -> dict | None:
        if entry is None:
            return None
        status, usage = entry
        return {
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
            "maxrss_kb": usage.ru_maxrss,
        }

    # -- one job ------------------------------------------------------------------------------------

    def _limits(self, lim: dict, tester: bool) -> list[tuple[int, int, int]]:
        mem = int(lim["memory_mb"]) << 20
        cpu = max(1, int(-(-float(lim["cpu_s"]) // 1)))
        nproc = int(lim["max_processes"]) + 3  # worker, tester and candidate are already counted
        if tester:
            # Trusted test code: generous CPU (the wall deadline bounds it) and room for rebuilt values.
            cpu = max(cpu, int(float(lim["wall_s"])) + 1)
            mem = max(2 * mem, 1 << 30)
        return [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, mem, mem),
            (resource.RLIMIT_FSIZE, int(lim["max_file_bytes"]), int(lim["max_file_bytes"])),
            (resource.RLIMIT_NOFILE, int(lim["max_open_files"]), int(lim["max_open_files"])),
            (resource.RLIMIT_NPROC, nproc, nproc),
            (resource.RLIMIT_CORE, 0, 0),
        ]

    def run_job(self, job: dict) -> dict:
        t0 = time.monotonic()
        lim = job["limits"]
        tests = job["kind"] == "tests"
        job_dir = os.path.join(self.tmp_root, "job")
        _remove_tree(job_dir)
        os.mkdir(job_dir, 0o700)
        out_r, out_w = os.pipe()
        req_r = req_w = resp_r = resp_w = -1
        if tests:
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
        self.statuses.clear()

        c_pid = os.fork()
        if c_pid == 0:
            code = 70
            try:
                _setup_child((self.devnull, out_w, out_w), {req_r, resp_w} if tests else set(), job_dir,
                             self._limits(lim, tester=False))
                if tests:
                    _serve_candidate(job, req_r, resp_w)
                    code = 0
                else:
                    code = _run_program(job)
            finally:
                os._exit(code)
        t_pid = None
        if tests:
            t_pid = os.fork()
            if t_pid == 0:
                code = 70
                try:
                    _setup_child((self.devnull, self.devnull, self.devnull),
                                 {self.tests_in, self.results_out, req_w, resp_r}, "/",
                                 self._limits(lim, tester=True))
                    spec_msg = read_frame(self.tests_in, MAX_SPEC_BYTES)
                    rpc = _Rpc(req_w, resp_r, int(lim["max_value_bytes"]))
                    report = run_tests(spec_msg["spec"], rpc)
                    report.update(tag=spec_msg["tag"], job=spec_msg["job"])
                    write_frame(self.results_out, report)
                    code = 0
                finally:
                    os._exit(code)
        for fd in (out_w, req_r, req_w, resp_r, resp_w):
            if fd >= 0:
                os.close(fd)

        main_pid = t_pid if tests else c_pid
        poller = select.poll()
        poller.register(out_r, select.POLLIN)
        pidfds = {}
        for pid in (c_pid, t_pid):
            if pid is not None:
                pfd = os.pidfd_open(pid)
                pidfds[pfd] = pid
                poller.register(pfd, select.POLLIN)
        max_out = int(lim["max_output_bytes"])
        keep_head = min(max_out, 64 << 10)
        head, tail, total = bytearray(), b"", 0
        output_limit = wall_timeout = False
        out_open = True
        deadline = t0 + float(lim["wall_s"])

        def take(data: bytes) -> None:
            nonlocal head, tail, total
            total += len(data)
            if len(head) < keep_head:
                head += data[: keep_head - len(head)]
            tail = (tail + data)[-4096:]

        while main_pid not in self.statuses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                wall_timeout = True
                break
            for fd, _ev in poller.poll(max(1, int(remaining * 1000) + 1)):
                if fd == out_r:
                    data = os.read(out_r, 1 << 16)
                    if not data:
                        poller.unregister(out_r)
                        out_open = False
                    else:
                        take(data)
                else:
                    poller.unregister(fd)
            self._reap()
            if total > max_out:
                output_limit = True
                break
        self._reap()
        if c_pid not in self.statuses and not (wall_timeout or output_limit) and _is_exiting(c_pid):
            # The tester can finish on the EOF of a dying candidate before the candidate is reapable (its
            # pipes are released before it becomes a zombie). Wait for it, so that its exit status (SIGXCPU:
            # a timeout) is recorded instead of being lost to the sweep.
            c_pidfd = next(pfd for pfd, pid in pidfds.items() if pid == c_pid)
            exiting = select.poll()
            exiting.register(c_pidfd, select.POLLIN)
            exiting.poll(1000)
            self._reap()
        c_status = self._status(self.statuses.get(c_pid))
        t_status = self._status(self.statuses.get(t_pid)) if t_pid is not None else None
        still_running = [p for p in (c_pid, t_pid) if p is not None and p not in self.statuses]
        swept, clean = self._sweep()
        # Output already in the pipe still counts; what daemons wrote after the sweep cannot exist.
        if out_open:
            os.set_blocking(out_r, False)
            try:
                while total <= max_out:
                    data = os.read(out_r, 1 << 16)
                    if not data:
                        break
                    take(data)
            except BlockingIOError:
                pass
            output_limit = output_limit or total > max_out
        os.close(out_r)
        for pfd in pidfds:
            os.close(pfd)
        dirty = self._wipe()
        if not clean:
            dirty = ((dirty + "; ") if dirty else "") + "processes survived the sweep"
        return {
            "job": job["id"],
            "candidate": c_status,
            "tester": t_status,
            "wall_s": round(time.monotonic() - t0, 4),
            "output_bytes": total,
            "output": bytes(head).decode("utf-8", "backslashreplace"),
            "output_tail": tail.decode("utf-8", "backslashreplace"),
            "output_limit": output_limit,
            "wall_timeout": wall_timeout,
            "swept": max(0, swept - len(still_running)),
            "dirty": dirty,
        }

    # -- main loop ------------------------------------------------------------------------------------

    def serve(self) -> None:
        write_frame(self.reply, {"hello": True, "pid1": self.pid1, "python": sys.version.split()[0]})
        while True:
            try:
                job = read_frame(self.ctl, MAX_JOB_BYTES)
            except EOFError:
                break
            write_frame(self.reply, self.run_job(job))
        self._sweep()
        if not self.pid1:
            self._wipe()
            os.rmdir(self.tmp_root)


def _is_exiting(pid: int) -> bool:
    """True if ``pid`` is in the kernel's exit path (``PF_EXITING`` in the flags field of its stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return bool(int(stat[stat.rindex(b")") + 2 :].split()[6]) & 0x4)
    except (OSError, ValueError, IndexError):
        return False


def _remove_tree(path: str) -> None:
    """Delete ``path`` even if the job removed permissions from its own directories."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    stack = [path]
    while stack:
        top = stack[-1]
        os.chmod(top, 0o700)
        pushed = False
        for name in os.listdir(top):
            child = os.path.join(top, name)
            if _stat.S_ISDIR(os.lstat(child).st_mode):
                stack.append(child)
                pushed = True
            else:
                os.unlink(child)
        if not pushed:
            os.rmdir(top)
            stack.pop()


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    # PID 1 gets only signals it handles; SIGINT is the one Python handles by default, so ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(0o077)
    # Non-dumpable: jobs (same uid) cannot ptrace us or open /proc/1/{mem,fd,environ}.
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getpid() != 1:
        # Unsafe mode: die with the host, and adopt orphans so the sweep can find daemons.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if sys.path and sys.path[0] in ("", "."):
        del sys.path[0]
    for module in PREIMPORT:
        try:
            __import__(module)
        except ImportError:
            pass
    Worker(cfg).serve()


if __name__ == "__main__":
    main(sys.argv)
