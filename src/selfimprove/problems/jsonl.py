"""Problems from any JSONL file, schema-checked on load; plus the file helpers the benchmark sets share.

What: ``JsonlProblems`` (registry name ``jsonl``) turns rows ``{"id", "prompt", "answer", ...}`` into
``Problem`` records. Every row is checked before anything runs: a missing or mistyped field, an unknown
key, or an id seen before raises ``DataError`` naming the file, the line and the field, and saying what to
change. A misspelt key (``"answr"``) is an error with a suggestion, not a silently unlabelled problem.

Splits: either ``splits: {split: file}`` (one file per split; ``path`` may be that mapping too), or one file
``path``. A single file holds one split named by ``split`` (default ``train``) unless ``split_field`` names a
row key whose value is the split (``{"id": "q1", "split": "test", ...}``). Ids must be unique across all files of the set, so no
problem can be in both the training pool and the evaluation split.

Row schema (extra keys rejected): ``id`` (str, or int read as str), ``prompt`` (non-empty str), ``answer``
(str, or a number read as str; required unless the row has ``tests`` or ``require_answer`` is false),
``solution`` (str), ``tests`` (object, for code verifiers), ``difficulty`` (int), ``verifier`` (a registered
verifier name), ``meta`` (object), ``source`` (str).

Also here: ``benchmark_dir`` / ``require_file`` / ``iter_numbered_jsonl``, used by the GSM8K, MATH-500,
MBPP and HumanEval sets to find their files and to report errors the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.io import MAX_LINE_BYTES, DataError, parse_json_line
from selfimprove.problems.base import ProblemSet
from selfimprove.registry import did_you_mean
from selfimprove.types import Problem

#: Folder holding one sub-folder per benchmark (gsm8k/, math500/, mbpp/, humaneval/); used when a problem
#: set is given no ``data_dir``.
BENCHMARKS_ENV = "SELFIMPROVE_BENCHMARKS_DIR"
DEFAULT_BENCHMARKS_DIR = Path("data") / "benchmarks"


def benchmark_dir(set_name: str, data_dir: str | Path | None) -> Path:
    """The folder of one benchmark: ``data_dir`` if given, else ``$SELFIMPROVE_BENCHMARKS_DIR/<set>``,
    else ``data/benchmarks/<set>`` relative to the working directory (the DVC-tracked default)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    root = os.environ.get(BENCHMARKS_ENV)
    return (Path(root).expanduser() if root else DEFAULT_BENCHMARKS_DIR) / set_name


def benchmark_file(set_name: str, path: str | Path | None, data_dir: str | Path | None, file_name: str) -> Path:
    """A benchmark's data file: the explicit ``path`` option if set, else ``file_name`` in :func:`benchmark_dir`."""
    return Path(path).expanduser() if path else benchmark_dir(set_name, data_dir) / file_name


def require_file(path: Path, set_name: str, label: str, expected: str) -> Path:
    """``path`` if it is a file, else a DataError saying where the data was looked for and how to fix it."""
    if path.is_file():
        return path
    raise DataError(
        f"{label} data not found at {path}: "
        f"set problems.{set_name}.data_dir to the folder holding {expected} "
        f"(or set {BENCHMARKS_ENV} to a folder holding {set_name}/{expected.split(' ')[0]})"
    )


