"""GSM8K answer verifier: the final number of a worked solution, compared numerically with the gold.

What: ``GSM8KVerifier`` (registry name ``gsm8k``) reads the final answer out of what models really write
(``#### 72``, ``\\boxed{72}``, ``The answer is $1,080.``, ``**Answer:** -3``, ``72.00``, ``45%``,
``18 dollars``, ``1 million``, ``2 1/2``) and compares it with the gold number after ``####`` exactly, as a
rational number, so ``72.00`` = ``72`` and ``1,080`` = ``1080`` but ``72.5`` != ``72``.

Where the answer is (also in ``docs/verifiers.md``), first found wins:

1. **Markers**: ``####``, ``\\boxed{}``/``\\fbox{}`` and the phrases "answer is", "answer:", "answer ="
   (which cover "The final answer is", "**Answer:**", "Final Answer: ..."). **The last marker wins.** A
   phrase counts only if its clause (the text up to the end of its sentence or line) states a number: "the
   answer is not 5" and "the answer is clear" are skipped and an earlier marker decides.
2. **A concluding sentence** ("Therefore, she has 18 apples.") that states one number.
3. **A bare answer**: the whole completion when it is short (``18 dollars``, ``9 * 2 = 18``).
4. The last number of the text, but never one that is part of an expression (``2x + 18``, ``18 - y``) or
   of a hedge (``5 or 6``).

Option ``fallback="none"`` keeps only 1 (a marker is required, which rewards the format); the default
``fallback="last_number"`` tries 1 to 4.

What the number is: in a clause, the value after the last ``=`` (``9 * 2 = 18``), the exact value before
``≈`` (``1/3 ≈ 0.33`` is one third), currency signs and unit words dropped. A clause whose number is part of
an expression (``2x + 18``) is ``fail`` (not a number); one that names two different numbers joined by "or"
is ``fail`` with reason ``hedged``. The declared ``policy`` (``verify.gsm8k.policy``, see
``selfimprove.verifiers.policy.GradingPolicy``) decides number words, digit groups, mixed numbers, ``%`` and
decimal commas, and the verdict's reason names the rule used.

The extracted answer is written canonically (``1080``, ``-3``, ``0.75``, ``1/3``, ``45%``) so that majority
voting clusters equal values. Clauses are cut to 400 characters and every pattern uses possessive
quantifiers: the verifier runs in time linear in the completion, and no input can stall the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import AnswerVerifier
from selfimprove.verifiers.math_equiv import find_boxes
from selfimprove.verifiers.policy import (
    GradingPolicy,
    conclusion_sentence,
    cut_at_turn_end,
    drop_approximation,
    has_digit_groups,
    has_mixed_number,
    is_short,
    join_digit_groups,
    mixed_to_fraction,
    prose_number,
    read_number_words,
    split_alternatives,
)


class GSM8KVerifierConfig(Strict):
    """Options of the ``gsm8k`` verifier (``verify.gsm8k.*`` in params.yaml)."""

    fallback: Literal["last_number", "none"] = Field(
        default="last_number",
        description="'last_number': without an answer marker, read a concluding sentence, a bare answer, then "
        "the last number that is not part of an expression. 'none': a marker is required.",
    )
    policy: GradingPolicy = Field(
        default_factory=GradingPolicy,
        description="The declared grading policy (number words, digit groups, mixed numbers, %, decimal "
        "comma); unordered_lists and equation_multiples do not apply to single numbers.",
    )


_MINUS = "-\u2212\u2013"  # ASCII hyphen-minus, Unicode minus, en dash (all seen in model output)
# sign, currency, integer part with or without thousands commas, decimals; or a bare ".5"
_NUMBER = (
    rf"(?P<sign>[{_MINUS}])?+\s?(?:\\?\$\s?|[€£¥]\s?)?+(?P<sign2>[{_MINUS}])?+"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})++(?![\d,])|\d++)(?P<dec>\.\d++)?+|(?P<dec_only>\.\d++))"
)
_FRACTION = re.compile(
    rf"(?P<sign>[{_MINUS}])?+\s?\\[dt]?frac\s?\{{\s?(?P<num>\d++)\s?\}}\s?\{{\s?(?P<den>\d++)\s?\}}"
    rf"|(?P<sign_s>[{_MINUS}])?+(?P<num_s>\d++)\s?/\s?(?P<den_s>\d++)(?![\d.])"
)
_NUMBER_RE = re.compile(_NUMBER)
_LOOSE_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
# What may stand between a marker and its number.
_LEAD = re.compile(r"(?:\s|[:=*]|\\\(|\\\[|\\boxed\s?\{|\\text(?:bf)?\s?\{|\{|\$(?!\s?\d))*+")
# "answer is", "answer:", "answer =", and "the answer to this problem is / would be" (a bounded gap: linear time)
_PHRASE = re.compile(r"\banswer(?:\s(?:to|for|of)\b[^.:=\n]{1,60}?)?\s?(?:is\b|would\s++be\b|will\s++be\b|:|=)|####",
                     re.IGNORECASE)
# A decimal comma: '3,5', '0,25', '12,3456' (not a thousands group '1,080').
_DECIMAL_COMMA = re.compile(rf"[{_MINUS}]?+\d++,(?:\d{{1,2}}|\d{{4,}})(?![\d,])|[{_MINUS}]?+0,\d++(?![\d,])")
_PERCENT_AFTER = re.compile(r"\s?(?:\\?%|percent\b|\\text\s?\{\s?percent\s?\})", re.IGNORECASE)
# An operator and an operand after the number, or a variable glued to it: the number is part of an expression.
_EXPR_AFTER = re.compile(
    r"\s*+(?:[+*/×÷^·]|\\cdot|\\times|\\div|-(?!\s?[a-z]{2}))\s*+[\w(\\]|[a-z](?![a-z])"
    r"|\s?\\(?!text|mbox|mathrm|quad|qquad|[,;:! %$)\]])[A-Za-z]",  # 5\sqrt{2}, 2\pi
    re.IGNORECASE,
)
_EXPR_BEFORE = re.compile(r"(?:[+*/×÷^·-]|\\cdot|\\times|\\div)\s*+$")
_SCALE_AFTER = re.compile(r"\s*+(?:\\text\s?\{\s?)?(?:hundred|thousand|million|billion|trillion)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|never|n't|neither|nor)\b", re.IGNORECASE)
_MAX_CLAUSE = 400
_EQUALS_WORDS = re.compile(r"\s++(?:equals|is\s++equal\s++to)\s++", re.IGNORECASE)

Source = Literal["####", "box", "phrase", "conclusion", "bare", "last_number", "none"]


@dataclass(frozen=True)
class Reading:
    """What a completion's answer reads as: where it was found, its text, and its value or why it has none."""

    source: Source
    text: str | None = None
    value: Fraction | None = None
    percent: bool = False
    rules: tuple[str, ...] = field(default=())
    refusal: str | None = None  # a stated answer that is not one number the policy accepts ('hedged: ...')

    @property
    def answer(self) -> str | None:
        """The canonical answer (``1080``, ``45%``); None when there is none or it was refused."""
        if self.value is None or self.refusal is not None:
            return None
        return canonical(self.value) + ("%" if self.percent else "")


