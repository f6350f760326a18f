"""GSM8K grade-school word problems (OpenAI, 7473 train / 1319 test) from local JSONL files.

What: ``GSM8KProblems`` (registry name ``gsm8k``) reads ``train.jsonl`` and ``test.jsonl`` as published in
``openai/grade-school-math`` (rows ``{"question", "answer"}``, the answer being a worked solution whose last
line is ``#### <number>``). Each row becomes a ``Problem``:

- ``id`` ``gsm8k/<split>/<line index>``; ``prompt`` the question in ``prompt_template`` (raw-text models);
  ``messages`` a ``system_prompt`` message and the question as the user message (chat models, ``model.chat``);
- ``answer`` the number after ``####``, normalised (``1,080`` -> ``1080``), graded by the ``gsm8k`` verifier;
- ``solution`` the gold worked solution ending in ``#### <number>``, without the ``<<48/2=24>>`` calculator
  annotations unless ``keep_calculator_annotations`` (they are tool calls, not text a model should learn);
- ``difficulty`` the number of solution steps (lines before ``####``), a proxy used for curricula and
  per-difficulty accuracy; ``meta`` holds the raw question, the split and the line index.

Where the files are: option ``data_dir``, else ``$SELFIMPROVE_BENCHMARKS_DIR/gsm8k``, else
``data/benchmarks/gsm8k``. A missing file, a row without ``question``/``answer``, or an answer without
exactly one ``####`` raises ``DataError`` with the file and line.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.io import DataError
from selfimprove.problems.base import ProblemSet
from selfimprove.problems.jsonl import (
    benchmark_dir,
    check_template,
    iter_numbered_jsonl,
    require_file,
    row_field,
)
from selfimprove.types import Problem

_CALCULATOR = re.compile(r"<<[^<>\n]*>>")


class GSM8KProblemsConfig(Strict):
    """Options of the ``gsm8k`` problem set (``problems.gsm8k.*`` in params.yaml)."""

    data_dir: str | None = Field(default=None, description="Folder holding train.jsonl and test.jsonl.")
    prompt_template: str = Field(
        default="Question: {question}\nAnswer:", description="Prompt text; {question} is replaced."
    )
    keep_calculator_annotations: bool = Field(
        default=False, description="Keep '<<a*b=c>>' calculator annotations in Problem.solution."
    )
    system_prompt: str | None = Field(
        default="Solve the math word problem step by step. End with the final answer on its own line as '#### <number>'.",
        description="Chat-format models (model.chat): the system message; None = no system message.",
    )


def gold_number(solution: str) -> str:
    """The normalised final answer of a GSM8K worked solution.

    >>> gold_number("Total: 1,000 + 80 = <<1000+80=1080>>1,080\\n#### 1,080")
    '1080'
    """
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


class GSM8KProblems(ProblemSet):
    """GSM8K train/test from local JSONL files."""

    name: ClassVar[str] = "gsm8k"
    default_verifier: ClassVar[str] = "gsm8k"
    verifiers: ClassVar[tuple[str, ...]] = ("gsm8k", "math_equiv")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = GSM8KProblemsConfig(**options)
        check_template(self.config.prompt_template, "problems.gsm8k.prompt_template", ["question"])
        self.data_dir = benchmark_dir("gsm8k", self.config.data_dir)
        self._cache: dict[str, list[Problem]] = {}

    def splits(self) -> list[str]:
        return ["train", "test"]

    def load(self, split: str) -> list[Problem]:
        if split not in self.splits():
            raise DataError(f"gsm8k has no split {split!r}; use one of {self.splits()}")
        if split not in self._cache:
            path = require_file(self.data_dir / f"{split}.jsonl", "gsm8k", "GSM8K", "train.jsonl/test.jsonl")
            rows = iter_numbered_jsonl(path)
            self._cache[split] = [
                self._problem(row, split, i, f"{path}:{n}") for i, (n, row) in enumerate(rows)
            ]
        return list(self._cache[split])

    def _problem(self, row: Any, split: str, index: int, where: str) -> Problem:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        question = row_field(row, "question", str, where, "GSM8K")
        solution = row_field(row, "answer", str, where, "GSM8K")
        if solution.count("####") != 1:
            raise DataError(
                f"{where}: field 'answer' must be a worked solution ending in exactly one '#### <number>' "
                "line "
                f"(found {solution.count('####')}); is this the openai/grade-school-math file?"
            )
        answer = gold_number(solution)
        if not re.fullmatch(r"-?\d+(?:\.\d+)?", answer):
            raise DataError(f"{where}: final answer {answer!r} after '####' is not a number")
        text = solution if self.config.keep_calculator_annotations else _CALCULATOR.sub("", solution)
        steps = [line for line in solution.split("####", 1)[0].splitlines() if line.strip()]
        return Problem(
            id=f"gsm8k/{split}/{index}",
            prompt=self.config.prompt_template.format(question=question),
            messages=([{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else [])
            + [{"role": "user", "content": question}],
            answer=answer,
            solution=text,
            difficulty=len(steps),
            verifier=self.default_verifier,
            source=self.name,
            meta={"question": question, "split": split, "index": index},
        )
