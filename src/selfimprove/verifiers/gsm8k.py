"""GSM8K answer verifier: the final number of a worked solution, compared numerically with the gold.

What: ``GSM8KVerifier`` (registry name ``gsm8k``) reads the final answer out of what models really write
(``#### 72``, ``\\boxed{72}``, ``The answer is $1,080.``, ``**Answer:** -3``, ``72.00``, ``45%``,
``18 dollars``) and compares it with the gold number after ``####`` exactly, as a rational number, so
``72.00`` = ``72`` and ``1,080`` = ``1080`` but ``72.5`` != ``72``.

Policy (also in ``docs/verifiers.md``):
- Markers are ``####``, ``\\boxed{}``/``\\fbox{}`` and the phrases "answer is", "answer:", "answer =" (which
  cover "The final answer is", "**Answer:**", "Final Answer: ..."). **The last marker wins.** A marker counts
  only if a number follows it directly (after spaces, ``:``, ``=``, markdown ``*``, ``$``/``\\$`` or an
  opening math delimiter), so "the answer is not 5" is skipped and an earlier marker decides. In a box, the
  number after the last ``=`` counts (``\\boxed{x = 5}`` -> 5).
- Only when no marker yields a number: the last number in the text (option ``fallback="last_number"``,
  the default); ``fallback="none"`` makes such completions ``no_answer``, which rewards the format.
- A number: optional sign (``-``, Unicode minus), optional currency sign, digits with optional thousands
  commas (``1,080``), optional decimals; ``a/b`` and ``\\frac{a}{b}`` are fractions. Units and ``%`` after
  it are ignored. The extracted answer is written canonically (``1080``, ``-3``, ``0.75``, ``1/3``) so that
  majority voting clusters equal values.

All patterns use possessive quantifiers and run in time linear in the completion: no input can stall the loop.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.types import Problem
from selfimprove.verifiers.base import AnswerVerifier
from selfimprove.verifiers.math_equiv import find_boxes


class GSM8KVerifierConfig(BaseModel):
    """Options of the ``gsm8k`` verifier (``verify.gsm8k.*`` in params.yaml)."""

    model_config = ConfigDict(extra="forbid")

    fallback: Literal["last_number", "none"] = Field(
        default="last_number",
        description="Without any answer marker: take the last number in the text, or give no answer.",
    )


_MINUS = "-\u2212\u2013"  # ASCII hyphen-minus, Unicode minus, en dash (all seen in model output)
# sign, currency, integer part with or without thousands commas, decimals; or a bare ".5"
_NUMBER = (
    rf"(?P<sign>[{_MINUS}])?+\s?(?:\\?\$\s?)?+(?P<sign2>[{_MINUS}])?+"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})++(?!\d)|\d++)(?P<dec>\.\d++)?+|(?P<dec_only>\.\d++))"
)
_FRACTION = re.compile(
    rf"(?P<sign>[{_MINUS}])?+\s?\\[dt]?frac\s?\{{\s?(?P<num>\d++)\s?\}}\s?\{{\s?(?P<den>\d++)\s?\}}"
    rf"|(?P<sign_s>[{_MINUS}])?+(?P<num_s>\d++)\s?/\s?(?P<den_s>\d++)(?![\d.])"
)
_NUMBER_RE = re.compile(_NUMBER)
_LOOSE_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
# What may stand between a marker and its number.
_LEAD = r"(?:\s|[:=*]|\\?\$|\\\(|\\\[|\\boxed\s?\{|\\text(?:bf)?\s?\{|\{)*+"
_PHRASE = re.compile(r"\banswer\s?(?:is\b|:|=)|####", re.IGNORECASE)


def _fraction_of(m: re.Match[str]) -> Fraction | None:
    if m.group("int") is None and m.group("dec_only") is None:
        return None
    digits = (m.group("int") or "0").replace(",", "") + (m.group("dec") or m.group("dec_only") or "")
    try:
        value = Fraction(Decimal(digits))
    except (InvalidOperation, ValueError):
        return None
    return -value if (m.group("sign") or m.group("sign2")) else value


def _fraction_literal_at(text: str, pos: int) -> Fraction | None:
    m = _FRACTION.match(text, pos)
    if m is None:
        return None
    num, den = (m.group("num"), m.group("den")) if m.group("num") else (m.group("num_s"), m.group("den_s"))
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return -value if (m.group("sign") or m.group("sign_s")) else value


def number_at(text: str, pos: int) -> Fraction | None:
    """The number starting at ``pos`` (fraction literals first, so ``3/4`` is not read as 3).

    >>> number_at("$1,080.", 0), number_at("\\u22123.50 dollars", 0), number_at(r"\\frac{3}{4}", 0)
    (Fraction(1080, 1), Fraction(-7, 2), Fraction(3, 4))
    """
    frac = _fraction_literal_at(text, pos)
    if frac is not None:
        return frac
    m = _NUMBER_RE.match(text, pos)
    return _fraction_of(m) if m else None


def _number_after(text: str, pos: int) -> Fraction | None:
    lead = re.compile(_LEAD).match(text, pos)
    return number_at(text, lead.end() if lead else pos)


def _box_number(content: str) -> Fraction | None:
    tail = content.rsplit("=", 1)[-1]
    return _number_after(tail, 0)


def last_number(text: str) -> Fraction | None:
    """The last number anywhere in the text (not glued to a word: ``x2`` is not a number).

    >>> last_number("3 apples and 4.50 dollars, so 12.")
    Fraction(12, 1)
    """
    last = None
    for m in _LOOSE_NUMBER_RE.finditer(text):
        last = m
    if last is None:
        return None
    frac = _fraction_literal_at(text, last.start())
    return frac if frac is not None else _fraction_of(last)


def find_answer(text: str, fallback: str = "last_number") -> Fraction | None:
    """The GSM8K answer policy: the last marker followed by a number wins, else (optionally) the last number.

    >>> find_answer("The answer is 5. Wait, I made an error. #### 6")
    Fraction(6, 1)
    >>> find_answer(r"So \\boxed{18}. The answer is not 20.")
    Fraction(18, 1)
    """
    markers: list[tuple[int, str, Any]] = [(m.start(), "phrase", m.end()) for m in _PHRASE.finditer(text)]
    markers += [(b.start, "box", b.content) for b in find_boxes(text) if b.content]
    for _, kind, payload in sorted(markers, key=lambda x: x[0], reverse=True):
        value = _number_after(text, payload) if kind == "phrase" else _box_number(payload)
        if value is not None:
            return value
    return last_number(text) if fallback == "last_number" else None


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


def parse_gold(reference: str) -> Fraction | None:
    """The gold number: the text after the last ``####`` if present (a whole gold solution), else the text.

    >>> parse_gold("She makes 9 * 2 = $<<9*2=18>>18.\\n#### 18"), parse_gold("1,080")
    (Fraction(18, 1), Fraction(1080, 1))
    """
    tail = reference.rsplit("####", 1)[-1] if "####" in reference else reference
    value = _number_after(tail, 0)
    return value if value is not None else last_number(tail)


class GSM8KVerifier(AnswerVerifier):
    """Final number (last marker wins) compared exactly with the number after the gold's ``####``."""

    name: ClassVar[str] = "gsm8k"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = GSM8KVerifierConfig(**options)

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        value = find_answer(text, self.config.fallback)
        return None if value is None else canonical(value)

    def equivalent(self, answer: str, reference: str) -> bool:
        a, b = parse_gold(answer), parse_gold(reference)
        return a is not None and b is not None and a == b
