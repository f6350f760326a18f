"""Built-in filters for the validate stage.

| name | keeps |
|---|---|
| ``keep_correct`` | completions a gold verifier passed |
| ``agreement`` | completions in the (label-free) majority whose agreement share is in [``min``, ``max``] (a pass-rate band) |
| ``pass_rate_band`` | rows of problems whose pass rate (or majority vote share) is in [``min``, ``max``] |
| ``min_score`` | completions whose verdict score is >= ``min`` (judges, partial credit) |
| ``format`` | completions that stopped on their own and whose answer matches the problem's ``answer_regex`` |
| ``length`` | completions within ``min_chars``..``max_chars`` (and ``max_tokens``) |
| ``dedup`` | the first of identical (problem, normalised completion) rows |
| ``per_problem_cap`` | at most ``max`` rows per problem (greedy first, then highest log-probability) |
| ``decontaminate`` | rows whose prompt is not in the evaluation set (exact, whitespace-normalised) |
| ``view_agreement`` | answers consistent with the agreed labels of all their problem's views (``sample.views``) |
| ``entropy_weight`` | every row; sets ``weight`` from the entropy of its problem's answers (EAST; ``sharpness``, ``min_weight``) |
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from selfimprove.registry import Registry
from selfimprove.types import Completion, Problem, Verdict


@dataclass
class Candidate:
    problem: Problem
    completion: Completion
    verdict: Verdict
    weight: float = 1.0


@dataclass
class FilterContext:
    """What filters may consult besides the rows: the evaluation prompts (for decontamination) and the
    problem set (for its view-consistency rule)."""

    eval_prompts: frozenset[str] = frozenset()
    problem_set: Any = None


@dataclass
class FilterStat:
    function: str
    kwargs: dict
    rows_in: int
    rows_out: int
    problems_out: int = 0

    @property
    def removed(self) -> int:
        return self.rows_in - self.rows_out


FilterFn = Callable[..., list[Candidate]]
FILTERS: Registry[FilterFn] = Registry("filter")


def _norm(text: str) -> str:
    return " ".join(text.split())


@FILTERS.register("keep_correct")
def keep_correct(rows: list[Candidate], ctx: FilterContext, proposals_only: bool = False) -> list[Candidate]:
    """Rows whose verdict passed (``proposals_only``: only model-written problems are filtered, others pass)."""
    return [r for r in rows if r.verdict.passed or (proposals_only and not r.problem.meta.get("proposal"))]


@FILTERS.register("agreement")
def agreement(rows: list[Candidate], ctx: FilterContext, min: float = 0.5, max: float = 1.0) -> list[Candidate]:  # noqa: A002
    if not 0.0 <= min <= max <= 1.0:
        raise ValueError(f"agreement needs 0 <= min <= max <= 1, got min {min}, max {max}")
    # a problem labelled by construction (a model-written one, graded against its computed label) has no vote to agree
    return [r for r in rows if r.verdict.passed and (min - 1e-12 <= (r.verdict.agreement or 0.0) <= max + 1e-12 or (
        r.verdict.agreement is None and r.problem.meta.get("label_source") == "execution"))]


@FILTERS.register("pass_rate_band")
def pass_rate_band(rows: list[Candidate], ctx: FilterContext, min: float = 0.0, max: float = 1.0,  # noqa: A002
                   proposals_only: bool = False) -> list[Candidate]:
    """Rows of problems whose pass rate lies in [min, max]: the share of the problem's samples that passed the
    round's verifier, or, for a label-free vote, the vote share of its majority answer. Put it first: it must
    see every sample of a problem (``loop.curriculum.band`` does). ``proposals_only``: the band applies to
    model-written problems (``meta.proposal``, ``propose.band``) and every other row passes."""
    if not 0.0 <= min <= max <= 1.0:
        raise ValueError(f"pass_rate_band needs 0 <= min <= max <= 1, got min {min}, max {max}")
    keep = {pid for pid, rate in pass_rates(rows).items() if min - 1e-12 <= rate <= max + 1e-12}
    return [r for r in rows if r.problem.id in keep or (proposals_only and not r.problem.meta.get("proposal"))]


def pass_rates(rows: list[Candidate]) -> dict[str, float]:
    """Per problem: the share of its samples that passed the round's verifier, or, for a label-free vote, the vote
    share of its majority answer (the expected reward of a group of its samples)."""
    by_problem: dict[str, list[Candidate]] = defaultdict(list)
    for r in rows:
        by_problem[r.problem.id].append(r)
    out = {}
    for pid, rs in by_problem.items():
        shares = [r.verdict.agreement for r in rs if r.verdict.agreement is not None]
        out[pid] = shares[0] if shares else sum(r.verdict.passed for r in rs) / len(rs)
    return out


@FILTERS.register("min_score")
def min_score(rows: list[Candidate], ctx: FilterContext, min: float = 0.5) -> list[Candidate]:  # noqa: A002
    return [r for r in rows if r.verdict.score >= min]


@FILTERS.register("format")
def format_(rows: list[Candidate], ctx: FilterContext, require_stop: bool = True) -> list[Candidate]:
    out = []
    for r in rows:
        if require_stop and r.completion.finish_reason != "stop":
            continue
        if not r.completion.text.strip():
            continue
        pattern = r.problem.meta.get("answer_regex")
        if pattern:
            answer = r.verdict.answer if r.verdict.answer is not None else r.completion.text.strip()
            if not re.fullmatch(pattern, answer):
                continue
        out.append(r)
    return out


@FILTERS.register("length")
def length(
    rows: list[Candidate], ctx: FilterContext, min_chars: int = 1, max_chars: int = 100_000, max_tokens: int | None = None
) -> list[Candidate]:
    return [
        r
        for r in rows
        if min_chars <= len(r.completion.text) <= max_chars and (max_tokens is None or r.completion.n_tokens <= max_tokens)
    ]


@FILTERS.register("dedup")
def dedup(rows: list[Candidate], ctx: FilterContext) -> list[Candidate]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        key = (r.problem.id, _norm(r.completion.text))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@FILTERS.register("per_problem_cap")
def per_problem_cap(rows: list[Candidate], ctx: FilterContext, max: int = 1) -> list[Candidate]:  # noqa: A002
    if max < 1:
        raise ValueError(f"per_problem_cap.max must be >= 1, got {max}")
    by: dict[str, list[Candidate]] = defaultdict(list)
    for r in rows:
        by[r.problem.id].append(r)
    out = []
    for items in by.values():
        items.sort(key=lambda r: (not r.completion.greedy, -(r.completion.logprob or 0.0), r.completion.sample_idx))
        out.extend(items[:max])
    return out


@FILTERS.register("view_agreement")
def view_agreement(rows: list[Candidate], ctx: FilterContext, min: float = 1.0) -> list[Candidate]:  # noqa: A002
    """Keep an answer only if every view of its problem (``sample.views``) has a label with agreement >= ``min``
    that is consistent with it (the problem set decides what consistent means, e.g. the low digits of a sum
    equal the sum of the low digits). A view whose answers were filtered out counts as failed. View rows
    themselves pass through unchanged: validate never trains on them."""
    labels: dict[str, tuple[str, float]] = {}
    view_problems = {}
    for r in rows:
        if r.problem.meta.get("view_of") and r.verdict.label is not None:
            labels[r.problem.id] = (r.verdict.label, r.verdict.agreement or 0.0)
            view_problems[r.problem.id] = r.problem
    out = []
    for r in rows:
        if r.problem.meta.get("view_of"):
            out.append(r)
            continue
        answer = r.verdict.answer if r.verdict.answer is not None else r.completion.text
        ok = True
        for vid in r.problem.meta.get("views", []):
            got = labels.get(vid)
            if got is None or got[1] < min - 1e-12:
                ok = False
                break
            if ctx.problem_set is None or not ctx.problem_set.view_consistent(r.problem, answer, view_problems[vid], got[0]):
                ok = False
                break
        if ok:
            out.append(r)
    return out


@FILTERS.register("decontaminate")
def decontaminate(rows: list[Candidate], ctx: FilterContext) -> list[Candidate]:
    if not ctx.eval_prompts:
        return rows
    return [r for r in rows if _norm(r.problem.prompt) not in ctx.eval_prompts]


def check_kwargs(name: str, kwargs: dict) -> None:
    """Raise a ValueError naming unknown/missing filter arguments (called at config time)."""
    fn = FILTERS.get(name)
    sig = inspect.signature(fn)
    params = [p for p in list(sig.parameters)[2:]]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"filter {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(params) or 'nothing'}")


def run_filters(
    rows: list[Candidate], steps: Iterable[tuple[str, dict]], ctx: FilterContext
) -> tuple[list[Candidate], list[FilterStat]]:
    stats = []
    for name, kwargs in steps:
        check_kwargs(name, kwargs)
        before = len(rows)
        rows = FILTERS.get(name)(rows, ctx, **kwargs)
        stats.append(FilterStat(name, dict(kwargs), before, len(rows), len({r.problem.id for r in rows})))
    return rows, stats


@FILTERS.register("entropy_weight")
def entropy_weight(
    rows: list[Candidate], ctx: FilterContext, sharpness: float = 1.0, min_weight: float = 0.05
) -> list[Candidate]:
    """EAST-style weights (Wang et al. 2025, "Entropy-Based Adaptive Weighting for Self-Training"): keeps every row and
    multiplies its ``weight`` by a function of the entropy of its problem's answer distribution.

    Per problem: ``h`` = entropy of the answers of the problem's rows at this point of the pipeline (verdict answers;
    each unparseable completion counts as an answer of its own), divided by ``log(n)`` for ``n`` rows, so ``h`` is in
    [0, 1] (1 problem row: 0). The factor is ``max(h, min_weight) ** sharpness``: ``sharpness > 0`` favours problems
    the model is unsure about (EAST's choice: they carry the most signal), ``< 0`` favours confident ones, 0 is
    uniform; ``min_weight`` keeps unanimous problems from vanishing. The factors are then scaled to mean 1 over the
    rows, so the learning rate keeps its meaning (the weighted trainer rescales the final set again).

    Place it before filters that drop rows (``agreement``, ``keep_correct``, ``per_problem_cap``): the entropy is
    measured on the rows it sees.
    """
    import math

    if not 0.0 < min_weight <= 1.0:
        raise ValueError(f"entropy_weight.min_weight must be within (0, 1], got {min_weight}")
    by: dict[str, list[Candidate]] = defaultdict(list)
    for r in rows:
        by[r.problem.id].append(r)
    factor: dict[str, float] = {}
    for pid, items in by.items():
        counts: dict[str, int] = defaultdict(int)
        for i, r in enumerate(items):
            counts[r.verdict.answer if r.verdict.answer is not None else f"\0unparsed{i}"] += 1
        n = len(items)
        h = 0.0 if n < 2 else -sum(c / n * math.log(c / n) for c in counts.values()) / math.log(n)
        factor[pid] = max(h, min_weight) ** sharpness
    if not rows:
        return rows
    mean = sum(factor[r.problem.id] for r in rows) / len(rows)
    from dataclasses import replace

    return [replace(r, weight=r.weight * factor[r.problem.id] / mean) for r in rows]
