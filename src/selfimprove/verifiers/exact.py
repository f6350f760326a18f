"""Exact-match verifier: the completion's answer text must equal the gold after whitespace normalisation.

What: ``ExactMatchVerifier`` (registry name ``exact_match``) is the verifier for problems whose answer is a
short literal: synthetic arithmetic (``12345``), classification labels, hand-written JSONL sets. It is the
default of ``ProblemSet`` and of the ``jsonl`` problem set.

How: ``extract`` returns the stripped completion, or with the option ``answer_regex`` the first group of
the last match of that pattern (e.g. ``"#### (\\S+)"``); ``equivalent`` compares after collapsing runs of
whitespace (``"a  b\\n"`` = ``"a b"``). Nothing else is normalised: case, punctuation and number formats
count. Use ``gsm8k`` for numbers written freely and ``math_equiv`` for LaTeX.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from selfimprove.options import Strict
from selfimprove.types import Problem
from selfimprove.verifiers.base import AnswerVerifier


class ExactMatchConfig(Strict):
    """Options of the ``exact_match`` verifier (``verify.exact_match.*`` in params.yaml)."""

    answer_regex: str | None = Field(
        default=None,
        description="Pattern whose first group is the answer; the last match in the completion wins. "
        "None: the whole stripped completion is the answer.",
    )

    @field_validator("answer_regex")
    @classmethod
    def _compiles_with_a_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            pattern = re.compile(v)
        except re.error as e:
            raise ValueError(f"answer_regex {v!r} is not a valid regular expression: {e}") from None
        if pattern.groups < 1:
            raise ValueError(
                f"answer_regex {v!r} needs a capturing group around the answer, e.g. '#### (\\S+)'"
            )
        return v


def normalise(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends.

    >>> normalise("  12 \\n 345\\t")
    '12 345'
    """
    return " ".join(text.split())


class ExactMatchVerifier(AnswerVerifier):
    """Answer text equal to the gold after whitespace normalisation."""

    name: ClassVar[str] = "exact_match"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = ExactMatchConfig(**options)
        self._pattern = re.compile(self.config.answer_regex) if self.config.answer_regex else None

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        if self._pattern is None:
            answer = text.strip()
            return answer or None
        last = None
        for last in self._pattern.finditer(text):
            pass
        if last is None or last.group(1) is None:
            return None
        return last.group(1).strip() or None

    def equivalent(self, answer: str, reference: str) -> bool:
        return normalise(answer) == normalise(reference)
