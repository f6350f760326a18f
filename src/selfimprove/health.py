"""Loop health, every round: the signals that self-improvement is going wrong before accuracy shows it.

What: ``sample_health`` (label-free, recorded by the ``validate`` stage) and ``gold_health`` (against the
hidden gold, recorded by ``evaluate``) turn one round's samples, verdicts and accepted labels into
``health/*`` metrics. They reach the round's metrics file (``runs/metrics/rN.json``), MLflow logs them with
``step=round``, and the ``summary`` stage writes them across rounds to ``runs/summary/health.csv`` (a DVC
plot) and ``health.png`` beside the accuracy plot.

Why these (each guards against a failure mode reported for self-training):

- ``distinct_answers``, ``answer_entropy``: answer diversity per problem; exploration decays over iterations
  (B-STaR), and a loop that always agrees with itself has nothing left to learn from.
- ``distinct_2``: distinct word bigrams over all completions (character bigrams for one-word completions);
  ``repetition_rate``: share of completions that repeat a 3-gram three times or more; ``mean_length``,
  ``stop_rate``: collapse into repetitive or runaway output (Collapse, SCSCL).
- ``pass_at_k``, ``pass_at_1``, ``exploration`` (= pass@k - pass@1) on the round's sampled problems against
  the hidden gold: "Self-Improvement Reversal", pass@1 rising while pass@k falls.
- ``accepted/<bucket>``: accepted labels per difficulty; the hard tail vanishing (GSI's tail narrowing).
- ``proxy_agreement`` (the label-free proxy the loop used: the mean vote share of the labels that passed)
  beside ``acceptance_precision`` (accepted labels correct against gold, computed by ``evaluate``):
  "consistent but wrong" (LRM-Self-Train, SRT), a proxy that rises while precision falls.

How: pure functions over records; the gold verifier is the problem set's own (the one ``evaluate`` uses).
Nothing here depends on time or order of dictionaries beyond the input's, so the same round gives the same
numbers.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

from selfimprove.textstats import distinct_n, repeats  # noqa: F401 (part of this module's vocabulary)
from selfimprove.types import Completion, Problem, TrainRow, Verdict
from selfimprove.verifiers.base import AnswerVerifier


def entropy_bits(counts: Sequence[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


def sample_health(
    samples: Sequence[Completion],
    verdicts: Sequence[Verdict],
    problems: dict[str, Problem],
    accepted: Sequence[TrainRow],
) -> dict[str, float]:
    """The label-free ``health/*`` metrics of a round (the ``validate`` stage records them); no gold is read.

    >>> from selfimprove.types import Completion, Problem
    >>> cs = [Completion(id=f"p#{i}", problem_id="p", round=1, sample_idx=i, text=t) for i, t in enumerate(["12", "12", "13"])]
    >>> vs = [Verdict(sample_id=c.id, problem_id="p", round=1, verifier="v", passed=True, score=1.0, answer=c.text) for c in cs]
    >>> h = sample_health(cs, vs, {"p": Problem(id="p", prompt="", difficulty=2)}, [])
    >>> h["health/distinct_answers"], round(h["health/answer_entropy"], 3), h["health/stop_rate"]
    (2.0, 0.918, 1.0)
    """
    from selfimprove.metrics import bucket

    out: dict[str, float] = {}
    drawn = [c for c in samples if not c.greedy] or list(samples)
    if not drawn:
        return out
    verdict_of = {v.sample_id: v for v in verdicts}
    by_problem: dict[str, list[Completion]] = defaultdict(list)
    for c in drawn:
        by_problem[c.problem_id].append(c)
    distinct, entropies = [], []
    for cs in by_problem.values():
        answers = Counter((verdict_of[c.id].answer if c.id in verdict_of else None) for c in cs)
        distinct.append(len(answers))
        entropies.append(entropy_bits(list(answers.values())))
    out["health/distinct_answers"] = sum(distinct) / len(distinct)
    out["health/answer_entropy"] = sum(entropies) / len(entropies)
    d2 = distinct_n([c.text for c in drawn], 2)
    if d2 is not None:
        out["health/distinct_2"] = d2
    out["health/repetition_rate"] = sum(repeats(c.text) for c in drawn) / len(drawn)
    out["health/mean_length"] = sum(c.n_tokens or len(c.text) for c in drawn) / len(drawn)
    out["health/stop_rate"] = sum(c.finish_reason == "stop" for c in drawn) / len(drawn)
    per_bucket = Counter(bucket(problems[r.problem_id]) for r in accepted if r.problem_id in problems)
    for b, n in sorted(per_bucket.items()):
        out[f"health/accepted/{b}"] = float(n)
    agreements = [v.agreement for v in verdicts if v.passed and v.agreement is not None]
    if agreements:
        out["health/proxy_agreement"] = sum(agreements) / len(agreements)
    return out


def gold_health(samples: Sequence[Completion], problems: dict[str, Problem], gold: AnswerVerifier) -> dict[str, float]:
    """pass@1, pass@k and their gap (exploration) of the round's samples against the hidden gold (the
    ``evaluate`` stage records them; problems without gold are skipped)."""
    by_problem: dict[str, list[Completion]] = defaultdict(list)
    for c in [c for c in samples if not c.greedy] or list(samples):  # a greedy-only round: its samples
        by_problem[c.problem_id].append(c)
    pass1, passk = [], []
    for pid, cs in by_problem.items():
        p = problems.get(pid)
        if p is None or p.answer is None:
            continue
        ok = [gold.check(p, c).passed for c in cs]  # the evaluation's grading: extraction, then comparison/scorer
        pass1.append(sum(ok) / len(ok))
        passk.append(float(any(ok)))
    if not pass1:
        return {}
    out = {"health/pass_at_1": sum(pass1) / len(pass1), "health/pass_at_k": sum(passk) / len(passk)}
    out["health/exploration"] = out["health/pass_at_k"] - out["health/pass_at_1"]
    return out


# ------------------------------------------------------------------------------------------------ health gates


def health_table(rounds: Sequence[dict], gates: Sequence) -> tuple[object, dict[str, str]]:
    """The health table GX checks: one row per round, a column per gated metric, plus a derived column per
    relative gate; and, per column, the gate it checks (for the report)."""
    import pandas as pd

    df = pd.DataFrame({"round": [int(r["round"]) for r in rounds]})
    checks: dict[str, str] = {}
    for g in gates:
        values = [r.get(g.metric) for r in rounds]
        df[g.metric] = pd.Series([float("nan") if v is None else float(v) for v in values], dtype="float64")
        if g.min is not None or g.max is not None:
            checks[g.metric] = g.metric
        if g.min_fraction_of_first is not None:
            first = next((v for v in values if v is not None), None)
            col = f"{g.metric} / first"
            df[col] = [float("nan") if v is None or not first else float(v) / float(first) for v in values]
            checks[col] = g.metric
        if g.max_rise is not None:
            col = f"{g.metric} rise"
            df[col] = [float("nan")] + [float("nan") if None in (values[i - 1], values[i])
                                        else float(values[i]) - float(values[i - 1]) for i in range(1, len(rounds))]
            checks[col] = g.metric
        if g.not_falling_while is not None:
            other = [r.get(g.not_falling_while) for r in rounds]
            col = f"{g.metric} falls while {g.not_falling_while} rises"
            flags = [0]
            for i in range(1, len(rounds)):
                a0, a1, b0, b1 = values[i - 1], values[i], other[i - 1], other[i]
                flags.append(int(None not in (a0, a1, b0, b1) and a1 < a0 and b1 > b0))
            df[col] = flags
            df[g.not_falling_while] = [float("nan") if v is None else float(v) for v in other]
            checks[col] = g.metric
    return df, checks


def check_health(rounds: Sequence[dict], gates: Sequence, name: str = "health") -> dict:
    """Check the gates on the rounds so far with Great Expectations; ``{"success", "failures", "table"}``.

    Each failure names the gate's metric, the expectation, its values across rounds and the rounds that failed.
    """
    import great_expectations.expectations as gxe

    from selfimprove.quality import validate_frame

    df, checks = health_table(rounds, gates)
    expectations = []
    for g in gates:
        if g.min is not None or g.max is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(column=g.metric, min_value=g.min, max_value=g.max))
        if g.min_fraction_of_first is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(column=f"{g.metric} / first",
                                                                   min_value=g.min_fraction_of_first))
        if g.max_rise is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(column=f"{g.metric} rise", max_value=g.max_rise))
        if g.not_falling_while is not None:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(
                column=f"{g.metric} falls while {g.not_falling_while} rises", value_set=[0]))
    report = validate_frame(df, expectations, name)
    failures = []
    for f in report.failures:
        column = f["column"]
        metric = checks.get(column, column)
        bad_rounds = [int(df.loc[i, "round"]) for i in f.get("unexpected_index_list") or []]
        failures.append({
            "metric": metric, "check": column, "expectation": f["expectation"],
            "bounds": {k: v for k, v in f["kwargs"].items() if k in ("min_value", "max_value", "value_set")},
            # a rise gate shows the metric itself across rounds (its rises are what the check read)
            "values": {int(r): (None if v != v else round(float(v), 4))
                       for r, v in zip(df["round"], df[metric if column == f"{metric} rise" else column])},
            "failed_rounds": bad_rounds,
        })
    table = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
             for row in df.to_dict(orient="records")]
    return {"success": report.success, "failures": failures, "table": table}


def describe_failure(failure: dict) -> str:
    """One line: the metric, the check and its values across rounds.

    >>> describe_failure({"metric": "acceptance_precision", "check": "acceptance_precision", "bounds": {"min_value": 0.9},
    ...                   "values": {1: 0.95, 2: 0.7}, "failed_rounds": [2]})
    'acceptance_precision (acceptance_precision, min_value 0.9) failed in round 2; across rounds: r1 0.95, r2 0.7'
    """
    bounds = ", ".join(f"{k} {v}" for k, v in failure["bounds"].items())
    values = ", ".join(f"r{r} {v}" for r, v in failure["values"].items())
    rounds = ", ".join(str(r) for r in failure["failed_rounds"])
    return f"{failure['metric']} ({failure['check']}, {bounds}) failed in round {rounds}; across rounds: {values}"
