"""MBPP (Mostly Basic Python Problems, Google) from local files: the full set or the hand-verified subset.

What: ``MBPPProblems`` (registry name ``mbpp``) reads ``mbpp.jsonl`` (``variant: full``, 974 tasks) or
``sanitized-mbpp.json`` (``variant: sanitized``, 427 tasks, a JSON array) as published in
``google-research/google-research/mbpp``. Splits follow the MBPP README by ``task_id``, for both variants:
``prompt`` 1-10 (few-shot examples), ``test`` 11-510, ``validation`` 511-600, ``train`` 601-974.

Each task becomes a ``Problem`` graded by the sandboxed code verifier (``sandboxed_tests``):

- ``id`` ``mbpp/<variant>/<task_id>``; ``answer`` None (code is graded by its tests);
- ``prompt`` the task text with the first test as a usage example, in the shape of the standard MBPP
  prompt (``prompt_template``, default a docstring block: ``\"\"\"\\n<text>\\n<first assert>\\n\"\"\"\\n``);
- ``tests`` ``{"format": "asserts", "asserts": test_list, "challenge_asserts": challenge_test_list or [],
  "setup": test_setup_code or "", "imports": test_imports or []}`` (line endings in setup code normalised);
- ``solution`` the reference code with ``\\r\\n`` (and a stray ``\\r``) normalised to ``\\n``;
- ``meta`` ``task_id``, ``variant``, ``split``, ``entry_point`` (the function the tests call, when the
  reference code defines it) and, for the sanitized set, ``source_file``.

Where the files are: option ``path`` (the file itself), else ``data_dir`` (default
``$SELFIMPROVE_BENCHMARKS_DIR/mbpp``, else ``data/benchmarks/mbpp``) joined with the variant's file name.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.io import DataError, parse_json_line
from selfimprove.problems.base import CodeFeedback, ProblemSet
from selfimprove.problems.jsonl import (
    benchmark_file,
    check_template,
    iter_numbered_jsonl,
    require_file,
    row_field,
)
from selfimprove.types import Problem

#: task_id ranges of the MBPP README (inclusive).
SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
FILES = {"full": "mbpp.jsonl", "sanitized": "sanitized-mbpp.json"}
_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


class MBPPProblemsConfig(Strict):
    """Options of the ``mbpp`` problem set (``problems.mbpp.*`` in params.yaml)."""

    variant: Literal["full", "sanitized"] = Field(
        default="full", description="mbpp.jsonl or sanitized-mbpp.json."
    )
    data_dir: str | None = Field(default=None, description="Folder holding mbpp.jsonl / sanitized-mbpp.json.")
    path: str | None = Field(default=None, description="The data file itself (overrides data_dir).")
    prompt_template: str = Field(
        default='"""\n{text}\n{example}\n"""\n',
        description="Prompt text; fields {text} (task), {example} (first assert), {tests} (all asserts).",
    )


def split_of(task_id: int) -> str | None:
    """The README split of a task id.

    >>> split_of(1), split_of(11), split_of(600), split_of(974), split_of(975)
    ('prompt', 'test', 'validation', 'train', None)
    """
    for split, (lo, hi) in SPLITS.items():
        if lo <= task_id <= hi:
            return split
    return None


def entry_point(code: str, first_test: str) -> str | None:
    """The function the tests call, if the reference code defines it.

    >>> entry_point("def helper(x):\\n  pass\\ndef area(r):\\n  return helper(r)", "assert area(2)==4")
    'area'
    """
    defined = set(_DEF.findall(code))
    for name in _CALL.findall(first_test):
        if name in defined:
            return name
    return None


def _unix_newlines(code: Any) -> Any:
    """``\\r\\n`` and lone ``\\r`` (four full-MBPP solutions end in one) become ``\\n``; other values pass."""
    return code.replace("\r\n", "\n").replace("\r", "\n") if isinstance(code, str) else code


class MBPPProblems(CodeFeedback, ProblemSet):
    """MBPP full or sanitized, split by task_id as in the MBPP README."""

    name: ClassVar[str] = "mbpp"
    default_verifier: ClassVar[str] = "sandboxed_tests"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = MBPPProblemsConfig(**options)
        check_template(
            self.config.prompt_template, "problems.mbpp.prompt_template", ["text", "example", "tests"]
        )
        file_name = FILES[self.config.variant]
        self.path = benchmark_file("mbpp", self.config.path, self.config.data_dir, file_name)
        self._all: list[Problem] | None = None

    # --------------------------------------------------------------------------- model-written tasks (propose)

    def proposal_prompt(self, examples: list[Problem], index: int, rng: Any) -> Problem:
        from selfimprove.problems.code_proposals import proposal_messages

        messages = proposal_messages(examples)
        return Problem(id=f"propose/{index}", prompt=messages[-1]["content"], messages=messages, source=self.name,
                       meta={"parents": [e.id for e in examples], "max_new_tokens": 384})

    def parse_proposal(self, text: str, examples: list[Problem], round: int) -> Any:
        from selfimprove.problems.code_proposals import parse_code_proposal

        return parse_code_proposal(text, round, self.config.prompt_template, self.name)

    def check_proposals(self, parsed: list[Any], sandbox: dict[str, Any]) -> None:
        from selfimprove.problems.code_proposals import check_code_proposals

        check_code_proposals(parsed, sandbox)

    def splits(self) -> list[str]:
        return list(SPLITS)

    def load(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise DataError(
                f"mbpp has no split {split!r}; use one of {list(SPLITS)} (task_id ranges of the MBPP README)"
            )
        return [p for p in self._load_all() if p.meta["split"] == split]

    def _load_all(self) -> list[Problem]:
        if self._all is not None:
            return self._all
        expected = FILES[self.config.variant]
        path = require_file(self.path, "mbpp", f"MBPP ({self.config.variant})", f"{expected}")
        if self.config.variant == "full":
            rows = [(f"{path}:{n}", row) for n, row in iter_numbered_jsonl(path)]
        else:
            data = parse_json_line(path.read_bytes(), str(path))
            if not isinstance(data, list):
                raise DataError(
                    f"{path}: expected a JSON array of tasks (sanitized-mbpp.json); "
                    f"got {type(data).__name__}. "
                    "For mbpp.jsonl set problems.mbpp.variant: full"
                )
            rows = [(f"{path}: task #{i}", row) for i, row in enumerate(data)]
        problems: list[Problem] = []
        seen: dict[int, str] = {}
        for where, row in rows:
            problem = self._problem(row, where)
            task_id = problem.meta["task_id"]
            if task_id in seen:
                raise DataError(f"{where}: duplicate task_id {task_id} (first at {seen[task_id]})")
            seen[task_id] = where
            problems.append(problem)
        self._all = problems
        return problems

    def _problem(self, row: Any, where: str) -> Problem:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per task, got {type(row).__name__}")
        full = self.config.variant == "full"
        task_id = row_field(row, "task_id", int, where, "MBPP")
        text = row_field(row, "text" if full else "prompt", str, where, f"MBPP {self.config.variant}")
        code = _unix_newlines(row_field(row, "code", str, where, "MBPP"))
        asserts = row_field(row, "test_list", list, where, "MBPP")
        if not asserts or not all(isinstance(a, str) for a in asserts):
            raise DataError(f"{where}: field 'test_list' must be a non-empty list of assert strings")
        challenge = row.get("challenge_test_list") or []
        setup = _unix_newlines(row.get("test_setup_code") or "")
        imports = row.get("test_imports") or []
        if not isinstance(challenge, list) or not isinstance(setup, str) or not isinstance(imports, list):
            raise DataError(
                f"{where}: challenge_test_list/test_imports must be lists and test_setup_code a string"
            )
        split = split_of(task_id)
        if split is None:
            raise DataError(f"{where}: task_id {task_id} is outside the MBPP README ranges 1-974")
        prompt = self.config.prompt_template.format(
            text=text.strip(), example=asserts[0], tests="\n".join(asserts)
        )
        meta: dict[str, Any] = {"task_id": task_id, "variant": self.config.variant, "split": split}
        ep = entry_point(code, asserts[0])
        if ep is not None:
            meta["entry_point"] = ep
        if "source_file" in row:
            meta["source_file"] = row["source_file"]
        return Problem(
            id=f"mbpp/{self.config.variant}/{task_id}",
            prompt=prompt,
            answer=None,
            solution=code,
            tests={
                "format": "asserts",
                "asserts": list(asserts),
                "challenge_asserts": list(challenge),
                "setup": setup,
                "imports": list(imports),
            },
            verifier=self.default_verifier,
            source=self.name,
            meta=meta,
        )
