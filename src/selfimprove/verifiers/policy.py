"""The declared grading policy of the answer verifiers, and the text rules that implement it.

What: ``GradingPolicy`` (``verify.gsm8k.policy``, ``verify.math_equiv.policy`` in params.yaml) names each
decision a careful grader makes that an equivalence library cannot know: is ``50%`` the same answer as ``50``
or as ``0.5``? Is ``3,5`` three and a half? Is ``1 000 000`` one number? Each rule has a default (the one a
human grader of GSM8K/MATH applies) and can be switched. The functions below are pure string rewriting,
applied in the same way to the answer and to the gold before the values are compared, and each returns the
names of the rules it used, so that a verdict's ``reason`` can name the rule that decided.

Also here, shared by both verifiers: where the final answer is in a completion (``answer_phrase_span``,
``last_math_span``, ``is_short``), and the two readings a grader refuses to guess on: a **hedge** (two
different candidates joined by "or") and an **approximation** (``exact ≈ approx`` is graded by the exact
value, so ``\\frac13 \\approx 0.33`` is one third).

Which library does what: nothing here parses mathematics. math-verify parses and compares LaTeX
(``math_equiv``), ``fractions.Fraction`` compares GSM8K numbers; this module only decides *which* text is the
answer and *which* reading of a surface form the policy allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from selfimprove.options import Strict

PercentRule = Literal["label", "fraction", "either", "strict"]


class GradingPolicy(Strict):
    """Rules a grader must declare; every verdict's ``reason`` names the rule that decided it."""


    unordered_lists: bool = Field(
        default=True,
        description="A list of solutions ('2, -1', 'x=2 or x=-1') equals the same values in any order; "
        "a parenthesised tuple stays ordered. False: lists compare in order (math_equiv only).",
    )
    mixed_numbers: bool = Field(
        default=True, description="'2 1/2' and '2\\frac{1}{2}' are 5/2. False: they are not numbers the gold can equal."
    )
    equation_multiples: bool = Field(
        default=True,
        description="Two equations are equal when one is a nonzero multiple of the other (2x-y=3 = 4x-2y=6). "
        "False: both sides must match (math_equiv only).",
    )
    number_words: bool = Field(
        default=True, description="'1 million', '2.5 billion', 'twelve' are numbers. False: words are not numbers."
    )
    digit_groups: bool = Field(
        default=True,
        description="'1 000 000', '1\\,000' and thin-space groups are one number. False: such an answer is refused.",
    )
    percent: PercentRule = Field(
        default="label",
        description="'label': % is a unit label (50% = 50, 50% != 0.5); 'fraction': 50% = 0.5 only; "
        "'either': both; 'strict': a percentage equals only a percentage.",
    )
    decimal_comma: bool = Field(
        default=False,
        description="True: '3,5' is 3.5. False: a comma before 1-2 digits is not a decimal point when the gold "
        "writes its decimals with a point.",
    )


# -------------------------------------------------------------------------------------- number surface forms

