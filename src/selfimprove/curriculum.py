"""The loop's policy layer: every decision about the next step, and the one definition of "best" (``loop.policy``).

What: after each round the Prefect flow asks :func:`next_step` what to do (the next round, written or already in
the params; stop, with the reason; the round to roll back to after a failed health gate), and after a round
whose data failed validation :func:`after_failed_validation` (retry it with more problems, drop it, or fail the
run). Promotion in the model registry asks :func:`promotion`, which uses the same metric, tolerance and tie rule
as :func:`best_round`, the round the next one starts from: the ``best`` alias and the start model agree.
The curriculum's own step is :func:`decide`, given every round this
run has run so far given every round this
run has run so far (its metrics file and whether it passed its health gates). The answer is a :class:`Decision`:
stop (with the reason), or the next round's entry for ``params.yaml`` (``prev``, ``difficulties``, ``problems``,
``eval_difficulties``, ``band``, ``why``). The flow writes that entry into the run's own ``params.yaml`` *before*
the round runs (``config.add_round``), so the finished run's params list exactly the rounds that ran and why each
exists: ``dvc repro`` of the saved experiment reproduces them and finds nothing to do, and ``dvc exp show`` shows
the reasons.

Policies:

- ``fixed``: the rounds written in ``params.yaml``; the loop only decides to stop early (``loop.max_rounds``,
  the goal ``loop.target.goal``, a plateau of ``loop.target.metric``, a failed health gate).
- ``curriculum``: the next round starts from the *best healthy round* (highest ``loop.target.metric`` among the
  rounds that passed their health gates and did not regress against the round they started from; round 0
  always qualifies), so a regressed or unhealthy round is rolled back: its model never starts another round and
  (``selfimprove.registration``) never gets the ``best`` alias. It samples the *frontier*: the easiest
  ``curriculum.width`` difficulties that the start model has not solved (held-out greedy accuracy below
  ``curriculum.solved``; a difficulty never evaluated counts as unsolved) plus ``curriculum.ahead`` difficulties
  beyond them, and evaluates every difficulty up to ``curriculum.eval_ahead`` past the hardest one sampled. For
  a problem set without a difficulty knob the round samples all difficulties and keeps the problems whose
  label agreement lies in ``curriculum.band`` (a pass-rate band). With model-written problems (``propose``), a round
  whose proposals fell mostly above ``propose.band`` (the model solves what it writes) moves the frontier one
  difficulty past the easiest unsolved one: harder proposals when the band empties from below.

Why: difficulty should grow with solvability (SIT, SEC, ADCL), and a loop must not build on a round that went
wrong (LRM-Self-Train's sudden collapse, SRT's "consistent but wrong").

How: pure functions over metrics dicts and params files; the Prefect layer (``flows/loop.py``) calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collections.abc import Callable

from selfimprove.config import Config, RoundConfig

DEFAULT_MAX_ROUNDS = 10


@dataclass(frozen=True)
class Outcome:
    """What one finished round left: its key, the round it started from, its metrics, its health verdict."""

    key: str
    prev: str | None
    metrics: dict[str, Any]
    healthy: bool = True

    @property
    def index(self) -> int:
        return int(self.key[1:])


@dataclass
class Decision:
    stop: str | None = None  # why the run stops here (None = go on)
    key: str | None = None  # the next round's key
    entry: dict[str, Any] = field(default_factory=dict)  # the next round's params entry (to write; empty: written)
    rolled_back_to: str | None = None  # after a failed health gate: the round the loop goes back to
    action: str = "next"  # next | done | stop | retry (the same round, entry rewritten) | drop (end before it) | raise

    @property
    def why(self) -> str:
        return self.stop or str(self.entry.get("why", ""))


def value(metrics: dict[str, Any], metric: str) -> float | None:
    v = metrics.get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def difficulty_accuracy(metrics: dict[str, Any]) -> dict[int, float]:
    """Held-out greedy accuracy per numeric difficulty (``accuracy/dN`` of the product model)."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("accuracy/d") and k.count("/") == 1 and k[len("accuracy/d"):].isdigit() and v is not None:
            out[int(k[len("accuracy/d"):])] = float(v)
    return dict(sorted(out.items()))


def solved_up_to(metrics: dict[str, Any], solved: float) -> int:
    """The largest difficulty d such that every evaluated difficulty up to d is solved (0 if the easiest is not).

    >>> solved_up_to({"accuracy/d1": 1.0, "accuracy/d2": 0.97, "accuracy/d3": 0.5, "accuracy/d4": 0.99}, 0.95)
    2
    """
    acc = difficulty_accuracy(metrics)
    reached = 0
    for d, a in acc.items():
        if a < solved:
            break
        reached = d
    return reached