def _fraction_of(m: re.Match[str]) -> Fraction | None:
    if m.group("int") is None and m.group("dec_only") is None:
        return None
    digits = (m.group("int") or "0").replace(",", "") + (m.group("dec") or m.group("dec_only") or "")
    try:
        value = Fraction(Decimal(digits))
    except (InvalidOperation, ValueError):
        return None
    return -value if (m.group("sign") or m.group("sign2")) else value


def _fraction_literal(text: str, pos: int) -> tuple[Fraction, int] | None:
    m = _FRACTION.match(text, pos)
    if m is None:
        return None
    num, den = (m.group("num"), m.group("den")) if m.group("num") else (m.group("num_s"), m.group("den_s"))
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return (-value if (m.group("sign") or m.group("sign_s")) else value), m.end()


def _number_span(text: str, pos: int) -> tuple[Fraction, int] | None:
    """The number starting at ``pos`` and where it ends (fraction literals first: ``3/4`` is not 3)."""
    frac = _fraction_literal(text, pos)
    if frac is not None:
        return frac
    m = _NUMBER_RE.match(text, pos)
    if m is None:
        return None
    value = _fraction_of(m)
    return None if value is None else (value, m.end())


def number_at(text: str, pos: int) -> Fraction | None:
    """The number starting at ``pos``.

    >>> number_at("$1,080.", 0), number_at("\\u22123.50 dollars", 0), number_at(r"\\frac{3}{4}", 0)
    (Fraction(1080, 1), Fraction(-7, 2), Fraction(3, 4))
    """
    found = _number_span(text, pos)
    return found[0] if found else None