_GROUP_SEP = r"(?:\\,|\\;|\\:|\\ |\\!|\{,\}|[ \u2009\u202f\u00a0])"
# Three-digit groups after a 1-3 digit head; the separator is the same throughout ("1 000 000").
_DIGIT_GROUPS = re.compile(rf"(?<![\d.,])(\d{{1,3}})((?:{_GROUP_SEP}\d{{3}})+)(?![\d])")
_SEP_ONLY = re.compile(_GROUP_SEP)
_DECIMAL_COMMA = re.compile(r"(?<![\d,.])(-?(?:0|\d+(?=,(?:\d{1,2}|\d{4,})(?![\d,])))),(\d+)(?![\d,])")
_NUMBER_BEFORE_PERCENT = re.compile(
    r"(?P<num>-?(?:\d+(?:\.\d*)?|\.\d+|\\frac\{[^{}]*\}\{[^{}]*\}))(?P<pct>\s*(?:\\%|%|\\text\{\s*percent\s*\}|\s?percent\b))"
)
_SMALL_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS_WORDS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_WORD = r"(?:" + "|".join(sorted([*_SMALL_WORDS, *_TENS_WORDS], key=len, reverse=True)) + r")"
_WORD_NUMBER = re.compile(
    rf"(?<![\w\\])(?P<words>{_WORD}(?:[-\s]{_WORD})?)(?:\s+(?P<scale1>hundred|thousand|million|billion|trillion))?(?!\w)",
    re.IGNORECASE,
)
_SCALED_NUMBER = re.compile(
    r"(?P<num>\d+(?:\.\d+)?)\s*(?:\\text\{\s*|\\mbox\{\s*|\\,|~)?(?P<scale>hundred|thousand|million|billion|trillion)\s*\}?(?!\w)",
    re.IGNORECASE,
)
_MIXED_TEXT = re.compile(r"(?<![\d./])(?P<sign>-)?(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d./])")
_MIXED_LATEX = re.compile(r"(?<![\d.])(?P<whole>\d+)\s*(?P<frac>\\[dt]?frac)(?=\s*[{\d])")


def join_digit_groups(s: str) -> tuple[str, bool]:
    """``1 000 000`` / ``1\\,000`` / ``12{,}345`` -> digits; True if a group was joined.

    >>> join_digit_groups(r"1\\,000\\,000 and 12 345")
    ('1000000 and 12345', True)
    """
    out, n = _DIGIT_GROUPS.subn(lambda m: m.group(1) + _SEP_ONLY.sub("", m.group(2)), s)
    return out, n > 0


def has_digit_groups(s: str) -> bool:
    return any(_SEP_ONLY.sub("", m.group(2)) != m.group(2).replace("{,}", "") for m in _DIGIT_GROUPS.finditer(s))


def _words_value(words: str) -> int | None:
    total = 0
    for part in re.split(r"[-\s]+", words.lower()):
        if part in _SMALL_WORDS:
            total += _SMALL_WORDS[part]
        elif part in _TENS_WORDS:
            total += _TENS_WORDS[part]
        else:
            return None
    return total


def _scaled(value: str, scale: str) -> str:
    from decimal import Decimal

    out = Decimal(value) * _SCALES[scale.lower()]
    return format(out.normalize(), "f") if out == out.to_integral_value() else format(out, "f")


def read_number_words(s: str) -> tuple[str, bool]:
    """Number words with a scale and small number words become digits; True if any did.

    >>> read_number_words("1.5 million dollars"), read_number_words(r"3\\text{ billion}")
    (('1500000 dollars', True), ('3000000000', True))
    >>> read_number_words("twenty-five apples")
    ('25 apples', True)
    """
    changed = False

    def scaled(m: re.Match[str]) -> str:
        nonlocal changed
        changed = True
        return _scaled(m.group("num"), m.group("scale"))

    s = _SCALED_NUMBER.sub(scaled, s)

    def worded(m: re.Match[str]) -> str:
        nonlocal changed
        value = _words_value(m.group("words"))
        if value is None:
            return m.group(0)
        changed = True
        return _scaled(str(value), m.group("scale1")) if m.group("scale1") else str(value)

    s = _WORD_NUMBER.sub(worded, s)
    return s, changed


def percent_signs(s: str) -> bool:
    return _NUMBER_BEFORE_PERCENT.search(s) is not None


def apply_percent(s: str, rule: PercentRule) -> tuple[str, bool]:
    """Rewrite ``N%`` as the policy reads it: the bare number (label) or ``N/100`` (fraction).

    >>> apply_percent(r"50\\%", "label"), apply_percent("12.5%", "fraction")
    (('50', True), ('\\\\frac{12.5}{100}', True))
    """
    if rule in ("either", "strict"):
        return s, False
    if rule == "label":
        out, n = _NUMBER_BEFORE_PERCENT.subn(lambda m: m.group("num"), s)
    else:
        out, n = _NUMBER_BEFORE_PERCENT.subn(lambda m: f"\\frac{{{m.group('num')}}}{{100}}", s)
    return out, n > 0


