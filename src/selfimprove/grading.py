"""Grade a file of completions with the registered verifiers, outside the loop (``selfimprove grade``).

What: ``grade_file`` reads completions, routes each to its verifier by name through the ``VERIFIERS``
registry, writes one verdict per completion and a summary (counts per verifier and status). It is the same
grading the ``verify`` stage does, usable on any file: a model's outputs from another harness, a
hand-written regression table, or a round's ``samples.jsonl``.

Two input shapes, told apart by the first row:

- **records**: one JSON object per line, keys ``completion`` (str, required), ``verifier`` (str),
  ``gold`` (str or number) or ``tests`` (object, for code verifiers), ``id``, ``prompt``, ``problem`` (a full
  ``Problem`` object; ``gold``/``tests``/``prompt`` given beside it override its fields), ``options`` (this
  record's verifier options, e.g. ``{"policy": {"percent": "fraction"}}``, laid over ``--set``), ``expect``
  (the verdict a careful grader requires: ``true``/``false`` or a status such as ``"no_answer"``) and
  ``note`` (free text). Unknown keys are errors. With ``expect``, each verdict row says whether it
  ``agrees`` and the summary counts the agreement and lists every disagreement: a table of expected verdicts
  is a regression suite for the verifiers (``tests/verifiers/case_table.jsonl`` is one).
- **samples**: ``Completion`` rows as the ``sample`` stage writes them; their problems are read from
  ``problems.jsonl`` beside the file (or ``problems_path``).

Which verifier: the record's ``verifier``, else ``verifier`` (the ``--verifier`` option), else the problem's
``verifier`` field; a record without any is an error naming its line.

How: records are grouped by verifier (and options) and each verifier gets all of its records in one ``verify`` call, so
batch verifiers (the sandboxed code verifier with its worker pool, judges) see the whole batch. Verdicts come
back in input order and are written atomically (``selfimprove.io.write_jsonl``) as ``Verdict`` rows with an
``id`` (the completion's id) first; the summary is written as JSON beside them. Any malformed input raises
``DataError`` naming the file and line before a single verifier runs.
"""

from __future__ import annotations

import logging
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from selfimprove.io import DataError, iter_jsonl, write_json, write_jsonl
from selfimprove.registry import UnknownNameError, did_you_mean
from selfimprove.types import Completion, Problem, Verdict, VerdictStatus

log = logging.getLogger(__name__)

RECORD_KEYS = ("id", "verifier", "gold", "tests", "completion", "prompt", "problem", "options", "expect", "note")
STATUSES = get_args(VerdictStatus)
InputFormat = Literal["records", "samples"]


@dataclass
class VerifierSummary:
    n: int = 0
    passed: int = 0
    status: dict[str, int] = field(default_factory=dict)
    expected: int = 0  # records with an 'expect' key
    agree: int = 0  # ... whose verdict is the expected one

    @property
    def accuracy(self) -> float:
        return self.passed / self.n if self.n else 0.0


@dataclass
class GradeReport:
    """What ``grade_file`` did: where it read and wrote, and the counts per verifier and status."""

    input: str
    out: str
    summary_path: str
    format: InputFormat
    n: int
    passed: int
    by_verifier: dict[str, VerifierSummary]
    expected: int = 0
    agree: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)  # id, where, expected, status, reason

    @property
    def accuracy(self) -> float:
        return self.passed / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        for name, s in self.by_verifier.items():
            d["by_verifier"][name]["accuracy"] = s.accuracy
        return d


@dataclass
class GradeItem:
    """One completion to grade, with its problem, the verifier it goes to, and where it was read."""

    where: str
    verifier: str
    problem: Problem
    completion: Completion
    options: Mapping[str, Any] = field(default_factory=dict)  # this record's verifier options (e.g. a policy)
    expect: str | None = None  # the verdict status a careful grader requires ('pass', 'fail', 'no_answer', ...)

    def agrees(self, verdict: Verdict) -> bool | None:
        return None if self.expect is None else verdict.status == self.expect