def solved_progress(metrics: dict[str, Any], solved: float) -> float:
    """``solved_up_to`` plus the held-out accuracy on the next difficulty: a curriculum's progress that moves
    while the frontier is being learned (5.61 = every length up to 5 solved, 6 digits at 0.61), not only when
    it is solved. It reaches N exactly when ``solved_up_to`` does.

    >>> round(solved_progress({"accuracy/d1": 1.0, "accuracy/d2": 0.61, "accuracy/d3": 0.2}, 0.95), 2)
    1.61
    """
    reached = solved_up_to(metrics, solved)
    return reached + difficulty_accuracy(metrics).get(reached + 1, 0.0)


def regressed(outcome: Outcome, by_key: dict[str, Outcome], metric: str, tolerance: float = 0.0) -> bool:
    """Did the round end more than ``tolerance`` below the round it started from on ``metric``?"""
    if outcome.prev is None or outcome.prev not in by_key:
        return False
    now, before = value(outcome.metrics, metric), value(by_key[outcome.prev].metrics, metric)
    return now is not None and before is not None and now < before - tolerance


def best_round(history: Sequence[Outcome], metric: str, tolerance: float = 0.0) -> tuple[Outcome, str]:
    """The round the next one starts from: the best round that passed its health gates and did not regress by
    more than ``tolerance``; values within ``tolerance`` of the best count as ties, and ties go to the later
    round, which has seen more data. And a phrase saying why."""
    by_key = {o.key: o for o in history}
    eligible = [o for o in history if o.key == "r0" or (o.healthy and not regressed(o, by_key, metric, tolerance))]

    def score(o: Outcome) -> float:
        return -math.inf if value(o.metrics, metric) is None else float(value(o.metrics, metric))

    top = max(score(o) for o in eligible)
    best = max((o for o in eligible if score(o) >= top - tolerance), key=lambda o: o.index)
    skipped = [o.key + (" (failed a health gate)" if not o.healthy else " (regressed)")
               for o in history if o not in eligible]
    v = value(best.metrics, metric)
    why = f"start from {best.key} ({metric} {v:.3f}" if v is not None else f"start from {best.key} ({metric} n/a"
    why += ", the best healthy round" + (f"; rolled back past {', '.join(skipped)}" if skipped else "") + ")"
    return best, why


def _span(ds: Sequence[int]) -> str:
    ds = sorted(ds)
    if len(ds) > 2 and ds == list(range(ds[0], ds[-1] + 1)):
        return f"d{ds[0]}-d{ds[-1]}"
    return ", ".join(f"d{d}" for d in ds)


def stop_reason(config: Config, history: Sequence[Outcome]) -> str | None:
    """Why the run stops after its last round, or None (shared by both policies)."""
    loop = config.loop
    last = history[-1]
    if not last.healthy and loop.on_health_failure == "stop":
        return "a health gate failed"  # the flow words the failure itself (metric, values, round rolled back to)
    goal = loop.target.goal
    if goal is not None:
        reached = [o for o in history if o.healthy and (value(o.metrics, loop.target.metric) or -math.inf) >= goal]
        if reached:
            return f"goal reached: {loop.target.metric} {value(reached[0].metrics, loop.target.metric):.3f} >= {goal:g} in {reached[0].key}"
    plateau = plateau_stop([value(o.metrics, loop.target.metric) for o in history], loop.stop_on_plateau,
                           loop.plateau_tolerance, loop.target.metric)
    if plateau:
        return plateau
    limit = max_rounds(config)
    if limit is not None and last.index >= limit:
        return f"max_rounds: {limit} rounds ran (loop.max_rounds)"
    return None


