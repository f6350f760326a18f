"""exact_match verifier: whitespace-normalised string equality, optional answer regex (last match wins)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from selfimprove.types import Completion, Problem
from selfimprove.verifiers import VERIFIERS
from selfimprove.verifiers.exact import ExactMatchVerifier


def test_registered():
    assert VERIFIERS.get("exact_match") is ExactMatchVerifier


@pytest.mark.parametrize(
    ("options", "text", "expected"),
    [
        ({}, "  9750 \n", "9750"),
        ({}, "", None),
        ({}, " \n\t", None),
        ({}, "two  words", "two  words"),
        ({"answer_regex": r"#### (\S+)"}, "work...\n#### 42", "42"),
        ({"answer_regex": r"#### (\S+)"}, "#### 41\n#### 42", "42"),  # the last match wins
        ({"answer_regex": r"#### (\S+)"}, "no marker", None),
        ({"answer_regex": r"answer: (\w+)|(x)"}, "x", None),  # the first group did not take part
        ({"answer_regex": r"<a>(.*?)</a>"}, "<a> spaced </a>", "spaced"),
        ({"answer_regex": r"<a>(.*?)</a>"}, "<a>  </a>", None),
    ],
)
def test_extract(options, text, expected):
    assert ExactMatchVerifier(**options).extract(text) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "equal"),
    [
        ("9750", "9750", True),
        ("9750", " 9750\n", True),
        ("a  b", "a b", True),
        ("a\tb\nc", "a b c", True),
        ("ab", "a b", False),
        ("Yes", "yes", False),  # case counts
        ("1.0", "1", False),  # number formats count: use the gsm8k verifier for numbers
        ("", "", True),
    ],
)
def test_equivalent(answer, reference, equal):
    assert ExactMatchVerifier().equivalent(answer, reference) is equal


def test_check_end_to_end():
    v = ExactMatchVerifier(answer_regex=r"= ?(\d+)")
    p = Problem(id="p", prompt="12+30=", answer="42")
    c = Completion(id="p#0", problem_id="p", round=1, sample_idx=0, text="12+30 = 42")
    verdict = v.check(p, c)
    assert (verdict.passed, verdict.status, verdict.answer, verdict.verifier) == (
        True,
        "pass",
        "42",
        "exact_match",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"answer_regex": "(unclosed"}, "not a valid regular expression"),
        ({"answer_regex": r"#### \S+"}, "capturing group"),
        ({"answer_regx": "x"}, "answer_regx"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValidationError, match=message):
        ExactMatchVerifier(**options)