def default_out(input_path: str | Path) -> Path:
    """``x.jsonl`` -> ``x.verdicts.jsonl`` beside it (never a round's own ``verdicts.jsonl``)."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.verdicts.jsonl")


def _summary_path(out: Path) -> Path:
    stem = out.name.removesuffix(".jsonl")
    return out.with_name(f"{stem}.summary.json")


def _numbered(path: Path) -> list[tuple[str, Any]]:
    # iter_jsonl checks the file strictly and skips blank lines; count lines the same way for error messages.
    rows = list(iter_jsonl(path))
    where = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                where.append(f"{path}:{n}")
    return list(zip(where, rows, strict=True))


def _invalid(where: str, model: str, e: ValidationError) -> DataError:
    errs = "; ".join(f"{'.'.join(map(str, er['loc'])) or '<row>'}: {er['msg']}" for er in e.errors())
    return DataError(f"{where}: invalid {model}: {errs}")


def _record_item(where: str, row: Any, default_verifier: str | None, n: int) -> GradeItem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = [k for k in row if k not in RECORD_KEYS]
    if unknown:
        k = unknown[0]
        raise DataError(
            f"{where}: unknown key {k!r}{did_you_mean(k, list(RECORD_KEYS))} "
            f"Allowed: {', '.join(RECORD_KEYS)}"
        )
    text = row.get("completion")
    if not isinstance(text, str):
        raise DataError(
            f"{where}: 'completion' must be a string (the model's output), got {type(text).__name__}"
        )
    base: dict[str, Any] = {}
    if row.get("problem") is not None:
        if not isinstance(row["problem"], dict):
            raise DataError(f"{where}: 'problem' must be an object with Problem fields")
        base = dict(row["problem"])
    rid = row.get("id", base.get("id", f"line{n}"))
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"{where}: 'id' must be a string")
    rid = str(rid)
    gold = row.get("gold")
    if gold is not None:
        if (
            isinstance(gold, bool)
            or not isinstance(gold, (str, int, float))
            or (isinstance(gold, float) and not math.isfinite(gold))
        ):
            raise DataError(f"{where}: 'gold' must be a string or a finite number, got {gold!r}")
        base["answer"] = str(gold)
    if row.get("tests") is not None:
        if not isinstance(row["tests"], dict):
            raise DataError(f"{where}: 'tests' must be an object (see the code verifier's test schema)")
        base["tests"] = row["tests"]
    if row.get("prompt") is not None:
        base["prompt"] = row["prompt"]
    base.setdefault("id", rid)
    base.setdefault("prompt", "")
    try:
        problem = Problem.model_validate(base)
    except ValidationError as e:
        raise _invalid(where, "problem", e) from None
    name = row.get("verifier") or default_verifier or problem.verifier
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: no verifier: add a 'verifier' key to the record or pass --verifier NAME")
    options = row.get("options") or {}
    if not isinstance(options, dict):
        raise DataError(
            f"{where}: 'options' must be an object of verifier options, e.g. "
            '{"policy": {"percent": "fraction"}}'
        )
    expect = row.get("expect")
    if isinstance(expect, bool):
        expect = "pass" if expect else "fail"
    if expect is not None and expect not in STATUSES:
        raise DataError(f"{where}: 'expect' must be true, false or one of {', '.join(STATUSES)}; got {expect!r}")
    if row.get("note") is not None and not isinstance(row["note"], str):
        raise DataError(f"{where}: 'note' must be a string")
    completion = Completion(id=rid, problem_id=problem.id, round=0, sample_idx=0, text=text)
    return GradeItem(where, name, problem, completion, options, expect)


def load_items(
    input_path: str | Path, verifier: str | None = None, problems_path: str | Path | None = None
) -> tuple[InputFormat, list[GradeItem]]:
    """Read and check the whole input; raise DataError naming file and line on the first problem."""
    path = Path(input_path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass a JSONL file of grade records or a samples.jsonl")
    rows = _numbered(path)
    if not rows:
        raise DataError(f"{path}: no rows to grade")
    first = rows[0][1]
    fmt: InputFormat = (
        "samples"
        if isinstance(first, dict) and {"problem_id", "sample_idx", "text"} <= set(first)
        else "records"
    )
    items: list[GradeItem] = []
    if fmt == "records":
        items = [_record_item(where, row, verifier, n) for n, (where, row) in enumerate(rows, start=1)]
    else:
        ppath = Path(problems_path) if problems_path else path.with_name("problems.jsonl")
        if not ppath.is_file():
            raise DataError(
                f"{path} holds samples (Completion rows) but {ppath} is missing: pass --problems PATH "
                "to the problems.jsonl the samples were drawn from"
            )
        problems: dict[str, Problem] = {}
        for where, row in _numbered(ppath):
            try:
                p = Problem.model_validate(row)
            except ValidationError as e:
                raise _invalid(where, "Problem", e) from None
            if p.id in problems:
                raise DataError(f"{where}: duplicate problem id {p.id!r}")
            problems[p.id] = p
        for where, row in rows:
            try:
                c = Completion.model_validate(row)
            except ValidationError as e:
                raise _invalid(where, "Completion (the first row looked like samples)", e) from None
            if c.problem_id not in problems:
                raise DataError(f"{where}: problem_id {c.problem_id!r} is not in {ppath}")
            p = problems[c.problem_id]
            name = verifier or p.verifier
            if not name:
                raise DataError(f"{where}: problem {p.id!r} names no verifier; pass --verifier NAME")
            items.append(GradeItem(where, name, p, c))
    _check_items(items)
    return fmt, items


def _check_items(items: list[GradeItem]) -> None:
    from selfimprove.verifiers import VERIFIERS

    seen: dict[str, str] = {}
    problems: dict[str, tuple[str, Problem]] = {}
    for it in items:
        if it.completion.id in seen:
            raise DataError(
                f"{it.where}: duplicate id {it.completion.id!r} (first at {seen[it.completion.id]})"
            )
        seen[it.completion.id] = it.where
        if it.problem.id in problems and problems[it.problem.id][1] != it.problem:
            raise DataError(
                f"{it.where}: problem {it.problem.id!r} differs from the one at "
                f"{problems[it.problem.id][0]}; "
                "give each distinct problem its own id"
            )
        problems.setdefault(it.problem.id, (it.where, it.problem))
        try:
            cls = VERIFIERS.get(it.verifier)
        except UnknownNameError as e:
            raise DataError(f"{it.where}: {e}") from None
        except ImportError as e:
            raise DataError(
                f"{it.where}: verifier {it.verifier!r} is registered but cannot be imported: {e}"
            ) from None
        if getattr(cls, "needs_gold", True) and it.problem.answer is None and it.problem.tests is None:
            raise DataError(
                f"{it.where}: verifier {it.verifier!r} grades against a reference but the record has none: "
                "add 'gold' (an answer) or 'tests' (code tests)"
            )


def grade_items(
    items: list[GradeItem], verifier_options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Verdict]:
    """Run each verifier once over all of its items; return verdicts in input order."""
    from selfimprove.verifiers import make_verifier

    verifier_options = verifier_options or {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.verifier, json.dumps(it.options, sort_keys=True)), []).append(i)
    verdicts: list[Verdict | None] = [None] * len(items)
    for (name, _), idx in groups.items():
        options = merge_options(verifier_options.get(name, {}), items[idx[0]].options)
        try:
            v = make_verifier(name, **options)
        except ValidationError as e:
            where = items[idx[0]].where if items[idx[0]].options else f"options of verifier {name!r}"
            raise _invalid(where, f"{name} options", e) from None
        try:
            problems = {items[i].problem.id: items[i].problem for i in idx}
            completions = [items[i].completion for i in idx]
            log.info("grading %d completion(s) with %s", len(completions), name)
            out = v.verify(problems, completions)
        finally:
            v.close()
        if len(out) != len(idx):
            raise RuntimeError(f"verifier {name!r} returned {len(out)} verdicts for {len(idx)} completions")
        by_id = {vd.sample_id: vd for vd in out}
        for i in idx:
            verdicts[i] = by_id[items[i].completion.id]
    return [vd for vd in verdicts if vd is not None]


def merge_options(base: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line options overlaid by a record's own, nested mappings merged key by key.

    >>> merge_options({"timeout_s": 5, "policy": {"percent": "either"}}, {"policy": {"decimal_comma": True}})
    {'timeout_s': 5, 'policy': {'percent': 'either', 'decimal_comma': True}}
    """
    out = dict(base)
    for k, val in record.items():
        if isinstance(val, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_options(out[k], val)
        else:
            out[k] = val
    return out


def summarise(
    verdicts: list[Verdict], items: list[GradeItem] | None = None
) -> tuple[int, int, dict[str, VerifierSummary]]:
    by: dict[str, VerifierSummary] = {}
    for i, vd in enumerate(verdicts):
        s = by.setdefault(vd.verifier, VerifierSummary())
        s.n += 1
        s.passed += int(vd.passed)
        s.status[vd.status] = s.status.get(vd.status, 0) + 1
        agrees = items[i].agrees(vd) if items is not None else None
        if agrees is not None:
            s.expected += 1
            s.agree += int(agrees)
    for s in by.values():
        s.status = dict(Counter(s.status).most_common())
    return len(verdicts), sum(int(v.passed) for v in verdicts), by


def grade_file(
    input_path: str | Path,
    out_path: str | Path | None = None,
    *,
    verifier: str | None = None,
    problems_path: str | Path | None = None,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> GradeReport:
    """Grade ``input_path`` and write ``<out>`` (verdicts JSONL) and ``<out stem>.summary.json``.

    ``verifier`` names the verifier for records that name none (and overrides the problems' own for
    samples); ``verifier_options`` maps a verifier name to its constructor options.
    """
    input_path = Path(input_path)
    out = Path(out_path) if out_path else default_out(input_path)
    if out.resolve() == input_path.resolve():
        raise DataError(f"{out}: the output would overwrite the input; choose another --out")
    fmt, items = load_items(input_path, verifier, problems_path)
    verdicts = grade_items(items, verifier_options)
    rows = []
    disagreements = []
    for it, vd in zip(items, verdicts, strict=True):
        row = {"id": vd.sample_id, **vd.model_dump(mode="json")}
        if it.expect is not None:
            row["expect"], row["agrees"] = it.expect, it.agrees(vd)
            if not row["agrees"]:
                disagreements.append(
                    {"id": vd.sample_id, "where": it.where, "expect": it.expect, "status": vd.status,
                     "reason": vd.reason}
                )
        rows.append(row)
    write_jsonl(out, rows)
    n, passed, by = summarise(verdicts, items)
    report = GradeReport(
        input=str(input_path),
        out=str(out),
        summary_path=str(_summary_path(out)),
        format=fmt,
        n=n,
        passed=passed,
        by_verifier=by,
        expected=sum(s.expected for s in by.values()),
        agree=sum(s.agree for s in by.values()),
        disagreements=disagreements,
    )
    write_json(report.summary_path, report.to_dict())
    log.info("graded %d completion(s): %d passed; verdicts in %s", n, passed, out)
    return report