def plateau_stop(accuracies: Sequence[float | None], patience: int, tolerance: float = 0.0,
                 metric: str = "accuracy") -> str | None:
    """The reason to stop a run after its last round, or None: the last ``patience`` rounds did not improve
    held-out accuracy beyond the best earlier round (round 0 included) by more than ``tolerance``.

    >>> plateau_stop([0.5, 0.7, 0.69, 0.70], 2)
    'plateau: rounds 2-3 did not improve accuracy beyond 0.700 (round 1) + 0'
    >>> plateau_stop([0.5, 0.7, 0.75], 2), plateau_stop([0.5, 0.5], 0)
    (None, None)
    """
    if patience <= 0 or len(accuracies) <= patience:
        return None
    accs = [float("-inf") if a is None else float(a) for a in accuracies]
    before, last = accs[: len(accs) - patience], accs[len(accs) - patience :]
    best = max(before)
    if max(last) > best + tolerance:
        return None
    first = len(before)
    span = f"round {first}" if patience == 1 else f"rounds {first}-{len(accs) - 1}"
    return (f"plateau: {span} did not improve {metric} beyond {best:.3f} (round {before.index(best)}) "
            f"+ {tolerance:g}")


def better_or_tie(now: float, than: float, tolerance: float = 0.0) -> bool:
    """The one comparison behind "best": ``now`` counts as at least ``than`` when it is no more than ``tolerance``
    below it (ties go to the later round, which has seen more data)."""
    return now >= than - tolerance


def promotion(value_now: float | None, start: float | None, best: float | None, metric: str, tolerance: float,
              start_key: str | None = None, best_version: str | None = None) -> tuple[bool, str]:
    """Does a round earn the registry's ``best`` alias? The rule :func:`best_round` applies: it did not regress
    against the round it started from by more than ``tolerance``, and it ties or beats the current best.

    >>> promotion(0.70, 0.71, 0.72, "accuracy", 0.02)[0], promotion(0.70, 0.75, None, "accuracy", 0.02)[0]
    (True, False)
    """
    if value_now is None:
        return False, f"no {metric} metric"
    if start is not None and not better_or_tie(value_now, start, tolerance):
        return False, f"regressed: {metric} {value_now:.3f} < {start:.3f} of {start_key} - {tolerance:g}"
    if best is not None and not better_or_tie(value_now, best, tolerance):
        return False, (f"{metric} {value_now:.3f} < {best:.3f} of the current best (version {best_version})"
                       + (f" - {tolerance:g}" if tolerance else ""))
    return True, f"{metric} {value_now:.3f} is the best so far" + (f" (within {tolerance:g})" if tolerance else "")


def after_failed_validation(config: Config, key: str, failures: str) -> Decision:
    """A round made no dataset that passes validation: ``retry`` it once with ``curriculum.retry_factor`` times the
    problems (curriculum rounds), ``drop`` it (a retried one, or no retries: the run ends before it), or ``raise``
    (round 0 and fixed rounds: the user's list, the gate's report says what to change)."""
    if config.loop.policy != "curriculum" or key == "r0":
        return Decision(action="raise", stop=failures)
    entry = config.rounds[key].model_dump(exclude_none=True)
    factor = config.loop.curriculum.retry_factor
    if factor <= 1 or "retried with" in entry.get("why", ""):
        return Decision(action="drop", stop=failures)
    problems = (entry.get("problems") or config.sample.problems_per_round) * factor
    entry |= {"problems": problems, "why": f"{entry.get('why', '')}; retried with {problems} problems: the first try "
              f"made no dataset that passes validation ({failures})"}
    return Decision(action="retry", key=key, entry=entry)


def next_step(config: Config, history: Sequence[Outcome], offered: Callable[[], Sequence[int] | None]) -> Decision:
    """What follows the last round of ``history``: the next round (already in the params, or a new entry the flow
    writes first), or stop with the reason; after a failed health gate, the round rolled back to.
    ``offered``: the problem set's difficulties, asked only when the curriculum writes a new round."""
    last = history[-1]
    back = None if last.healthy else best_round(history, config.loop.target.metric,
                                                config.loop.curriculum.regress_tolerance)[0].key
    written = ["r0", *config.round_keys()]
    if last.key != written[-1]:  # the next round is in the params already (a fixed list, or a resumed run)
        nxt = written[written.index(last.key) + 1]
        reason = stop_reason(config, history) if config.loop.policy == "fixed" or not last.healthy else None
        step = Decision(key=nxt)
    elif config.loop.policy == "fixed":
        reason = stop_reason(config, history) if not last.healthy else None
        step = Decision()
    else:
        step = decide(config, history, offered())
        reason = step.stop
    if reason:
        return Decision(action="stop", stop=reason, rolled_back_to=back)
    step.rolled_back_to = back
    step.action = "next" if step.key else "done"  # done: every written round ran
    return step


def max_rounds(config: Config) -> int | None:
    if config.loop.max_rounds is not None:
        return config.loop.max_rounds
    return DEFAULT_MAX_ROUNDS if config.loop.policy == "curriculum" else None