def decimal_comma_number(s: str) -> re.Match[str] | None:
    """A number written with a decimal comma (``3,5``, ``0,25``), not a thousands group (``1,080``), and not the
    comma of an interval, tuple or set (``[0,1)``, ``(1,3)``): an answer with brackets has no decimal comma."""
    if re.search(r"[()\[\]]|\\\{", s):
        return None
    return _DECIMAL_COMMA.search(s)


def apply_decimal_comma(s: str) -> tuple[str, bool]:
    out, n = _DECIMAL_COMMA.subn(lambda m: f"{m.group(1)}.{m.group(2)}", s)
    return out, n > 0


def uses_decimal_point(s: str) -> bool:
    return re.search(r"\d\.\d", s) is not None


def mixed_to_fraction(s: str) -> tuple[str, bool]:
    """Plain-text mixed numbers ``2 1/2`` -> ``\\frac{5}{2}`` (LaTeX ``2\\frac12`` math-verify reads itself).

    >>> mixed_to_fraction("2 1/2 cups")
    ('\\\\frac{5}{2} cups', True)
    """

    def repl(m: re.Match[str]) -> str:
        whole, num, den = int(m.group("whole")), int(m.group("num")), int(m.group("den"))
        if den == 0 or num >= den:
            return m.group(0)
        sign = "-" if m.group("sign") else ""
        return f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"

    out, n = _MIXED_TEXT.subn(repl, s)
    return out, out != s


def mixed_as_product(s: str) -> tuple[str, bool]:
    """With ``mixed_numbers: false``: ``2\\frac12`` is read as the product written (``2 \\cdot \\frac12``)."""
    out, n = _MIXED_LATEX.subn(lambda m: f"{m.group('whole')} \\cdot {m.group('frac')}", s)
    out2, n2 = _MIXED_TEXT.subn(lambda m: f"{m.group('whole')} \\cdot \\frac{{{m.group('num')}}}{{{m.group('den')}}}", out)
    return out2, (n + n2) > 0


def has_mixed_number(s: str) -> bool:
    return _MIXED_LATEX.search(s) is not None or _MIXED_TEXT.search(s) is not None


# ------------------------------------------------------------------------------------- hedges, approximations

_APPROX = re.compile(r"\\approx|≈|\\simeq|\\thickapprox")
# "or" as a word, in \text{ or }, \mbox{or}, \quad\text{or}\quad; "either" before the first candidate is dropped.
_OR = re.compile(
    r"\s*(?:\\q?quad\s*)?(?:\\(?:text|textrm|mbox|mathrm)\s*\{\s*or\s*\}|(?<![\\\w])or(?!\w))(?:\s*\\q?quad)?\s*",
    re.IGNORECASE,
)
_EITHER = re.compile(r"^\s*(?:\\text\{\s*)?either\b\s*\}?\s*", re.IGNORECASE)


