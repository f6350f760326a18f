"""HumanEval (OpenAI, 164 hand-written Python functions) from the local ``HumanEval.jsonl``; test split only.

What: ``HumanEvalProblems`` (registry name ``humaneval``) reads the file published in ``openai/human-eval``
(gunzipped). Each task becomes a ``Problem`` graded by the sandboxed code verifier (``sandboxed_tests``):

- ``id`` ``humaneval/<n>`` (from ``HumanEval/<n>``); ``prompt`` the task's ``prompt`` (imports, signature,
  docstring), which the model continues; ``answer`` None;
- ``tests`` ``{"format": "humaneval", "prompt": prompt, "test": test, "entry_point": entry_point}``, the
  ``test`` code defining ``check(candidate)``;
- ``solution`` ``prompt + canonical_solution``, a complete program;
- ``meta`` ``task_id`` and ``entry_point``.

HumanEval is an evaluation set: asking for its ``train`` split (e.g. as a training pool) is an error.
Where the file is: option ``path``, else ``data_dir`` (default ``$SELFIMPROVE_BENCHMARKS_DIR/humaneval``,
else ``data/benchmarks/humaneval``) joined with ``HumanEval.jsonl``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.io import DataError
from selfimprove.problems.base import CodeFeedback, ProblemSet
from selfimprove.problems.jsonl import benchmark_file, iter_numbered_jsonl, require_file, row_field
from selfimprove.types import Problem


class HumanEvalProblemsConfig(Strict):
    """Options of the ``humaneval`` problem set (``problems.humaneval.*`` in params.yaml)."""

    data_dir: str | None = Field(default=None, description="Folder holding HumanEval.jsonl.")
    path: str | None = Field(default=None, description="The data file itself (overrides data_dir).")


class HumanEvalProblems(CodeFeedback, ProblemSet):
    """HumanEval's 164 problems as the ``test`` split."""

    name: ClassVar[str] = "humaneval"
    default_verifier: ClassVar[str] = "sandboxed_tests"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = HumanEvalProblemsConfig(**options)
        self.path = benchmark_file("humaneval", self.config.path, self.config.data_dir, "HumanEval.jsonl")
        self._cache: list[Problem] | None = None

    def splits(self) -> list[str]:
        return ["test"]

    def load(self, split: str) -> list[Problem]:
        if split != "test":
            raise DataError(
                f"humaneval has only a 'test' split (it is an evaluation set), not {split!r}; "
                "train on another problem set (e.g. mbpp) and evaluate on humaneval"
            )
        if self._cache is None:
            path = require_file(self.path, "humaneval", "HumanEval", "HumanEval.jsonl")
            self._cache = [self._problem(row, f"{path}:{n}") for n, row in iter_numbered_jsonl(path)]
        return list(self._cache)

    def _problem(self, row: Any, where: str) -> Problem:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        task_id = row_field(row, "task_id", str, where, "HumanEval")
        prompt = row_field(row, "prompt", str, where, "HumanEval")
        canonical = row_field(row, "canonical_solution", str, where, "HumanEval")
        test = row_field(row, "test", str, where, "HumanEval")
        entry = row_field(row, "entry_point", str, where, "HumanEval")
        if "def check(" not in test:
            raise DataError(f"{where}: field 'test' of {task_id} does not define check(candidate)")
        return Problem(
            id=f"humaneval/{task_id.rsplit('/', 1)[-1]}",
            prompt=prompt,
            answer=None,
            solution=prompt + canonical,
            tests={"format": "humaneval", "prompt": prompt, "test": test, "entry_point": entry},
            verifier=self.default_verifier,
            source=self.name,
            meta={"task_id": task_id, "entry_point": entry},
        )