def decide(config: Config, history: Sequence[Outcome], difficulties: Sequence[int] | None = None) -> Decision:
    """The curriculum's next step after the last round of ``history`` (r0 first).

    ``difficulties``: the numeric difficulties the problem set offers (None or empty: it has no difficulty
    knob, and the round works on a pass-rate band instead)."""
    reason = stop_reason(config, history)
    if reason:
        return Decision(stop=reason)
    cur = config.loop.curriculum
    start, why_start = best_round(history, config.loop.target.metric, cur.regress_tolerance)
    key = f"r{history[-1].index + 1}"
    entry: dict[str, Any] = {"prev": start.key}
    if difficulties:
        offered = sorted(set(difficulties))
        acc = difficulty_accuracy(start.metrics)
        unsolved = [d for d in offered if acc.get(d, -1.0) < cur.solved]
        if not unsolved:
            return Decision(stop=f"every difficulty of the problem set is solved ({_span(offered)} >= {cur.solved:g})")
        frontier = unsolved[: cur.width]
        easy = proposals_too_easy(config, history[-1].metrics)
        if easy is not None and [d for d in unsolved if d > frontier[0]]:
            # the band emptied from below: the model's own problems at the frontier no longer teach it anything
            frontier = [d for d in unsolved if d > frontier[0]][: cur.width]
        beyond = [d for d in offered if d > frontier[-1]][: cur.ahead]
        chosen = frontier + beyond
        top = max(chosen) + cur.eval_ahead
        base = config.evaluate.difficulties or []
        evals = sorted(set(base) | {d for d in offered if min([*base, *chosen]) <= d <= top})
        per = cur.problems_per_difficulty
        problems = per * len(chosen) if per else config.sample.problems_per_round
        first = frontier[0]
        seen = f"accuracy {acc[first]:.2f} < {cur.solved:g}" if first in acc else "not evaluated yet"
        entry |= {"difficulties": chosen, "problems": problems, "eval_difficulties": evals}
        why = (f"curriculum: {why_start}; frontier {_span(frontier)} ({_span([first])} {seen}), "
               f"sample {_span(chosen)}, evaluate {_span(evals)}")
        if easy is not None:
            why += f"; proposals {easy:.0%} above propose.band: one difficulty harder"
    else:
        band = cur.band or (0.0, 1.0)
        entry |= {"band": list(band), "problems": cur.problems_per_difficulty or config.sample.problems_per_round}
        why = f"curriculum: {why_start}; no difficulty knob: keep problems with label agreement in [{band[0]:g}, {band[1]:g}]"
    entry["why"] = why
    RoundConfig.model_validate(entry)  # never write an entry the loader would refuse
    return Decision(key=key, entry=entry)


#: the share of a round's sampled proposals above ``propose.band`` at which the curriculum proposes harder problems
TOO_EASY_SHARE = 0.5


def proposals_too_easy(config: Config, metrics: dict[str, Any]) -> float | None:
    """The share of the round's sampled proposals above ``propose.band`` when it is at least ``TOO_EASY_SHARE``
    (the model solves its own problems: the curriculum moves past the frontier), else None.

    >>> from selfimprove.config import Config
    >>> c = Config(propose={"enabled": True})
    >>> proposals_too_easy(c, {"proposals/sampled": 10, "proposals/too_easy": 7}), proposals_too_easy(c, {})
    (0.7, None)
    """
    sampled = metrics.get("proposals/sampled") or 0
    if not config.propose.enabled or not sampled:
        return None
    share = (metrics.get("proposals/too_easy") or 0) / sampled
    return share if share >= TOO_EASY_SHARE else None


def outcomes(config: Config, project: str | Path, healthy: dict[str, bool] | None = None) -> list[Outcome]:
    """The rounds of the run's params whose metrics exist, r0 first."""
    import json

    from selfimprove.paths import RoundPaths

    out = []
    for key in ["r0", *config.round_keys()]:
        path = RoundPaths.for_round(config, key, project).metrics
        if not path.exists():
            break
        prev = None if key == "r0" else config.round_config(key).prev
        out.append(Outcome(key, prev, json.loads(path.read_text()), (healthy or {}).get(key, True)))
    return out


def lineage(config: Config, key: str) -> list[str]:
    """The chain of rounds that built ``key``'s model, r0 first (what its health gates look at)."""
    chain = [key]
    while chain[-1] != "r0":
        chain.append(config.round_config(chain[-1]).prev)
    return chain[::-1]