def iter_numbered_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Strict JSONL (see ``selfimprove.io``) with line numbers, so field errors can name the line."""
    with open(path, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            where = f"{path}:{lineno}"
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise DataError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            yield lineno, parse_json_line(line, where)


def row_field(row: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    """``row[key]``, required and of type ``kind``; the error names the place, the field and the fix."""
    if key not in row:
        raise DataError(
            f"{where}: {what} row has no {key!r} field (keys: {', '.join(sorted(row)) or 'none'})"
        )
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        raise DataError(f"{where}: field {key!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def check_template(template: str, option: str, fields: list[str]) -> None:
    """Fail at construction, not mid-run, if a prompt template has a stray brace or misses a field."""
    try:
        template.format(**{f: "" for f in fields})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{option}: cannot fill {template!r} ({type(e).__name__}: {e}); available fields: "
            f"{', '.join('{' + f + '}' for f in fields)}; write literal braces as {{{{ and }}}}"
        ) from None
    if not any("{" + f + "}" in template for f in fields):
        raise ValueError(f"{option}: {template!r} uses none of {', '.join('{' + f + '}' for f in fields)}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


# ---------------------------------------------------------------------------------------------- jsonl set

_ROW_KEYS = ("id", "prompt", "answer", "solution", "tests", "difficulty", "verifier", "meta", "source")


class JsonlProblemsConfig(Strict):
    """Options of the ``jsonl`` problem set (``problems.jsonl.*`` in params.yaml)."""

    path: str | dict[str, str] | None = Field(
        default=None,
        description="One JSONL file, or a mapping {split: file}; relative paths start at the working dir.",
    )
    splits: dict[str, str] = Field(
        default_factory=dict, description="Split name -> JSONL file (instead of path)."
    )
    split_field: str | None = Field(
        default=None, description="Row key holding each row's split (single-file path only)."
    )
    split: str = Field(default="train", description="Split name of a single file without split_field.")
    verifier: str | None = Field(
        default=None, description="Verifier for rows that name none (default exact_match)."
    )
    require_answer: bool = Field(default=True, description="False: rows may omit 'answer' (unlabelled pool).")
    name: str = Field(default="jsonl", description="Written to Problem.source.")


class JsonlProblems(ProblemSet):
    """Problems from JSONL rows ``{"id", "prompt", "answer", ...}``, checked row by row on load."""

    name: ClassVar[str] = "jsonl"
    default_verifier: ClassVar[str] = "exact_match"
    verifiers: ClassVar[tuple[str, ...]] = ("exact_match", "gsm8k", "math_equiv", "sandboxed_tests")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = JsonlProblemsConfig(**options)
        path_option, splits = self.config.path, self.config.splits
        if (path_option is None) == (not splits):
            raise ValueError(
                "problems.jsonl: give either path (one JSONL file) or splits ({split: file}), not "
                + ("both" if splits else "neither")
            )
        # None marks the single-file case, whose rows get their split from split_field or the split option.
        self._files: dict[str | None, str] = (
            dict(splits)
            if splits
            else dict(path_option)
            if isinstance(path_option, dict)
            else {None: path_option}
        )
        if None not in self._files and self.config.split_field:
            raise ValueError(
                "problems.jsonl: split_field applies to a single file; with a {split: file} mapping drop it"
            )
        if self.config.verifier is not None:
            _check_verifier_name(self.config.verifier, "problems.jsonl.verifier")
        self._splits: dict[str, list[Problem]] | None = None

    def gold_verifier(self) -> str:
        return self.config.verifier or self.default_verifier

    def splits(self) -> list[str]:
        return list(self._load_all())

    def load(self, split: str) -> list[Problem]:
        splits = self._load_all()
        if split not in splits:
            how = (
                "a {split: file} mapping in problems.jsonl.splits"
                if None not in self._files
                else "problems.jsonl.split_field, or problems.jsonl.split for a single file"
            )
            raise DataError(
                f"jsonl problem set has no split {split!r}; it has {sorted(splits) or 'none'} "
                f"(from {', '.join(self._files.values())}); set {how}"
            )
        return list(splits[split])

    def _load_all(self) -> dict[str, list[Problem]]:
        if self._splits is not None:
            return self._splits
        seen: dict[str, str] = {}
        out: dict[str, list[Problem]] = {}
        for file_split, file in self._files.items():
            path = Path(file).expanduser()
            if not path.is_file():
                option = "path" if file_split is None else "splits"
                raise DataError(
                    f"{path}: file not found; set problems.jsonl.{option} to an existing JSONL file"
                )
            for lineno, row in iter_numbered_jsonl(path):
                where = f"{path}:{lineno}"
                split = file_split if file_split is not None else self._row_split(row, where)
                problem = self._problem(row, where)
                if problem.id in seen:
                    raise DataError(
                        f"{where}: duplicate id {problem.id!r} (first at {seen[problem.id]}); "
                        "ids must be unique across all files and splits of the set"
                    )
                seen[problem.id] = where
                out.setdefault(split, []).append(problem)
        self._splits = out
        return out

    def _row_split(self, row: Any, where: str) -> str:
        if not self.config.split_field:
            return self.config.split
        if not isinstance(row, dict):
            return self.config.split  # _problem reports the row itself
        value = row.pop(self.config.split_field, None)
        if not isinstance(value, str) or not value:
            raise DataError(
                f"{where}: field {self.config.split_field!r} (problems.jsonl.split_field) must be a "
                "non-empty "
                f"string naming the row's split, got {value!r}"
            )
        return value

    def _problem(self, row: Any, where: str) -> Problem:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        unknown = [k for k in row if k not in _ROW_KEYS]
        if unknown:
            key = unknown[0]
            raise DataError(
                f"{where}: unknown field {key!r}{did_you_mean(key, list(_ROW_KEYS))} "
                f"Allowed: {', '.join(_ROW_KEYS)}"
            )
        data = dict(row)
        pid = row_field(row, "id", (str, int), where, "problem")
        data["id"] = str(pid)
        if not data["id"].strip():
            raise DataError(f"{where}: field 'id' is empty")
        if not row_field(row, "prompt", str, where, "problem").strip():
            raise DataError(f"{where}: field 'prompt' is empty")
        answer = row.get("answer")
        has_tests = row.get("tests") is not None
        if answer is None:
            if self.config.require_answer and not has_tests:
                raise DataError(
                    f"{where}: row has no 'answer' (nor 'tests'); add the gold answer, or set "
                    "problems.jsonl.require_answer: false for an unlabelled pool"
                )
        elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(
                f"{where}: field 'answer' must be a string or number, got {type(answer).__name__}"
            )
        elif isinstance(answer, float) and not math.isfinite(answer):
            raise DataError(f"{where}: field 'answer' is not a finite number")
        else:
            data["answer"] = str(answer)
        for key, kind in (
            ("solution", str),
            ("tests", dict),
            ("difficulty", int),
            ("meta", dict),
            ("source", str),
        ):
            value = row.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise DataError(
                    f"{where}: field {key!r} must be {_kind_name(kind)}, got {type(value).__name__}"
                )
        verifier = row.get("verifier")
        if verifier is not None:
            if not isinstance(verifier, str):
                raise DataError(f"{where}: field 'verifier' must be a string, got {type(verifier).__name__}")
            _check_verifier_name(verifier, f"{where}: field 'verifier'")
        data["verifier"] = verifier or self.config.verifier or self.default_verifier
        if not data.get("source"):
            data["source"] = self.config.name
        if data.get("meta") is None:
            data.pop("meta", None)
        return Problem.model_validate(data)


def _check_verifier_name(name: str, where: str) -> None:
    from selfimprove.verifiers import VERIFIERS

    if name not in VERIFIERS:
        known = VERIFIERS.names()
        raise DataError(
            f"{where}: unknown verifier {name!r}{did_you_mean(name, known)} Known: {', '.join(known)}"
        )
