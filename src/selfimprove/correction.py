"""Second attempts: the pure parts of the ``correct`` stage, the SFT rows built from its traces, its flip metrics and
GRPO's two-attempt reward (docs/correct.md).

What the trained self-correction work measures and trains (SCoRe, RISE, STaSC; read, not copied):

- ``flip_metrics``: accuracy at attempt 1 and at attempt 2, their difference, and the shares of first attempts that
  flip wrong->right and right->wrong (a right->wrong share that rises is a model learning to break answers), plus
  the mean edit distance between the attempts (0: the model repeats itself, "no edit" collapse);
- ``trace_rows``: SFT on (x, y1, feedback) -> y2 where the second attempt passes; every wrong->right trace, and
  right->right ("keep the answer") traces up to ``keep_ratio`` per wrong->right one, so the model neither learns to
  change every answer nor only to repeat its first one (STaSC/RISE's filter); y1 is on-policy (the round's samples);
- ``improvement_reward``: r2 + alpha * (r2 - r1) (SCoRe's bonus on improving), which GRPO's two-attempt rollout
  optimises (``selfimprove.trainers.grpo``).

Edit distances come from ``rapidfuzz`` (C++ Levenshtein).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from selfimprove.types import Completion, Problem, Trace, TrainRow

#: the flip metrics, in the order tables and plots show them
FLIP_KEYS = ("acc1", "acc2", "delta", "wrong_to_right", "right_to_wrong", "edit")


def edit_distance(a: str, b: str) -> float:
    """Normalised Levenshtein distance between two attempts (0 = same text, 1 = nothing in common).

    >>> edit_distance("9750", "9750"), edit_distance("9750", "9751")
    (0.0, 0.25)
    """
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(a.strip(), b.strip()))


def first_attempts(completions: Sequence[Completion], problems: dict[str, Problem], per_problem: int
                   ) -> list[Completion]:
    """The completions that get a second attempt: per problem (views left out) and ensemble member, the greedy one
    first, then in sample order, up to ``per_problem``."""
    taken: dict[tuple[str, Any], int] = {}
    ordered = sorted(completions, key=lambda c: (not c.greedy, c.sample_idx))
    out = []
    for c in ordered:
        p = problems.get(c.problem_id)
        if p is None or p.meta.get("view_of"):
            continue
        key = (c.problem_id, c.meta.get("member"))
        if taken.get(key, 0) < per_problem:
            taken[key] = taken.get(key, 0) + 1
            out.append(c)
    order = {c.id: i for i, c in enumerate(completions)}
    return sorted(out, key=lambda c: order[c.id])


def flip_metrics(traces: Sequence[Trace], prefix: str = "correct/") -> dict[str, float]:
    """acc@1, acc@2, delta, the wrong->right and right->wrong shares (of all first attempts) and the mean edit
    distance between the attempts that were made. Empty without traces.

    >>> t = lambda r1, r2: Trace(id="t", problem_id="p", round=1, mode="intrinsic", x="", y1="1", r1=r1,
    ...                          feedback="=", y2="1" if r1 == r2 else "2", r2=r2)
    >>> m = flip_metrics([t(True, True), t(False, True), t(True, False), t(False, False)])
    >>> m["correct/acc1"], m["correct/acc2"], m["correct/wrong_to_right"], m["correct/right_to_wrong"]
    (0.5, 0.5, 0.25, 0.25)
    """
    if not traces:
        return {}
    n = len(traces)
    acc1 = sum(t.r1 for t in traces) / n
    acc2 = sum(t.r2 for t in traces) / n
    tried = [t for t in traces if t.attempted]
    return {
        f"{prefix}traces": float(n),
        f"{prefix}acc1": acc1,
        f"{prefix}acc2": acc2,
        f"{prefix}delta": acc2 - acc1,
        f"{prefix}wrong_to_right": sum((not t.r1) and t.r2 for t in traces) / n,
        f"{prefix}right_to_wrong": sum(t.r1 and not t.r2 for t in traces) / n,
        f"{prefix}edit": sum(t.edit for t in tried) / len(tried) if tried else 0.0,
        f"{prefix}unchanged": sum(t.edit == 0.0 for t in tried) / len(tried) if tried else 0.0,
    }


def trace_rows(traces: Sequence[Trace], problems: dict[str, Problem], pset: Any, keep_ratio: float, round: int,
               seed: int) -> list[TrainRow]:
    """SFT rows from a round's traces: the second-attempt prompt (the conversation with y1 and the feedback) ->
    y2, for every wrong->right trace and up to ``keep_ratio`` right->right traces per wrong->right one (chosen by
    ``seed``). Episodes that ended after a right first attempt (extrinsic) teach no second attempt."""
    fixed = [t for t in traces if t.attempted and t.r2 and not t.r1]
    kept = [t for t in traces if t.attempted and t.r2 and t.r1]
    n_keep = min(len(kept), int(round_half_up(len(fixed) * keep_ratio)))
    kept = random.Random(seed).sample(kept, n_keep) if n_keep < len(kept) else kept
    rows = []
    for t in sorted(fixed + kept, key=lambda t: t.id):
        p = problems[t.problem_id]
        second = pset.correction_prompt(p, t.y1, t.feedback, id=t.id)
        rows.append(TrainRow(id=f"r{round}/{t.id}", prompt=second.prompt, completion=t.y2, problem_id=t.problem_id,
                             origin="self", round=round, difficulty=p.difficulty, label=t.label,
                             messages=second.messages))
    return rows


def round_half_up(x: float) -> int:
    """>>> round_half_up(2.5), round_half_up(0.4)
    (3, 0)
    """
    return int(x + 0.5)


def improvement_reward(r1: float, r2: float, alpha: float) -> float:
    """SCoRe's reward on a two-attempt episode: the second attempt's reward plus a bonus on improving.

    >>> improvement_reward(0, 1, 1.0), improvement_reward(1, 0, 1.0), improvement_reward(1, 1, 1.0)
    (2.0, -1.0, 1.0)
    """
    return r2 + alpha * (r2 - r1)


def corrupt(answer: str, rng: random.Random) -> str | None:
    """The answer with one digit changed (a plausible wrong first attempt), or None when it has no digit.

    >>> corrupt("9750", random.Random(0)) != "9750"
    True
    """
    digits = [i for i, ch in enumerate(answer) if ch.isdigit()]
    if not digits:
        return None
    i = rng.choice(digits)
    new = rng.choice([d for d in "0123456789" if d != answer[i]])
    return answer[:i] + new + answer[i + 1:]


def format_rows(pset: Any, problems: Sequence[Problem], mode: str, instruction: str | None, share: float,
                seed: int) -> list[TrainRow]:
    """Labelled rows in the second-attempt format for a model trained from scratch (``correct.bootstrap``): it has
    never seen a second attempt, so round 0 learns the format on the labelled problems: the gold answer after a first
    attempt that is wrong (one digit changed) or, intrinsic only, right (keep it): ``share`` x the problems."""
    rng = random.Random(seed)
    pool = [p for p in problems if p.answer is not None]
    rows: list[TrainRow] = []
    for p in rng.sample(pool, min(len(pool), int(round_half_up(len(pool) * share)))):
        keep = mode == "intrinsic" and rng.random() < 0.5
        first = p.answer if keep else corrupt(str(p.answer), rng)
        if first is None:
            continue
        fb = pset.feedback(mode, None, instruction)
        second = pset.correction_prompt(p, first, fb, id=f"{p.id}/fix")
        rows.append(TrainRow(id=f"real/{p.id}/fix", prompt=second.prompt, completion=str(p.answer), problem_id=p.id,
                             origin="real", round=0, difficulty=p.difficulty, label=p.answer,
                             messages=second.messages))
    return rows
