"""MATH-style answer verifier: the final answer a careful grader reads, compared with the gold by value and symbol.

What: ``MathEquivVerifier`` (registry name ``math_equiv``) grades free-form solutions to competition-math
problems (MATH, MATH-500, any LaTeX-answer set). ``extract`` finds the final answer, ``equivalent`` decides
whether two LaTeX answers denote the same mathematical object (``\\frac12`` = ``0.5`` = ``\\dfrac{1}{2}``,
``1 \\pm \\sqrt2`` = ``{1+\\sqrt2, 1-\\sqrt2}``, ``(1,2)`` != ``(2,1)``).

Why this shape: string normalisation (hendrycks ``is_equiv``) misses equal values written differently, and a
symbolic comparison can hang: sympy on a pathological answer (``\\[\\[\\[...``, ``9^{9^{9}}``) may run for
minutes, and math-verify's own guard is ``signal.alarm``, which works only in the main thread, so inside a
Prefect task thread it raises instead of protecting. So parsing and comparison run in a worker subprocess
that this module starts with ``python -m selfimprove.verifiers.math_equiv --worker``: the worker bounds each
operation with a real-time timer of ``timeout_s``, and the parent kills the worker outright (and starts a
fresh one on the next call) if an answer is still missing after ``1.5 * timeout_s + 1`` seconds, which
covers computations stuck in C code that no signal can interrupt. A timed-out comparison is graded
``status="timeout"``, never ``pass``.

Who does what: the boxed-answer search below is plain Python (linear, no regex backtracking). LaTeX
parsing, free-form extraction and the equivalence test are math-verify's (``math_verify.parse`` /
``math_verify.verify``), which converts LaTeX with ``latex2sympy2_extended`` and compares with sympy.
math-verify is imported only inside the worker, so importing this module stays cheap.

Policy (also in ``docs/verifiers.md``):
- Extraction (``locate_answer``), first found wins: the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces
  matched, ``\\boxed 5`` accepted, empty boxes ignored; adjacent boxes written as a list are one answer, a
  correction cue between them breaks the list; a box never closed means no answer); the clause after the
  last answer phrase ("The final answer is", "Answer:", ``####``); a concluding sentence ("Therefore, ... is
  2/3.") that states one number; the last math span with the spans listed before it; the whole completion
  when it is short (a bare answer). A number inside a larger expression is never the answer; answers joined
  by "or" that differ are a hedge (``fail``); ``exact \\approx approx`` is graded by the exact value.
- Equivalence: the declared ``GradingPolicy`` (``policy.py``: lists, mixed numbers, equation multiples,
  number words, digit groups, percent, decimal comma) rewrites both sides, then math-verify compares in
  strict mode (floats rounded to ``float_rounding`` decimals; ``\\dfrac``/``\\tfrac`` are fractions; units after
  a number dropped; ``90^\\circ`` = 90 but not ``\\frac{\\pi}{2}``; ``x = 5`` = 5; ``\\text{(C)}`` = C). Plain
  decimals and base-n numerals are compared exactly here, before math-verify. The verdict's reason names
  where the answer was found and the rules that applied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import AnswerVerifier
from selfimprove.verifiers.policy import (
    GradingPolicy,
    answer_phrase_span,
    apply_decimal_comma,
    apply_percent,
    bare_tail,
    conclusion_sentence,
    cut_at_turn_end,
    decimal_comma_number,
    drop_approximation,
    has_digit_groups,
    has_mixed_number,
    is_short,
    join_digit_groups,
    last_math_group,
    math_spans,
    mixed_as_product,
    mixed_to_fraction,
    percent_signs,
    phrase_candidate,
    prose_number,
    read_number_words,
    sentences,
    split_alternatives,
    uses_decimal_point,
)

log = logging.getLogger(__name__)

MatchType = Literal["latex", "expr"]


class MathEquivConfig(Strict):
    """Options of the ``math_equiv`` verifier (``verify.math_equiv.*`` in params.yaml)."""

    timeout_s: float = Field(default=5.0, gt=0, description="Wall-clock limit per extraction or comparison.")
    match_types: list[MatchType] = Field(
        default_factory=lambda: ["latex", "expr"],
        description="Free-form extraction when a completion has no \\boxed{}: 'latex' (answer markers, last "
        "LaTeX span), 'expr' (plain numbers/expressions); [] = boxed answers only.",
    )
    float_rounding: int = Field(default=6, ge=0, description="Decimals kept when comparing floats.")
    numeric_precision: int = Field(default=15, ge=1, description="Significant digits for numeric evaluation.")
    strict: bool = Field(
        default=True, description="False: variables matched by position, sets vs tuples allowed."
    )
    allow_set_relation_comp: bool = Field(
        default=False, description="True: '1 < x < 2' may equal '(1, 2)' whatever side is the gold."
    )
    policy: GradingPolicy = Field(
        default_factory=GradingPolicy,
        description="Declared grading rules (lists, mixed numbers, equations, number words, digit groups, "
        "percent, decimal comma); see docs/verifiers.md.",
    )
    bare_max_chars: int = Field(
        default=120, ge=0, description="A completion this short with no box, phrase or math span is the answer."
    )
    workers: int = Field(default=1, ge=1, description="Worker processes used by verify() on a batch.")
    memory_mb: int = Field(default=4096, ge=256, description="Address-space cap of each worker process.")
    cache_size: int = Field(default=65536, ge=0, description="Comparisons memoised in the parent (0 = off).")


# ------------------------------------------------------------------------------------------ boxed answers

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A gap between two boxes with one of these words means the model revised its answer, not listed two.
_CORRECTION_CUE = re.compile(
    r"\b(?:wait|no|not|actually|instead|mistake|wrong|incorrect|correction|oops|recheck|re-check)\b",
    re.IGNORECASE,
)
_LIST_CONNECTIVE = re.compile(r"\b(?:and|or)\b|[,;]")
_UNBRACED_TOKEN_END = re.compile(r"[\s$]")


@dataclass(frozen=True)
class Box:
    """One ``\\boxed``/``\\fbox`` occurrence: its content (None if never closed) and its span in the text."""

    content: str | None
    start: int
    end: int


def brace_pairs(text: str) -> dict[int, int]:
    """Map each ``{`` to its closing ``}`` in one pass; escaped braces (``\\{``) do not group.

    >>> brace_pairs(r"{a\\}{b}}")
    {4: 6, 0: 7}
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # \{ \} \\ are characters, not groups
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _box_span(text: str, start: int, pairs: Mapping[int, int]) -> tuple[int, int, int] | None:
    """``(content_start, content_end, box_end)`` of the command at ``start``; content_end -1 = never closed.

    None if the command is only a prefix of a longer one (``\\boxedsymbol``) or has no argument.
    """
    n = len(text)
    cmd_end = start + (6 if text.startswith("\\boxed", start) else 5)
    if cmd_end < n and text[cmd_end].isalpha():
        return None
    j = cmd_end
    while j < n and text[j].isspace():
        j += 1
    if j < n and text[j] == "{":
        close = pairs.get(j)
        return (j + 1, -1, n) if close is None else (j + 1, close, close + 1)
    if cmd_end < j < n:  # \boxed 5: the argument is the next token
        m = _UNBRACED_TOKEN_END.search(text, j)
        end = m.start() if m else n
        while end > j and text[end - 1] in ".,;:":
            end -= 1
        return j, end, end
    return None


def _box_at(text: str, start: int, pairs: Mapping[int, int]) -> Box | None:
    span = _box_span(text, start, pairs)
    if span is None:
        return None
    lo, hi, end = span
    if hi < 0:
        return Box(None, start, end)
    # \boxed{\boxed{5}} -> 5: a box that is the whole content of a box is redundant (a loop, not recursion,
    # so that thousands of nested boxes cannot exhaust the stack).
    while True:
        while lo < hi and text[lo].isspace():
            lo += 1
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        inner = _box_span(text, lo, pairs) if text.startswith(_BOX_COMMANDS, lo) else None
        if inner is None or inner[1] < 0 or inner[2] != hi:
            break
        lo, hi = inner[0], inner[1]
    return Box(text[lo:hi], start, end)


def find_boxes(text: str) -> list[Box]:
    """All boxes in order of their opening command, nested braces matched, in time linear in the text.

    >>> text = r"so \\boxed{\\frac{1}{2}} or \\fbox{3} or \\boxed 7. \\boxed{\\boxed{8}}"
    >>> [b.content for b in find_boxes(text)]
    ['\\\\frac{1}{2}', '3', '7', '8']
    """
    pairs = brace_pairs(text)
    boxes: list[Box] = []
    next_at = {cmd: text.find(cmd) for cmd in _BOX_COMMANDS}
    pos = 0
    while True:
        for cmd, at in next_at.items():
            if 0 <= at < pos:
                next_at[cmd] = text.find(cmd, pos)
        found = [at for at in next_at.values() if at >= 0]
        if not found:
            return boxes
        start = min(found)
        box = _box_at(text, start, pairs)
        if box is None:
            pos = start + 1
            continue
        boxes.append(box)
        # Boxes opened inside an unclosed box still count; a closed box is skipped as a whole.
        pos = start + 1 if box.content is None else max(box.end, start + 1)


def last_boxed(text: str) -> str | None:
    """Content of the last box (None if there is none, it is empty, or it was never closed).

    >>> last_boxed(r"first \\boxed{3}, then \\boxed{\\frac{a}{b}}.")
    '\\\\frac{a}{b}'
    """
    boxes = [b for b in find_boxes(text) if b.content != ""]
    if not boxes or any(b.content is None for b in boxes):
        return None
    return boxes[-1].content


_OR_GAP = re.compile(r"(?<![\\\w])or(?!\w)", re.IGNORECASE)


def _box_group(text: str) -> list[tuple[str, bool]] | None:
    """The last box and the boxes listed before it: ``(content, joined_by_or)`` in order."""
    boxes = [b for b in find_boxes(text) if b.content != ""]
    if not boxes or any(b.content is None for b in boxes):
        return None  # a box still open at the end: the output was cut off inside it
    group: list[tuple[Box, bool]] = [(boxes[-1], False)]
    for prev in reversed(boxes[:-1]):
        head = group[0][0]
        if prev.content is None:
            break
        gap = text[prev.end : head.start]
        if _CORRECTION_CUE.search(gap):
            break
        listed = len(gap) < 10 or (len(gap) < 70 and _LIST_CONNECTIVE.search(gap) is not None)
        if not listed or (len(gap) >= 10 and prev.content == head.content):
            break
        if prev.content != head.content:
            group[0] = (head, _OR_GAP.search(gap) is not None)
            group.insert(0, (prev, False))
        else:
            group[0] = (prev, group[0][1])  # the same answer boxed twice in a row counts once
    return [(b.content, joined) for b, joined in group if b.content is not None]


def last_boxed_group(text: str) -> list[str] | None:
    """The final answer written as one box or as a list of adjacent boxes; None if there is no usable box.

    >>> last_boxed_group(r"$\\boxed{1}$ and $\\boxed{2}$")
    ['1', '2']
    >>> last_boxed_group(r"\\boxed{3}. Wait, no: \\boxed{4}")
    ['4']
    """
    group = _box_group(text)
    return None if group is None else [c for c, _ in group]


def _join_group(group: list[tuple[str, bool]]) -> str:
    out = group[0][0]
    for content, by_or in group[1:]:
        out += (r" \text{ or } " if by_or else ", ") + content
    return out


_ENCLOSING = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_FINAL_ANSWER_PHRASE = re.compile(r"final answer is", re.IGNORECASE)

Source = Literal["box", "phrase", "conclusion", "math_span", "bare", "truncated", "none"]


@dataclass(frozen=True)
class Located:
    """Where a completion's final answer is, and the candidate answer text (None: no answer)."""

    kind: Source
    answer: str | None = None


def locate_answer(text: str, match_types: Sequence[str] = ("latex", "expr"), bare_max_chars: int = 120) -> Located:
    """The candidate a careful grader reads, in this order (the first that exists wins):

    1. the last ``\\boxed{}``/``\\fbox{}`` (a list of adjacent boxes is one answer), unless the Minerva phrase
       "final answer is" follows it; a box never closed means the output was cut off: no answer;
    2. ``latex``: the last answer phrase ("The final answer is", "answer:", "answer is", ``####``) and the
       math or text after it up to the end of its sentence;
    3. ``latex``: the last display or inline math span;
    4. ``expr``: the whole completion when it is short (a bare answer).

    Nothing else: a number found somewhere in prose, or inside a larger expression, is never the answer.

    >>> locate_answer(r"so \\boxed{1} and \\boxed{2}.")
    Located(kind='box', answer='1, 2')
    >>> locate_answer(r"\\boxed{200} ... Final Answer: The final answer is $10,455$. I hope it is correct.")
    Located(kind='phrase', answer='10,455')
    >>> locate_answer(r"the answer is \\boxed{12").kind
    'truncated'
    >>> locate_answer(r"\\dfrac{3}{4}")
    Located(kind='bare', answer='\\\\dfrac{3}{4}')
    """
    text = cut_at_turn_end(text)
    boxes = find_boxes(text)
    if any(b.content is None for b in boxes):
        return Located("truncated")  # everything after an unclosed box is inside it: the output was cut off
    after = boxes[-1].end if boxes else 0
    phrase_after_box = boxes and "latex" in match_types and _FINAL_ANSWER_PHRASE.search(text, after)
    group = None if phrase_after_box else _box_group(text)
    if group:
        return Located("box", answer=_join_group(group))
    if "latex" in match_types:
        found = answer_phrase_span(text, after)
        if found is not None and found[0].text:
            cand = phrase_candidate(found[0].text)
            if cand:
                return Located("phrase", answer=cand)
        tail = text[after:]
        concl = conclusion_sentence(tail)
        if concl is not None and not math_spans(concl):
            value = prose_number(concl)
            if value is not None:
                return Located("conclusion", answer=value)
        group = last_math_group(tail)
        if group:
            return Located("math_span", answer=group)
    if "expr" in match_types and is_short(text, bare_max_chars):
        return Located("bare", answer=bare_tail(text))
    if "expr" in match_types and len(text.strip()) <= bare_max_chars and len(sentences(text)) == 1:
        value = prose_number(text)  # one short sentence of prose: 'the number is not 10 which is 1,000.99'
        if value is not None:
            return Located("bare", answer=value)
    return Located("none")


def clean_answer(answer: str) -> str:
    """Strip what is never part of an answer: enclosing math delimiters, a final period, a dangling backslash.

    >>> clean_answer(r"$\\frac{2}{3}$.")
    '\\\\frac{2}{3}'
    """
    s = answer.strip()
    changed = True
    for _ in range(8):  # bounded: "$$$$...$" must not cost quadratic time
        if not (changed and s):
            break
        changed = False
        stripped = s.rstrip(" .,;:") if not s.endswith("..") else s
        if stripped != s:
            s, changed = stripped.strip(), True
        if s.endswith("\\") and (len(s) - len(s.rstrip("\\"))) % 2 == 1:
            s, changed = s[:-1].rstrip(), True
        for left, right in _ENCLOSING:
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s, changed = s[len(left) : -len(right)].strip(), True
                break
        if s.startswith("{") and s.endswith("}") and brace_pairs(s).get(0) == len(s) - 1:
            s, changed = s[1:-1].strip(), True  # TeX grouping braces print nothing: '{35 cm,4}' is '35 cm,4'
    return s


def _top_level_comma(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return True
        i += 1
    return False


def as_ordered(answer: str) -> str:
    """Read a bare list as an ordered tuple (``policy.unordered_lists: false``); thousands commas stay.

    >>> as_ordered("10, 4, -2"), as_ordered("(1, 2)"), as_ordered("1,000")
    ('(10, 4, -2)', '(1, 2)', '1,000')
    """
    if _THOUSANDS.match(answer.replace(" ", "")) or not _top_level_comma(answer):
        return answer
    return f"({answer})"


_PLAIN_DECIMAL = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
_BASE_NUMERAL = re.compile(r"^([0-9A-Za-z]+)\s*_\s*\{?\s*(\d+)\s*\}?$")


def literal_equal(answer: str, reference: str) -> bool | None:
    """Decide the cases math-verify gets wrong before it runs; None = let math-verify decide.

    Two plain decimals are compared exactly: math-verify rounds floats to ``float_rounding`` decimal places,
    which makes ``.0000672`` equal ``.0000673``. Base-n numerals (``204_5``) are compared digit by digit:
    math-verify drops the subscript, which makes ``204_5`` equal ``204_6``. A missing base on one side is
    read as the question's base.

    >>> literal_equal("72.00", "72"), literal_equal(".0000672", ".0000673"), literal_equal("1,080", "1080")
    (True, False, True)
    >>> literal_equal("204_5", "204_{6}"), literal_equal("204", "204_5"), literal_equal("x", "1")
    (False, True, None)
    """
    from decimal import Decimal, InvalidOperation

    a, b = clean_answer(answer), clean_answer(reference)
    if _PLAIN_DECIMAL.match(a) and _PLAIN_DECIMAL.match(b) and any(c.isdigit() for c in a + b):
        try:
            return Decimal(a.replace(",", "")) == Decimal(b.replace(",", ""))
        except InvalidOperation:
            return None
    ma, mb = _BASE_NUMERAL.match(a), _BASE_NUMERAL.match(b)
    if ma is None and mb is None:
        return None
    digits_a, base_a = (ma.group(1), ma.group(2)) if ma else (a, None)
    digits_b, base_b = (mb.group(1), mb.group(2)) if mb else (b, None)
    if not (digits_a.isalnum() and digits_b.isalnum()):
        return None
    if base_a is not None and base_b is not None and int(base_a) != int(base_b):
        return False
    return digits_a.lower().lstrip("0") == digits_b.lower().lstrip("0")


# ------------------------------------------------------------------------------------ worker (child side)


class _Deadline(BaseException):
    """Raised by the worker's timer; a BaseException, so math-verify's ``except Exception`` passes it on."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Deadline()


_WORKER_STATE: dict[str, Any] = {}


def _w_configs(match_types: Sequence[str]) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    out: list[Any] = []
    if "latex" in match_types:
        out.append(LatexExtractionConfig(boxed_match_priority=0))
    if "expr" in match_types:
        out.append(ExprExtractionConfig())
    return out


def _w_parse_answer(answer: str, opts: Mapping[str, Any]) -> list[Any]:
    """Parse a bare answer (what ``extract`` returns, or a gold ``answer`` field) with math-verify."""
    from math_verify import parse

    ordered = bool(opts.get("ordered_lists"))
    key = (answer, ordered)
    cache: OrderedDict[tuple[str, bool], list[Any]] = _WORKER_STATE.setdefault("parsed", OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    # One line: LaTeX treats a newline as a space, math-verify's inline pattern does not.
    body = " ".join(clean_answer(answer).split())
    if ordered:
        body = as_ordered(body)
    parsed = parse(f"\\boxed{{{body}}}", _w_configs(["latex", "expr"]), parsing_timeout=None) if body else []
    if body and not parsed:
        # Free-form parsing finds *a* number or expression in the text; it counts only if it is the whole
        # answer, never a number inside a larger expression.
        loose = parse(body, _w_configs(["latex", "expr"]), parsing_timeout=None)
        if loose and isinstance(loose[-1], str) and _squash(loose[-1]) == _squash(body):
            parsed = loose
    cache[key] = parsed
    if len(cache) > 256:
        cache.popitem(last=False)
    return parsed


def _squash(s: str) -> str:
    return "".join(clean_answer(s).split()).replace("\\left", "").replace("\\right", "")


def _w_answer_string(parsed: list[Any]) -> str | None:
    from math_verify.grader import get_pct_val

    if not parsed:
        return None
    text = clean_answer(parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0]))
    # math-verify reads "28 percent" as 28/100 but returns the bare digits as its string; keep the sign.
    if get_pct_val(parsed[0]) is not None and "%" not in text:
        text = f"{text}\\%"
    return text or None


def _w_extract_free(text: str, match_types: Sequence[str]) -> tuple[str | None, list[Any]]:
    """math-verify's free-form extraction (answer phrases, last LaTeX span, plain numbers)."""
    from math_verify import parse

    configs = _w_configs(match_types)
    if not configs:
        return None, []
    parsed = parse(text, configs, parsing_timeout=None)
    return _w_answer_string(parsed), parsed


def _w_verify(gold: list[Any], pred: list[Any], opts: Mapping[str, Any]) -> bool:
    from math_verify import verify

    if not gold or not pred:
        return False
    if not opts.get("equation_multiples", True):
        strict_eq = _w_same_sides(gold[0], pred[0])
        if strict_eq is not None:
            return strict_eq
    return bool(
        verify(
            gold,
            pred,
            float_rounding=opts["float_rounding"],
            numeric_precision=opts["numeric_precision"],
            strict=opts["strict"],
            allow_set_relation_comp=opts["allow_set_relation_comp"],
            timeout_seconds=None,
        )
    )


def _w_same_sides(gold: Any, pred: Any) -> bool | None:
    """With ``equation_multiples: false``: two equations are equal only side by side (either orientation)."""
    from sympy import Eq, simplify

    if not (isinstance(gold, Eq) and isinstance(pred, Eq)):
        return None

    def same(a: Any, b: Any) -> bool:
        return bool(simplify(a - b) == 0)

    return (same(gold.lhs, pred.lhs) and same(gold.rhs, pred.rhs)) or (
        same(gold.lhs, pred.rhs) and same(gold.rhs, pred.lhs)
    )


def _w_handle(req: Mapping[str, Any]) -> dict[str, Any]:
    op = req["op"]
    opts = req.get("opts", {})
    match_types = opts.get("match_types", ["latex", "expr"])
    if op == "ping":
        return {"ok": True}
    if op == "extract":
        answer, _ = _w_extract_free(req["text"], match_types)
        return {"answer": answer}
    if op == "equiv":
        gold = _w_parse_answer(req["reference"], opts)
        return {"equal": _w_verify(gold, _w_parse_answer(req["answer"], opts), opts)}
    raise ValueError(f"unknown worker op {op!r}")


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; in the worker our timer replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


def _worker_main() -> None:
    """Serve JSON-line requests on stdin until EOF; one JSON-line reply per request on the protocol fd."""
    # The protocol gets a private copy of stdout; fd 1 is pointed at stderr so that a stray print in a
    # library cannot corrupt the replies.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    memory_mb = int(os.environ.get("SELFIMPROVE_MATH_WORKER_MEMORY_MB", "0"))
    if memory_mb > 0:
        with contextlib.suppress(ValueError, OSError, ImportError):
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutWarning())
    import math_verify  # noqa: F401  (import before "ready" so the first request's timer measures only work)

    signal.signal(signal.SIGALRM, _on_alarm)
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        reply: dict[str, Any] = {"id": req.get("id")}
        signal.setitimer(signal.ITIMER_REAL, float(req.get("timeout_s", 5.0)))
        try:
            reply.update(_w_handle(req))
        except _Deadline:
            reply["timeout"] = True
        except MemoryError:
            reply["error"] = "memory"
        except RecursionError:
            reply["error"] = "recursion"
        except Exception as e:  # noqa: BLE001  (a parser bug on one answer must not end the worker)
            reply["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            proto.write(json.dumps(reply, ensure_ascii=False) + "\n")
        except _Deadline:  # the timer fired between the op's end and the cancel above
            proto.write(json.dumps({"id": req.get("id"), "timeout": True}) + "\n")


# ----------------------------------------------------------------------------------- worker (parent side)


class WorkerTimeout(RuntimeError):
    """A worker did not answer in time (it is killed; the next request starts a fresh one)."""


class WorkerFailure(RuntimeError):
    """A worker died or reported an error for one request."""


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


class _Worker:
    """One math-verify worker process, started on first use and restarted after a kill or crash."""

    START_TIMEOUT_S = 120.0

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._next_id = 0
        self._finalizer: weakref.finalize | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _start(self) -> None:
        import selfimprove

        pkg_root = str(Path(selfimprove.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        env["SELFIMPROVE_MATH_WORKER_MEMORY_MB"] = str(self.memory_mb)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfimprove.verifiers.math_equiv", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle, not the worker's
        )
        self._buf = b""
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        try:
            hello = self._read_line(time.monotonic() + self.START_TIMEOUT_S)
        except WorkerTimeout:
            self.close()
            raise WorkerFailure(f"math worker did not start within {self.START_TIMEOUT_S:.0f} s") from None
        if not json.loads(hello).get("ready"):
            self.close()
            raise WorkerFailure(f"math worker sent {hello!r} instead of a ready message")

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerTimeout()
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.poll()
                    raise WorkerFailure(f"math worker exited (code {code})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8")

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request; raise WorkerTimeout (worker killed) or WorkerFailure (worker gone)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        payload = {**payload, "id": self._next_id, "timeout_s": timeout_s}
        try:
            self.proc.stdin.write((json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
            # The worker's own timer fires at timeout_s; the margin covers work stuck in C code.
            hard_limit = 1.5 * timeout_s + 1.0
            reply = json.loads(self._read_line(time.monotonic() + hard_limit))
        except WorkerTimeout:
            log.warning("math worker pid %s sent no reply within %.1f s; killing it", self.pid, hard_limit)
            self.close()
            raise
        except (BrokenPipeError, WorkerFailure) as e:
            self.close()
            raise WorkerFailure(str(e) or "math worker pipe closed") from None
        if reply.get("id") != self._next_id:
            self.close()
            raise WorkerFailure(f"math worker answered request {reply.get('id')} for {self._next_id}")
        return reply

    def close(self) -> None:
        _kill(self.proc)
        if self._finalizer is not None:
            self._finalizer.detach()
        self.proc = None
        self._buf = b""


class _Pool:
    """Worker processes shared by a verifier and its ``with_options`` views (options travel per request)."""

    def __init__(self, size: int, memory_mb: int):
        self.size = size
        self.memory_mb = memory_mb
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            if not self._all:
                for _ in range(self.size):
                    w = _Worker(self.memory_mb)
                    self._all.append(w)
                    self._idle.put(w)
        worker = self._idle.get()
        try:
            return worker.request(payload, timeout_s)
        except WorkerTimeout:
            return {"timeout": True}
        except WorkerFailure as e:
            return {"error": f"worker failure: {e}"}
        finally:
            self._idle.put(worker)

    def pids(self) -> list[int]:
        return [pid for w in self._all if (pid := w.pid) is not None]

    def close(self) -> None:
        for w in self._all:
            w.close()


# --------------------------------------------------------------------------------------------- verifier

Outcome = Literal["equal", "different", "timeout", "memory", "error"]


class MathEquivVerifier(AnswerVerifier):
    """Last-boxed answer vs gold LaTeX answer, equal by value or symbol (math-verify), time-bounded."""

    name: ClassVar[str] = "math_equiv"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = MathEquivConfig(**options)
        self._pool = _Pool(self.config.workers, self.config.memory_mb)
        self._owns_pool = True
        self._cache: OrderedDict[tuple[str, str], Outcome] = OrderedDict()
        self._cache_lock = threading.Lock()

    def with_options(self, **overrides: Any) -> MathEquivVerifier:
        """A verifier with other comparison options that reuses this one's worker processes.

        Starting a worker costs about 1.5 s (sympy import), so graders that switch settings per record use
        views. Closing a view leaves the workers running; closing this verifier stops them.
        """
        fixed = {"workers", "memory_mb"} & set(overrides)
        if fixed:
            raise ValueError(f"with_options cannot change {sorted(fixed)}: they size the shared worker pool")
        view = MathEquivVerifier(**{**self.options, **overrides})
        view._pool, view._owns_pool = self._pool, False
        return view

    # -- worker pool

    def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        opts = self.config.model_dump(
            include={"match_types", "float_rounding", "numeric_precision", "strict", "allow_set_relation_comp"}
        )
        opts["ordered_lists"] = not self.config.policy.unordered_lists
        opts["equation_multiples"] = self.config.policy.equation_multiples
        return self._pool.request({**payload, "opts": opts}, self.config.timeout_s)

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (for monitoring and tests)."""
        return self._pool.pids()

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the AnswerVerifier interface

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        """The final answer a careful grader reads (``locate_answer``), cleaned; None if there is none."""
        where = locate_answer(text, self.config.match_types, self.config.bare_max_chars)
        if where.answer is None:
            return None
        answer, _ = drop_approximation(clean_answer(where.answer))
        return answer or None

    def compare(self, answer: str, reference: str) -> Outcome:
        """Equivalence under the policy, with the reason a comparison gave no verdict ('timeout', 'error')."""
        return self.compare_detail(answer, reference)[0]

    def compare_detail(self, answer: str, reference: str) -> tuple[Outcome, list[str], str | None]:
        """``(outcome, rules used, refusal)``: a refusal is a policy rule that decides 'different' by itself."""
        prep = prepare(answer, reference, self.config.policy)
        if prep.refusal is not None:
            return "different", prep.rules, prep.refusal
        a, g = prep.answer, prep.gold
        if a.strip() == g.strip() and a.strip():
            return "equal", prep.rules, None
        literal = literal_equal(a, g)
        if literal is not None:
            return ("equal" if literal else "different"), prep.rules, None
        key = (a, g)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], prep.rules, None
        outcome = _outcome(self._call({"op": "equiv", "answer": a, "reference": g}))
        self._remember(key, outcome)
        return outcome, prep.rules, None

    def equivalent(self, answer: str, reference: str) -> bool:
        return self.compare(answer, reference) == "equal"

    def _remember(self, key: tuple[str, str], outcome: Outcome) -> None:
        # Only verdicts are memoised: a timeout may come from a worker that was stuck, not from the input.
        if self.config.cache_size <= 0 or outcome not in ("equal", "different"):
            return
        with self._cache_lock:
            self._cache[key] = outcome
            if len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)

    def check(self, problem: Problem, completion: Completion) -> Verdict:
        """Locate the answer, refuse hedges, apply the policy, compare with math-verify in a worker."""
        t0 = time.perf_counter()
        gold = self.require_gold(problem, self.name)
        where = locate_answer(completion.text, self.config.match_types, self.config.bare_max_chars)
        if where.answer is None:
            reason = (
                "the last \\boxed{} is never closed (output cut off?)"
                if where.kind == "truncated"
                else "no final answer: no \\boxed{}, answer phrase or math span, and the completion is too long "
                f"(> {self.config.bare_max_chars} characters) or too wordy to be a bare answer"
            )
            return self.verdict(completion, None, gold, False, t0, reason=reason)
        answer = clean_answer(where.answer)
        rules: list[str] = []
        parts = split_alternatives(answer)
        if len(parts) > 1:
            if is_list_answer(gold):
                answer = ", ".join(parts)
                rules.append("or_list")
            else:
                outcomes = [self.compare(part, parts[0]) for part in parts[1:]]
                if all(o == "equal" for o in outcomes):
                    answer = parts[0]
                    rules.append("hedge_same")
                else:
                    return self.verdict(
                        completion, answer, gold, False, t0, status="fail",
                        reason=f"hedged: the answer names {len(parts)} different candidates "
                        f"({'; '.join(parts)}) where one is expected (rule: hedge)",
                    )
        outcome, used, refusal = self.compare_detail(answer, gold)
        rules += used
        passed = outcome == "equal"
        status: str | None = None
        if outcome == "timeout":
            status, reason = "timeout", f"comparison did not finish within {self.config.timeout_s:g} s"
        elif outcome == "memory":
            status, reason = "memory", f"comparison exceeded the worker's {self.config.memory_mb} MB"
        elif outcome == "error":
            status, reason = "infra_error", "the math worker failed on this completion"
        elif refusal is not None:
            reason = f"answer {answer!r} != gold {gold!r}: {refusal}"
        else:
            head = "answer matches gold" if passed else f"answer {answer!r} != gold {gold!r}"
            reason = head + f" ({where.kind}"
            reason += f"; rules: {', '.join(dict.fromkeys(rules))})" if rules else ")"
        return self.verdict(completion, answer, gold, passed, t0, status, reason)

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        if self.config.workers <= 1 or len(completions) <= 1:
            return [self.check(problems[c.problem_id], c) for c in completions]
        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            return list(pool.map(lambda c: self.check(problems[c.problem_id], c), completions))


# ------------------------------------------------------------------------------------- the policy, applied

_FUNCTION_WORDS = {
    "dfrac", "tfrac", "cfrac", "left", "right", "cdot", "times", "le", "ge", "leq", "geq", "neq", "in", "cup", "cap",
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log",
    "ln", "exp", "lim", "max", "min", "gcd", "lcm", "mod", "deg", "det", "pi", "sqrt", "frac", "infty",
}
_PLAIN_WORD = re.compile(r"[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mathsf|mathbb|mathcal|mbox|operatorname|begin|end)\s*\{[^{}]*\}")


def textify_words(s: str) -> str:
    """Wrap plain prose words in ``\\text{}`` so math-verify reads them as a label, not as letters multiplied.

    ``42 apples`` -> ``42 \\text{apples}`` (a unit after a number, which math-verify drops); ``Evelyn`` ->
    ``\\text{Evelyn}``. Words inside LaTeX commands and ``\\text{}`` groups, and function names, stay.

    >>> textify_words(r"42 apples"), textify_words(r"\\sqrt{2} \\text{ cm}"), textify_words("x^2 + 1")
    ('42 \\\\text{apples}', '\\\\sqrt{2} \\\\text{ cm}', 'x^2 + 1')
    """
    out: list[str] = []
    i, n = 0, len(s)
    plain_start = 0

    def flush(end: int) -> None:
        chunk = s[plain_start:end]

        def wrap(m: re.Match[str]) -> str:
            words = m.group(0).split()
            if all(w.lower() in _FUNCTION_WORDS for w in words) or any(sum(c.isupper() for c in w) > 1 for w in words):
                return m.group(0)  # function names; point and segment names (AB, NO)
            if m.start() > 0 and chunk[m.start() - 1] == "{" and chunk[m.end() : m.end() + 1] == "}":
                return m.group(0)  # a command's argument ({cc} after \\begin{array}, {NO} in \\frac{NO}{BO})
            return f"\\text{{{m.group(0)}}}"

        out.append(_PLAIN_WORD.sub(wrap, chunk))

    while i < n:
        if s.startswith("\\\\", i) and i + 2 < n and s[i + 2].isalpha():
            i += 1  # '\\\\frac' in an over-escaped answer is the command \\frac
            continue
        if s[i] == "\\":
            m = _TEXT_GROUP.match(s, i)
            j = m.end() if m else i + 1
            if not m:
                while j < n and s[j].isalpha():
                    j += 1
                j = max(j, i + 2)
            flush(i)
            out.append(s[i:j])
            i = plain_start = j
            continue
        i += 1
    flush(n)
    return "".join(out)


def is_list_answer(gold: str) -> bool:
    """A gold that lists several solutions: a top-level comma (not a thousands group), ``\\pm`` or "or"."""
    g = clean_answer(gold)
    if _THOUSANDS.match(g.replace(" ", "")):
        return False
    if "\\pm" in g or "\\mp" in g or len(split_alternatives(g)) > 1:
        return True
    if g.startswith(("(", "[", "\\left(", "\\begin")) and g.endswith((")", "]", "\\right)", "}")):
        return False  # a tuple, interval or matrix is one answer
    return _top_level_comma(g)


_SCALE_WORD = re.compile(r"\d\s*(?:\\text\{\s*)?(?:hundred|thousand|million|billion|trillion)\b", re.IGNORECASE)

RULE_TEXT = {
    "approximation": "exact ≈ approx is graded by the exact value",
    "digit_groups": "digit groups separated by spaces are one number",
    "number_words": "number words are numbers",
    "mixed_numbers": "a mixed number is its value",
    "mixed_as_product": "mixed_numbers: false, so 2\\frac12 is read as 2·½",
    "decimal_comma": "decimal_comma: true, so 3,5 is 3.5",
    "unordered_lists": "lists of solutions compare as sets",
    "ordered_lists": "unordered_lists: false, so lists compare in order",
    "equation_multiples": "an equation equals its nonzero multiples",
    "equation_sides": "equation_multiples: false, so both sides must match",
}


@dataclass
class Prepared:
    """An answer and its gold rewritten by the policy, the rules used, and a refusal that decides by itself."""

    answer: str
    gold: str
    rules: list[str]
    refusal: str | None = None


def prepare(answer: str, gold: str, policy: GradingPolicy) -> Prepared:
    """Apply the declared policy to both sides, in a fixed order, recording which rule changed what.

    >>> prepare(r"50\\%", "0.5", GradingPolicy()).answer, prepare("1 000 000", "10^6", GradingPolicy()).answer
    ('50', '1000000')
    >>> prepare("3,5", "3.5", GradingPolicy()).refusal
    'decimal comma: 3,5 is not 3.5 when the gold writes decimals with a point (policy.decimal_comma: false)'
    """
    rules: list[str] = []
    a, g = clean_answer(answer), clean_answer(gold)
    a, approx = drop_approximation(a)
    g, _ = drop_approximation(g)
    if approx:
        rules.append("approximation")
    gold_parts = split_alternatives(g)
    if len(gold_parts) > 1:
        g = ", ".join(gold_parts)  # a gold 'x=1 or x=2' lists its solutions
    answer_parts = split_alternatives(a)
    if len(answer_parts) > 1 and is_list_answer(g):
        a = ", ".join(answer_parts)
        rules.append("or_list")
    if policy.number_words:
        a, ch_a = read_number_words(a)
        g, ch_g = read_number_words(g)
        if ch_a or ch_g:
            rules.append("number_words")
    elif _SCALE_WORD.search(a) and not _SCALE_WORD.search(g):
        return Prepared(a, g, rules, "number words are not numbers (policy.number_words: false)")
    if policy.digit_groups:
        a, ch_a = join_digit_groups(a)
        g, ch_g = join_digit_groups(g)
        if ch_a or ch_g:
            rules.append("digit_groups")
    elif has_digit_groups(a):
        return Prepared(a, g, rules, "digit groups are not joined into one number (policy.digit_groups: false)")
    # A comma inside a number only reads as a decimal point against a gold that is one number (not a list).
    comma = decimal_comma_number(a)
    if policy.decimal_comma:
        if comma is not None and _ONE_NUMBER.fullmatch(g):
            a, _ = apply_decimal_comma(a)
            rules.append("decimal_comma")
        elif decimal_comma_number(g) is not None and _ONE_NUMBER.fullmatch(a):
            g, _ = apply_decimal_comma(g)
            rules.append("decimal_comma")
    elif comma is not None and not _top_level_comma(g):
        if uses_decimal_point(g):
            return Prepared(
                a, g, rules,
                f"decimal comma: {comma.group(0)} is not {comma.group(1)}.{comma.group(2)} when the gold writes "
                "decimals with a point (policy.decimal_comma: false)",
            )
    if policy.mixed_numbers:
        a, ch_a = mixed_to_fraction(a)
        g, ch_g = mixed_to_fraction(g)
        if ch_a or ch_g or has_mixed_number(a):
            rules.append("mixed_numbers")
    elif has_mixed_number(a) or has_mixed_number(g):
        a, _ = mixed_as_product(a)
        g, _ = mixed_as_product(g)
        rules.append("mixed_as_product")
    pa, pg = percent_signs(a), percent_signs(g)
    if pa or pg:
        rule = policy.percent
        if rule == "strict" and pa != pg:
            return Prepared(a, g, rules, "percent=strict: a percentage equals only a percentage")
        if rule == "strict":
            rule = "label"
        a, _ = apply_percent(a, rule)
        g, _ = apply_percent(g, rule)
        rules.append(f"percent={policy.percent}")
    a, g = textify_words(a), textify_words(g)
    if is_list_answer(g):
        rules.append("unordered_lists" if policy.unordered_lists else "ordered_lists")
    if "=" in a and "=" in g and _squash_eq(a) != _squash_eq(g):
        rules.append("equation_multiples" if policy.equation_multiples else "equation_sides")
    return Prepared(a, g, rules)


_ONE_NUMBER = re.compile(r"\s*-?(?:\d+(?:\.\d*)?|\.\d+)\s*")


def _squash_eq(s: str) -> str:
    return "".join(s.split())


def _outcome(reply: Mapping[str, Any]) -> Outcome:
    if reply.get("timeout"):
        return "timeout"
    if "error" in reply:
        log.debug("math worker error: %s", reply["error"])
        return "memory" if reply["error"] == "memory" else "error"
    return "equal" if reply.get("equal") else "different"


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        sys.exit("usage: python -m selfimprove.verifiers.math_equiv --worker  (started by MathEquivVerifier)")