def canonical(value: Fraction) -> str:
    """Canonical text of a number: integers plainly, terminating decimals as decimals, else ``p/q``.

    >>> canonical(Fraction(1080)), canonical(Fraction(-3, 4)), canonical(Fraction(1, 3))
    ('1080', '-0.75', '1/3')
    """
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def _clause(text: str, pos: int) -> str:
    """The text after a marker up to the end of its sentence or line (at most 400 characters)."""
    s = text[pos : pos + _MAX_CLAUSE]
    stripped = len(s) - len(s.lstrip())
    m = re.search(r"\n|[.!?](?=\s|$)(?<!\d\.(?=\d))", s[stripped:])
    return s[: stripped + m.start()] if m else s


def _top_level_eq(s: str) -> int:
    """Index just after the last '=' outside brackets (-1 if none)."""
    depth, last = 0, -1
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "=" and depth == 0 and not (i + 1 < len(s) and s[i + 1] == "=") and (i == 0 or s[i - 1] not in "<>!="):
            last = i + 1
    return last


def read_clause(text: str, policy: GradingPolicy, source: Source, whole: bool = False) -> Reading:
    """Read one number out of a clause under the policy.

    ``whole``: the clause is the answer itself (a box, a bare completion): a prefix of prose is not allowed.

    >>> p = GradingPolicy()
    >>> read_clause("9 * 2 = 18 dollars", p, "phrase").answer, read_clause("1.5 million", p, "phrase").answer
    ('18', '1500000')
    >>> read_clause("5 or 6", p, "phrase").refusal
    "hedged: the answer names 2 different numbers ('5'; '6') where one is expected (rule: hedge)"
    >>> read_clause("2x + 18", p, "box", whole=True).refusal
    "'2x + 18' is an expression, not a number: a number inside it is not the answer"
    >>> read_clause("67 + 89 equals 156", p, "bare").answer, read_clause("12 - 5 is equal to 7", p, "bare").answer
    ('156', '7')
    """
    s = text.strip()
    rules: list[str] = []

    def refuse(why: str) -> Reading:
        return Reading(source, text.strip(), None, rules=tuple(rules), refusal=why)

    expression = f"{text.strip()!r} is an expression, not a number: a number inside it is not the answer"
    s, approx = drop_approximation(s)
    if approx:
        rules.append("approximation")
    # 'a + b equals c' (how small instruct models answer): the words of an equation read as its '='
    s = _EQUALS_WORDS.sub(" = ", s)
    eq = _top_level_eq(s)
    if eq >= 0 and s[eq:].strip():
        s = s[eq:].strip()  # '9 * 2 = 18': the value after the last '='
        s, approx = drop_approximation(s)
    parts = split_alternatives(s)
    if len(parts) > 1:
        readings = [read_clause(part, policy, source, whole) for part in parts]
        values = [r.value for r in readings]
        if all(v is not None for v in values) and len(set(values)) == 1 and all(r.refusal is None for r in readings):
            first = readings[0]
            return Reading(source, text.strip(), first.value, first.percent, (*rules, *first.rules, "hedge_same"))
        if sum(v is not None for v in values) >= 2:
            return refuse(f"hedged: the answer names {len(parts)} different numbers "
                          f"({'; '.join(repr(p) for p in parts)}) where one is expected (rule: hedge)")
    if policy.mixed_numbers:
        s, changed = mixed_to_fraction(s)
        if changed:
            rules.append("mixed_numbers")
    elif has_mixed_number(s):
        return refuse("a mixed number is not read as its value (policy.mixed_numbers: false)")
    if policy.digit_groups:
        s, changed = join_digit_groups(s)
        if changed:
            rules.append("digit_groups")
    elif has_digit_groups(s):
        return refuse("digit groups separated by spaces are not one number (policy.digit_groups: false)")
    if policy.number_words:
        s, changed = read_number_words(s)
        if changed:
            rules.append("number_words")
    lead = _LEAD.match(s)
    start = lead.end() if lead else 0
    comma = _DECIMAL_COMMA.match(s, start)
    if comma is not None:
        if not policy.decimal_comma:
            return refuse(f"decimal comma: {comma.group(0)!r} is not a number with a decimal point "
                          "(policy.decimal_comma: false)")
        s = s[: comma.start()] + comma.group(0).replace(",", ".") + s[comma.end() :]
        rules.append("decimal_comma")
    found = _number_span(s, start)
    if found is None:
        if whole:
            return Reading(source, text.strip(), None, rules=tuple(rules))
        # 'The answer is: a total of 18 apples': a few words of prose, no negation, then the number
        m = _LOOSE_NUMBER_RE.search(s, start)
        if m is None:
            return Reading(source, None, None)
        prefix = s[start : m.start()]
        if _NEGATION.search(prefix) or len(prefix.split()) > 5:
            return Reading(source, None, None)
        if _EXPR_BEFORE.search(prefix) or re.search(r"(?<![A-Za-z])[a-z]\s*$", prefix):
            return refuse(expression)
        found = _number_span(s, m.start())
        if found is None:
            return Reading(source, None, None)
    value, end = found
    rest = s[end:]
    if _EXPR_AFTER.match(rest):
        return refuse(expression)
    if not policy.number_words and _SCALE_AFTER.match(rest):
        return refuse("number words are not numbers (policy.number_words: false)")
    pct = _PERCENT_AFTER.match(rest) is not None
    return Reading(source, text.strip(), value, pct, tuple(rules))