def _top_level_spans(s: str, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """Matches of ``pattern`` outside any brackets or braces."""
    depth = [0] * (len(s) + 1)
    d = 0
    i = 0
    while i < len(s):
        depth[i] = d
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth[i + 1] = d
            i += 2
            continue
        if c in "([{":
            d += 1
        elif c in ")]}" and d > 0:
            d -= 1
        i += 1
    depth[len(s)] = d
    out = []
    for m in pattern.finditer(s):
        # \text{ or } opens a brace itself: judge by the depth just before the match.
        if depth[m.start()] == 0:
            out.append(m)
    return out


def drop_approximation(s: str) -> tuple[str, bool]:
    """``exact ≈ approx`` -> ``exact``: a grader reads the exact value the answer committed to.

    >>> drop_approximation(r"\\frac{1}{3} \\approx 0.33")
    ('\\\\frac{1}{3}', True)
    """
    found = _top_level_spans(s, _APPROX)
    if not found:
        return s, False
    head = s[: found[0].start()].rstrip(" =,;")
    if re.fullmatch(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*", head):
        # 'x \approx 11': the left side names the unknown, the approximation is all the answer gives
        return s[found[-1].end() :].strip(), True
    return (head, True) if head.strip() else (s, False)


def split_alternatives(s: str) -> list[str]:
    """The parts of an answer joined by a top-level "or": ``5 or 6`` -> ``['5', '6']``; one part otherwise."""
    body = _EITHER.sub("", s)
    cuts = _top_level_spans(body, _OR)
    if not cuts:
        return [s]
    parts, at = [], 0
    for m in cuts:
        parts.append(body[at : m.start()])
        at = m.end()
    parts.append(body[at:])
    parts = [p.strip(" ,;") for p in parts]
    return [p for p in parts if p] or [s]


# -------------------------------------------------------------------------------------- where the answer is

# "The final answer is", "the answer is", "Answer:", "answer =", "####". The last one in the text counts.
ANSWER_PHRASE = re.compile(r"final\s+answer\s*(?:is|:|=)|\banswer\s*(?:is\b|:|=)|####", re.IGNORECASE)
_SIGN_OFF = re.compile(r"\bI hope it is correct\b", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    text: str
    start: int
    end: int


def _math_delimited(text: str, start: int) -> int | None:
    """End (exclusive) of the math span opening at ``start`` (``$``, ``$$``, ``\\(``, ``\\[``); None if unclosed."""
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if text.startswith(left, start):
            j = start + len(left)
            while True:
                k = text.find(right, j)
                if k < 0:
                    return None
                if right == "$" and k > 0 and text[k - 1] == "\\":  # \$ is a dollar sign, not a delimiter
                    j = k + 1
                    continue
                return k + len(right)
    return None


def math_spans(text: str) -> list[Span]:
    """Every ``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]`` span in order, contents without delimiters."""
    spans: list[Span] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] == "$":
            i += 2
            continue
        if c == "$" or (c == "\\" and i + 1 < n and text[i + 1] in "(["):
            end = _math_delimited(text, i)
            if end is None:
                i += 1
                continue
            width = 2 if text.startswith(("$$", "\\[", "\\("), i) else 1
            spans.append(Span(text[i + width : end - width].strip(), i, end))
            i = end
            continue
        i += 1
    return [s for s in spans if s.text]


def answer_phrase_span(text: str, start: int = 0) -> tuple[Span, str] | None:
    """The text after the last answer phrase, up to the end of its sentence or line; and the phrase itself.

    Math spans are kept whole (a period inside ``$3.5$`` does not end the sentence).
    """
    last = None
    for last in ANSWER_PHRASE.finditer(text, start):
        pass
    if last is None:
        return None
    i, n = last.end(), len(text)
    end = n
    while i < n:
        c = text[i]
        if c == "$" or (c == "\\" and i + 1 < n and text[i + 1] in "(["):
            close = _math_delimited(text, i)
            if close is not None:
                i = close
                continue
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == "\n" and text[last.end() : i].strip():
            end = i
            break
        if c in ".!?" and (i + 1 == n or text[i + 1].isspace()) and not (i > 0 and text[i - 1].isdigit() and i + 1 < n and text[i + 1].isdigit()):
            end = i
            break
        i += 1
    seg = text[last.end() : end]
    off = _SIGN_OFF.search(seg)
    if off:
        seg = seg[: off.start()]
    return Span(seg.strip(" :*\t\n"), last.end(), end), last.group(0)


def phrase_candidate(seg: str) -> str:
    """The answer inside an answer-phrase segment: its math spans (with "or"/"and" kept), else the text."""
    spans = math_spans(seg)
    if not spans:
        tail = bare_tail(seg.strip().rstrip("."))
        if is_short(tail):
            return tail
        return prose_number(seg) or tail  # 'Final Answer: Jane started growing Sphere 3 hours ago'

    prose = seg[: spans[0].start] + " ".join(seg[x.end : y.start] for x, y in zip(spans, spans[1:], strict=False))
    prose += seg[spans[-1].end :]
    if _COPULA.search(prose) and _PROSE_WORD.search(prose):
        # 'The largest $n$ is 34': the value after the copula, not the variable it names
        flat = "".join(
            seg[prev_end : sp.start] + sp.text
            for prev_end, sp in zip([0] + [x.end for x in spans], spans, strict=False)
        ) + seg[spans[-1].end :]
        return bare_tail(flat.strip().rstrip("."))
    if len(spans) == 1:
        return spans[0].text
    pieces = [spans[0].text]
    for prev, nxt in zip(spans, spans[1:], strict=False):
        gap = seg[prev.end : nxt.start]
        pieces.append(r" \text{ or } " if _OR.search(gap) else ", ")
        pieces.append(nxt.text)
    return "".join(pieces)


_PROSE_WORD = re.compile(r"(?<![\\\w])[A-Za-z]{3,}(?!\w)")
_SPAN_LIST_GAP = re.compile(r"\s*(?:,|;|and|or|,\s*and|,\s*or)\s*", re.IGNORECASE)


def last_math_group(text: str) -> str | None:
    """The last math span, with the spans listed right before it (``$1$, $2$ and $3$`` -> ``1, 2, 3``)."""
    spans = math_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    joins: list[str] = []
    for prev in reversed(spans[:-1]):
        gap = text[prev.end : group[0].start]
        if not _SPAN_LIST_GAP.fullmatch(gap):
            break
        joins.insert(0, r" \text{ or } " if _OR.search(gap) else ", ")
        group.insert(0, prev)
    out = group[0].text
    for join, sp in zip(joins, group[1:], strict=False):
        out += join + sp.text
    return out


_MATHY = re.compile(r"[\d\\^_=+*/<>()\[\]{}]|(?<=\s)-(?=\s)|^-")  # "p - q" and "-x" are mathematics
_COPULA = re.compile(r"(?:(?<![\w\\])(?:is|are|equals|gives|get|be)(?!\w)|=|:)")


def is_short(text: str, max_chars: int = 120) -> bool:
    """A bare answer: short, at most three words of prose (outside LaTeX commands and ``\\text{}``), and either
    some mathematics or at most two words (``Evelyn``, ``\\text{even}``).

    >>> is_short(r"\\dfrac{3}{4}"), is_short("Evelyn"), is_short("no math here"), is_short("x" * 200)
    (True, True, False, False)
    """
    s = text.strip()
    if not s or len(s) > max_chars or s.count("\n") > 2:
        return False
    no_text = re.sub(r"\\(?:text|textbf|mathrm|mbox|textrm)\s*\{[^{}]*\}", " ", s)
    words = [w for w in _PROSE_WORD.findall(no_text) if w.lower() not in {"or", "and"}]
    if len(words) > 3:
        return False
    return _MATHY.search(s) is not None or len(s.split()) <= 2


def bare_tail(text: str) -> str:
    """In a short answer with a few words of prose, the part after the last copula.

    >>> bare_tail("I think the result is 5"), bare_tail(r"\\frac{1}{2}"), bare_tail("hence x = 2")
    ('5', '\\\\frac{1}{2}', 'x = 2')
    """
    s = text.strip()
    if not _PROSE_WORD.search(re.sub(r"\\[A-Za-z]+|\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}", " ", s)):
        return s
    last = None
    for last in _COPULA.finditer(s):
        pass
    if last is None:
        return s
    tail = s[last.end() :].strip()
    if not tail or not _MATHY.search(tail):
        return s
    if last.group(0) == "=":  # keep the equation: its right-hand side is compared, and 'x = 2' stays legible
        head = s[: last.start()].rstrip()
        lhs = re.search(r"([A-Za-z](?:_\{?\w+\}?)?|\([^()]*\))\s*$", head)
        return f"{lhs.group(1)} = {tail}" if lhs else tail
    return tail


# ------------------------------------------------------------------------------ end of turn, conclusions in prose

# A chat model that runs past its turn writes the next turn's header: nothing after it is the answer.
_TURN_END = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end_of_text|start_header_id)\|>|</s>|<end_of_turn>")


def cut_at_turn_end(text: str) -> str:
    """The completion up to the first end-of-turn token (``<|im_start|>user``, ``<|eot_id|>``, ``</s>``)."""
    m = _TURN_END.search(text)
    return text[: m.start()] if m else text


_CONCLUSION_CUE = re.compile(
    r"^\s*(?:therefore|thus|hence|so|in conclusion|in total|altogether|in all|finally|consequently)\b",
    re.IGNORECASE,
)
# A number in prose: sign, digits with thousands commas, decimals, a/b, a currency sign before, % after.
_PROSE_NUMBER = re.compile(
    r"(?<![\w.,/^*+\-=])(?:[$€£¥]\s*)?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?(?![\w/^*+=]|[.,]\d)"
)
# Words after a number that make it a relation, not a value ("2 more than x", "3 times as many").
_RELATION_AFTER = re.compile(
    r"^\s*(?:more|less|fewer|greater|smaller|times|percent more|percent less|%\s*(?:more|less))\b", re.IGNORECASE
)
_OPERATOR_NEAR = re.compile(r"[+\-*/^=<>]\s*$")


def sentences(text: str) -> list[str]:
    """Sentences of prose: split after ``.``/``!``/``?`` followed by space, not inside a decimal number."""
    parts = re.split(
        r"(?<=[.!?])(?<!\d\.)\s+|(?<=\d\.)\s+(?=[A-Z])|(?<=[.!?]\$)\s+|(?<=[.!?]\$\$)\s+|(?<=[.!?]\\\])\s+|\n\s*\n", text.strip()
    )
    return [p.strip() for p in parts if p.strip()]


def prose_number(sentence: str) -> str | None:
    """The one value a sentence of prose states: its only number, or the number right after its last copula.

    ``None`` when there are several numbers and no copula decides, or when the number is part of an expression
    or a relation ("2 more than x"): a careful grader does not guess.

    >>> prose_number("Jane started growing Sphere 3 hours ago"), prose_number("the error increases by 100%.")
    ('3', '100%')
    >>> prose_number("the number is not 10 which is 1,000.99"), prose_number("x is 2 more than y")
    ('1,000.99', None)
    >>> prose_number("so 3 + 4 apples")
    """
    s = sentence.strip().rstrip(".!?")
    found = list(_PROSE_NUMBER.finditer(s))
    if not found:
        return None
    if len(found) > 1:
        last = None
        for last in _COPULA.finditer(s):
            pass
        if last is None:
            return None
        after = [m for m in found if m.start() >= last.end()]
        if not after or s[last.end() : after[0].start()].strip():
            return None
        found = after[:1]
    m = found[0]
    if _RELATION_AFTER.match(s[m.end() :]) or _OPERATOR_NEAR.search(s[: m.start()]):
        return None
    if re.match(r"\s*[+\-*/^=]", s[m.end() :]):
        return None
    return m.group(0).replace(" ", "")


def conclusion_sentence(text: str) -> str | None:
    """The last sentence when it states a conclusion ("Therefore, ...", "So ...", "Thus ...")."""
    sents = [x for x in sentences(_SIGN_OFF.sub("", text)) if re.search(r"\w", x)]
    if not sents:
        return None
    last = sents[-1]
    return last if _CONCLUSION_CUE.match(last) else None
