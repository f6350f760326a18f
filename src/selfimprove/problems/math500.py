"""MATH-500 (the PRM800K test subset of MATH: 500 competition problems, levels 1-5) from local JSONL.

What: ``Math500Problems`` (registry name ``math500``) reads ``test.jsonl`` as published in
``openai/prm800k`` (``prm800k/math_splits/test.jsonl``; rows ``{"problem", "solution", "answer", "subject",
"level", "unique_id"}``). Each row becomes a ``Problem`` graded by ``math_equiv``:

- ``id`` ``math500/<unique_id without .json>`` (e.g. ``math500/test/precalculus/807``), stable across
  file order;
- ``prompt`` the problem in ``prompt_template``; ``messages`` a ``system_prompt`` message and the problem as the
  user message (chat models, ``model.chat``); ``answer`` the gold LaTeX ``answer`` field;
- ``solution`` the gold worked solution (it ends with the answer in ``\\boxed{}``);
- ``difficulty`` the MATH ``level`` (1-5); ``meta`` ``subject`` and ``unique_id``.

MATH-500 is an evaluation set: it has only the ``test`` split, so asking for ``train`` (e.g. as a training
pool) is an error; train on MATH's train split through the ``jsonl`` set. Where the file is: option
``path``, else ``data_dir`` (default ``$SELFIMPROVE_BENCHMARKS_DIR/math500``, else
``data/benchmarks/math500``) joined with ``test.jsonl``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.io import DataError
from selfimprove.problems.base import ProblemSet
from selfimprove.problems.jsonl import (
    benchmark_file,
    check_template,
    iter_numbered_jsonl,
    require_file,
    row_field,
)
from selfimprove.types import Problem


class Math500ProblemsConfig(Strict):
    """Options of the ``math500`` problem set (``problems.math500.*`` in params.yaml)."""

    data_dir: str | None = Field(default=None, description="Folder holding test.jsonl.")
    path: str | None = Field(default=None, description="The data file itself (overrides data_dir).")
    prompt_template: str = Field(
        default="Problem:\n{problem}\n\nSolution:", description="Prompt text; {problem} is replaced."
    )
    system_prompt: str | None = Field(
        default="Solve the problem step by step. Put the final answer within \\boxed{}.",
        description="Chat-format models (model.chat): the system message; None = no system message.",
    )


class Math500Problems(ProblemSet):
    """MATH-500 as the ``test`` split, difficulty = MATH level."""

    name: ClassVar[str] = "math500"
    default_verifier: ClassVar[str] = "math_equiv"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = Math500ProblemsConfig(**options)
        check_template(self.config.prompt_template, "problems.math500.prompt_template", ["problem"])
        self.path = benchmark_file("math500", self.config.path, self.config.data_dir, "test.jsonl")
        self._cache: list[Problem] | None = None

    def splits(self) -> list[str]:
        return ["test"]

    def load(self, split: str) -> list[Problem]:
        if split != "test":
            raise DataError(
                f"math500 has only a 'test' split (MATH-500 is an evaluation set), not {split!r}; "
                "train on another set, e.g. MATH train as problems.jsonl"
            )
        if self._cache is None:
            path = require_file(self.path, "math500", "MATH-500", "test.jsonl")
            problems: list[Problem] = []
            seen: dict[str, str] = {}
            for n, row in iter_numbered_jsonl(path):
                where = f"{path}:{n}"
                problem = self._problem(row, where)
                if problem.id in seen:
                    raise DataError(
                        f"{where}: duplicate unique_id {problem.meta['unique_id']!r} "
                        f"(first at {seen[problem.id]})"
                    )
                seen[problem.id] = where
                problems.append(problem)
            self._cache = problems
        return list(self._cache)

    def _problem(self, row: Any, where: str) -> Problem:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        problem = row_field(row, "problem", str, where, "MATH-500")
        solution = row_field(row, "solution", str, where, "MATH-500")
        answer = row_field(row, "answer", str, where, "MATH-500")
        subject = row_field(row, "subject", str, where, "MATH-500")
        level = row_field(row, "level", int, where, "MATH-500")
        unique_id = row_field(row, "unique_id", str, where, "MATH-500")
        if not answer.strip():
            raise DataError(f"{where}: field 'answer' is empty")
        return Problem(
            id=f"math500/{unique_id.removesuffix('.json')}",
            prompt=self.config.prompt_template.format(problem=problem),
            messages=([{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else [])
            + [{"role": "user", "content": problem}],
            answer=answer,
            solution=solution,
            difficulty=level,
            verifier=self.default_verifier,
            source=self.name,
            meta={"subject": subject, "unique_id": unique_id},
        )