def _last_number_reading(text: str, policy: GradingPolicy) -> Reading:
    """The last number of the text, unless it is part of an expression or of a hedge."""
    last = _last_number_match(text)
    if last is None:
        return Reading("none")
    start = max(0, last.start() - 80)  # room for digit groups, number words and 'x or' before it
    window = text[start:]
    cut = max(window.rfind("\n", 0, last.start() - start), window.rfind(". ", 0, last.start() - start))
    clause = window[cut + 1 :] if cut >= 0 else window
    before = text[max(0, last.start() - 80) : last.start()]
    if _EXPR_BEFORE.search(before) or re.search(r"(?<![A-Za-z\\])[a-z]\s*$", before):
        return Reading("last_number", clause.strip(), None,
                       refusal=f"the last number is part of the expression {clause.strip()!r}, not an answer")
    m = re.search(r"(\S+)\s+or\s+$", before)
    if m and number_at(m.group(1), 0) is not None:
        return read_clause(m.group(0) + text[last.start() : last.end()], policy, "last_number")
    reading = read_clause(text[last.start() :][:_MAX_CLAUSE].split("\n", 1)[0], policy, "last_number", whole=True)
    if reading.value is None and reading.refusal is None:
        return Reading("none")
    return reading


def locate_answer(text: str, policy: GradingPolicy | None = None, fallback: str = "last_number") -> Reading:
    """The GSM8K answer policy (module docstring): last marker with a number, conclusion, bare, last number.

    >>> locate_answer("The answer is 5. Wait, I made an error. #### 6").answer
    '6'
    >>> locate_answer(r"So \\boxed{18}. The answer is not 20.").answer
    '18'
    """
    policy = policy or GradingPolicy()
    text = cut_at_turn_end(text)
    markers: list[tuple[int, str, Any]] = [(m.start(), "phrase", m) for m in _PHRASE.finditer(text)]
    markers += [(b.start, "box", b.content) for b in find_boxes(text) if b.content]
    # The last marker that states a number wins; only the last 32 are tried (a bound on adversarial input).
    for _, kind, payload in sorted(markers, key=lambda x: x[0], reverse=True)[:32]:
        if kind == "box":
            reading = read_clause(payload, policy, "box", whole=True)
        else:
            source: Source = "####" if payload.group(0) == "####" else "phrase"
            reading = read_clause(_clause(text, payload.end()), policy, source)
        if reading.value is not None or reading.refusal is not None:
            return reading
    if fallback == "none":
        return Reading("none")  # a marker is required: the format is part of the reward
    concl = conclusion_sentence(text[-2000:])
    if concl is not None:
        value = prose_number(concl)
        if value is not None:
            reading = read_clause(value, policy, "conclusion", whole=True)
            if reading.value is not None:
                return reading
    if is_short(text):
        reading = read_clause(text, policy, "bare")
        if reading.value is not None or reading.refusal is not None:
            return reading
    return _last_number_reading(text, policy)


