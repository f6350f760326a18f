"""Scoring a round: pass@k, per-difficulty buckets, held-out accuracy and label precision (pure functions)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from selfimprove.samplers.base import Sampler, SamplingParams
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import AnswerVerifier, Verifier


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021).

    >>> round(pass_at_k(4, 1, 1), 3), pass_at_k(4, 0, 4), pass_at_k(4, 1, 4)
    (0.25, 0.0, 1.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def bucket(p: Problem) -> str:
    return f"d{p.difficulty}" if p.difficulty is not None else "all"


def score_eval(
    problems: Sequence[Problem], completions: Sequence[Completion], verdicts: Sequence[Verdict], k: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy accuracy, maj@k and pass@k per difficulty bucket and overall (mean over buckets)."""
    by_problem: dict[str, list[tuple[Completion, Verdict]]] = defaultdict(list)
    for c, v in zip(completions, verdicts):
        by_problem[c.problem_id].append((c, v))
    per_bucket: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows = []
    for p in problems:
        items = by_problem.get(p.id, [])
        greedy = [v for c, v in items if c.greedy]
        samples = [v for c, v in items if not c.greedy]
        g = float(greedy[0].passed) if greedy else float("nan")
        b = per_bucket[bucket(p)]
        b["accuracy"].append(g)
        row: dict[str, Any] = {"problem_id": p.id, "difficulty": p.difficulty, "greedy_correct": bool(g == 1.0),
                               "greedy_answer": greedy[0].answer if greedy else None, "gold": p.answer}
        if k and samples:
            n, c = len(samples), sum(v.passed for v in samples)
            b[f"pass_at_{k}"].append(pass_at_k(n, c, min(k, n)))
            b["pass_at_1_sampled"].append(c / n)
            votes: dict[str, list[Verdict]] = defaultdict(list)
            for v in samples:
                if v.answer is not None:
                    votes[v.answer].append(v)
            maj = max(votes.values(), key=len) if votes else []
            b[f"maj_at_{k}"].append(float(bool(maj) and maj[0].passed))
            row.update(samples_correct=c, samples=n)
        rows.append(row)
    metrics: dict[str, float] = {}
    overall: dict[str, list[float]] = defaultdict(list)
    for bname in sorted(per_bucket, key=lambda s: (len(s), s)):
        for m, vals in per_bucket[bname].items():
            vals = [x for x in vals if not math.isnan(x)]
            if vals:
                metrics[f"{m}/{bname}"] = sum(vals) / len(vals)
                overall[m].append(metrics[f"{m}/{bname}"])
    for m, vals in overall.items():
        metrics[m] = sum(vals) / len(vals)
    return metrics, rows


def evaluate_with(
    sampler: Sampler, problems: Sequence[Problem], verifier: Verifier, params: SamplingParams, round: int,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    completions, verdicts = sample_and_grade(sampler, problems, verifier, params, round, progress)
    return score_eval(problems, completions, verdicts, params.k)


def sample_and_grade(sampler: Sampler, problems: Sequence[Problem], verifier: Verifier, params: SamplingParams,
                     round: int, progress: bool = True) -> tuple[list[Completion], list[Any]]:
    """The evaluation's completions and their verdicts (``evaluate_with`` scores them; ``evaluate`` also hands the
    greedy ones to the held-out second attempts)."""
    if hasattr(sampler, "progress_desc"):
        sampler.progress_desc = "evaluate"
    completions = sampler.sample(problems, params, round=round, progress=progress)
    return completions, verifier.verify({p.id: p for p in problems}, completions)


def label_precision(
    rows: Sequence[Any], problems: dict[str, Problem], verifier: Verifier
) -> tuple[float | None, dict[str, float]]:
    """Share of accepted self-labels that are correct against the hidden gold (reward-hacking check)."""
    if not rows:
        return None, {}
    if not isinstance(verifier, AnswerVerifier) or not getattr(verifier, "answers", True):
        return None, {}
    ok: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        p = problems.get(r.problem_id)
        if p is None or p.answer is None:
            continue
        # the evaluation's own grading of the label (extract, then the set's comparison or scorer)
        label = Completion(id=f"{r.problem_id}#label", problem_id=r.problem_id, round=0, sample_idx=0,
                           text=r.completion)
        ok[bucket(p)].append(verifier.check(p, label).passed)
    flat = [x for v in ok.values() for x in v]
    if not flat:
        return None, {}
    return sum(flat) / len(flat), {k: sum(v) / len(v) for k, v in ok.items()}