def find_answer(text: str, fallback: str = "last_number", policy: GradingPolicy | None = None) -> Fraction | None:
    """The value ``locate_answer`` reads (None for no answer or a refused one)."""
    reading = locate_answer(text, policy, fallback)
    return reading.value if reading.refusal is None else None


def last_number(text: str) -> Fraction | None:
    """The last number anywhere in the text (not glued to a word: ``x2`` is not a number).

    >>> last_number("3 apples and 4.50 dollars, so 12.")
    Fraction(12, 1)
    """
    last = _last_number_match(text)
    return None if last is None else number_at(text, last.start())


def _last_number_match(text: str) -> re.Match[str] | None:
    last = None
    for last in _LOOSE_NUMBER_RE.finditer(text):
        pass
    return last


def parse_gold(reference: str, policy: GradingPolicy | None = None) -> Reading:
    """The gold number: the text after the last ``####`` if present (a whole gold solution), else the text.

    >>> parse_gold("She makes 9 * 2 = $<<9*2=18>>18.\\n#### 18").answer, parse_gold("1,080").answer
    ('18', '1080')
    """
    tail = reference.rsplit("####", 1)[-1] if "####" in reference else reference
    reading = read_clause(tail, policy or GradingPolicy(), "####")
    if reading.value is None and reading.refusal is None:
        value = last_number(tail)
        if value is not None:
            return Reading("####", tail.strip(), value)
    return reading


def compare_values(answer: Reading, gold: Reading, policy: GradingPolicy) -> tuple[bool, str | None, str | None]:
    """``(equal, rule used, refusal)``: the percent rule decides how a ``%`` on either side is read."""
    assert answer.value is not None and gold.value is not None
    if not (answer.percent or gold.percent):
        return answer.value == gold.value, None, None
    rule = policy.percent
    as_label = answer.value == gold.value
    as_fraction = answer.value / (100 if answer.percent else 1) == gold.value / (100 if gold.percent else 1)
    if rule == "strict":
        if answer.percent != gold.percent:
            return False, "percent=strict", "percent=strict: a percentage equals only a percentage"
        return as_label, "percent=strict", None
    if rule == "label":
        return as_label, "percent=label", None
    if rule == "fraction":
        return as_fraction, "percent=fraction", None
    return as_label or as_fraction, "percent=either", None


class GSM8KVerifier(AnswerVerifier):
    """Final number (last marker wins) compared exactly with the number after the gold's ``####``."""

    name: ClassVar[str] = "gsm8k"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = GSM8KVerifierConfig(**options)

    def read(self, text: str) -> Reading:
        return locate_answer(text, self.config.policy, self.config.fallback)

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        return self.read(text).answer

    def equivalent(self, answer: str, reference: str) -> bool:
        a, g = parse_gold(answer, self.config.policy), parse_gold(reference, self.config.policy)
        if a.value is None or g.value is None or a.refusal or g.refusal:
            return False
        return compare_values(a, g, self.config.policy)[0]

    def check(self, problem: Problem, completion: Completion) -> Verdict:
        import time

        t0 = time.perf_counter()
        gold_text = self.require_gold(problem, self.name)
        policy = self.config.policy
        gold = parse_gold(gold_text, policy)
        if gold.value is None:
            raise ValueError(f"problem {problem.id!r}: gold {gold_text!r} is not a number the gsm8k verifier can read")
        reading = self.read(completion.text)
        if reading.refusal is not None:
            return self.verdict(completion, reading.text, gold_text, False, t0, status="fail",
                                reason=f"answer {reading.text!r} ({reading.source}): {reading.refusal}")
        if reading.value is None:
            return self.verdict(completion, None, gold_text, False, t0,
                                reason="no final answer: no ####, \\boxed{}, answer phrase, concluding sentence "
                                "or number" + (" (fallback: none)" if self.config.fallback == "none" else ""))
        equal, rule, refusal = compare_values(reading, gold, policy)
        rules = [*reading.rules, *([rule] if rule else [])]
        answer = reading.answer
        if refusal is not None:
            reason = f"answer {answer!r} != gold {gold_text!r}: {refusal}"
        else:
            head = "answer matches gold" if equal else f"answer {answer!r} != gold {gold_text!r}"
            reason = f"{head} ({reading.source}" + (f"; rules: {', '.join(dict.fromkeys(rules))})" if rules else ")")
        return self.verdict(completion, answer, gold_text, equal, t0, reason=reason)
