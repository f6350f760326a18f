"""``evaluate``: held-out accuracy per difficulty (greedy, maj@k, pass@k), ``solved_up_to`` (the largest
difficulty up to which every difficulty reaches ``loop.curriculum.solved``), the gap between accuracy on the
round's training-pool problems and on held-out ones, and the precision of the round's accepted self-labels
against the hidden gold, for every round including round 0 (``evaluate@r0``).

It gathers the round's stage reports into ``runs/metrics/rN.json`` (the DVC metrics file) and logs the metrics to
MLflow (the round run and, with ``step=round``, the loop run). Registering the model, moving the ``best`` alias and
the cross-round summary are separate steps (``selfimprove.registration``, the ``summary`` stage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from selfimprove.config import Config
from selfimprove.ensemble import members
from selfimprove.io import read_jsonl, read_verified_jsonl, staged_output, write_json, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.checkpoint import resolve as resolve_model
from selfimprove.samplers.hf import TransformersSampler
from selfimprove.stages.common import (
    StageReport,
    eval_problems,
    gold_verifier,
    make_sampler,
    problem_set,
    is_timing,
    read_report,
    sampling_params,
    setup_runtime,
    timer,
)
from selfimprove.metrics import evaluate_with, label_precision, sample_and_grade, score_eval
from selfimprove.stages.parts import Split, Unit, run_split
from selfimprove.stages.parts import finish as parts_finish
from selfimprove.tracker import Tracker
from selfimprove.types import Problem, TrainRow

log = logging.getLogger(__name__)


def collect_stage_metrics(paths: RoundPaths) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in (paths.sample, paths.verify, paths.validate, paths.model):
        rep = read_report(d)
        if rep is not None:
            out.update({k: v for k, v in rep.metrics.items() if not is_timing(k)})
    return out


def _health(paths: RoundPaths, problems: dict[str, Problem], verifier: Any) -> dict[str, float]:
    """pass@1, pass@k and exploration of the round's samples against gold (``selfimprove.health``)."""
    from selfimprove.health import gold_health
    from selfimprove.types import Completion
    from selfimprove.verifiers.base import AnswerVerifier

    samples_path = paths.sample / "samples.jsonl"
    if not samples_path.exists() or not isinstance(verifier, AnswerVerifier) or not getattr(verifier, "answers", True):
        return {}
    return gold_health(read_verified_jsonl(samples_path, Completion), problems, verifier)


def pool_problems(config: Config, sampled: dict[str, Problem]) -> list[Problem]:
    """The training-pool problems the round sampled (views left out), up to ``evaluate.problems_per_difficulty``
    per difficulty, first in file order: what the model saw, to compare with the held-out problems."""
    cap = config.evaluate.problems_per_difficulty
    by: dict[Any, list[Problem]] = {}
    for p in sampled.values():
        if p.answer is not None and not p.meta.get("view_of"):
            by.setdefault(p.difficulty, []).append(p)
    return [p for ps in by.values() for p in (ps[:cap] if cap else ps)]


def pool_gap(metrics: dict[str, float], pool_metrics: dict[str, float]) -> dict[str, float]:
    """``health/pool_accuracy`` (greedy, on training-pool problems), ``health/heldout_accuracy`` (the held-out
    accuracy on the same difficulties) and ``health/pool_gap`` (their difference: memorising, not learning).

    >>> pool_gap({"accuracy/d4": 0.5, "accuracy/d5": 0.2}, {"accuracy/d4": 0.9})
    {'health/pool_accuracy': 0.9, 'health/heldout_accuracy': 0.5, 'health/pool_gap': 0.4}
    """
    buckets = [k for k in pool_metrics if k.startswith("accuracy/") and k.count("/") == 1 and k in metrics]
    if not buckets:
        return {}
    pool = sum(pool_metrics[k] for k in buckets) / len(buckets)
    held = sum(metrics[k] for k in buckets) / len(buckets)
    return {"health/pool_accuracy": pool, "health/heldout_accuracy": held, "health/pool_gap": pool - held}


def evaluate_model(config: Config, model_dir: Path | None, round: int, sampler: Any = None, key: str | None = None,
                   pool: list[Problem] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Score a round's model on the held-out problems (the round's ``eval_difficulties``, else
    ``evaluate.difficulties``), and greedily on ``pool`` (training-pool problems) for the pool-vs-held-out gap.

    For an ensemble, member ``m0`` is the product (the model the registry holds and a user deploys): the headline
    metrics (greedy accuracy, maj@k, pass@k) are its own. The other members, which only help label, get a greedy
    pass each, kept as ``members/<m>/accuracy/...`` (``m0`` too, for a side-by-side look in MLflow)."""
    if sampler is not None:
        pset = problem_set(config)
        verifier = gold_verifier(config, pset)
        try:
            return evaluate_with(sampler, eval_problems(config, pset, key), verifier,
                                 sampling_params(config, evaluation=True), round)
        finally:
            verifier.close()
    group = members(model_dir)
    done = [evaluate_member(config, group, i, round, key, pool) for i in range(len(group))]
    return combine_members(group, [m for m, _ in done], done[0][1])


def evaluate_member(config: Config, group: list[Path], i: int, round: int, key: str | None,
                    pool: list[Problem] | None) -> tuple[dict[str, float], list[dict]]:
    """Member ``i`` of the round's model: the full evaluation for ``m0`` (or a single model), a greedy pass for
    the others (their predictions are not kept)."""
    from dataclasses import replace

    pset = problem_set(config)
    problems = eval_problems(config, pset, key)
    verifier = gold_verifier(config, pset)
    params = sampling_params(config, evaluation=True)
    greedy_only = replace(params, k=0, greedy=True)
    try:
        with make_sampler(config, group[i]) as s:
            if i:
                return evaluate_with(s, problems, verifier, greedy_only, round)[0], []
            completions, verdicts = sample_and_grade(s, problems, verifier, params, round)
            metrics, predictions = score_eval(problems, completions, verdicts, params.k)
            if config.correct.enabled and config.correct.eval:  # held-out acc@1 -> acc@2 in the run's mode
                from selfimprove.stages.correct import heldout_flips

                # the greedy answers just graded are the first attempts
                metrics.update(heldout_flips(config, s, problems, verifier, round, graded=(completions, verdicts)))
            if pool:
                pm, _ = evaluate_with(s, pool, verifier, greedy_only, round)
                metrics.update(pool_gap(metrics, pm))
            return metrics, predictions
    finally:
        verifier.close()


def combine_members(group: list[Path], per_member: list[dict[str, float]], predictions: list[dict]
                    ) -> tuple[dict[str, float], list[dict]]:
    """m0's metrics and predictions, with every member's accuracies as ``members/<m>/accuracy...``."""
    metrics = dict(per_member[0])
    if len(group) == 1:
        return metrics, predictions
    for m, mm in zip(group, per_member):
        metrics.update({f"members/{m.name}/{k}": v for k, v in mm.items() if k.startswith("accuracy")})
    return metrics, [p | {"member": group[0].name} for p in predictions]


def evaluate_units(config: Config, paths: RoundPaths) -> list[Unit]:
    """One unit per member of the round's model."""
    group = members(paths.model)
    for m in group:
        resolve_model(m)
    return [Unit("evaluate", member=i, member_name=m.name if len(group) > 1 else None) for i, m in enumerate(group)]


def _sampled(paths: RoundPaths) -> dict[str, Problem]:
    return {p.id: p for p in read_verified_jsonl(paths.sample / "problems.jsonl", Problem)}


def run_evaluate_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """One member's evaluation: metrics returned, predictions (m0 only) into the unit's ``predictions.jsonl``."""
    setup_runtime(config)
    i = unit.member or 0
    with timer() as t:
        metrics, predictions = evaluate_member(config, members(paths.model), i, paths.round, paths.key,
                                               pool_problems(config, _sampled(paths)) if i == 0 else None)
    out = unit.dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", predictions)
    return {"metrics": metrics, "seconds": t["seconds"]}


def merge_evaluate(config: Config, paths: RoundPaths, units: list[Unit], parts: list[dict[str, Any]],
                   tracker: Tracker) -> StageReport:
    """The round's metrics (members, label precision, health, the stages' counts) and m0's predictions."""
    setup_runtime(config)
    sampled = _sampled(paths)
    with timer() as t:
        metrics, predictions = combine_members(members(paths.model), [p["metrics"] for p in parts],
                                               read_jsonl(units[0].dir(paths) / "predictions.jsonl"))
    if any(k.startswith("accuracy/d") for k in metrics):
        from selfimprove.curriculum import solved_progress, solved_up_to

        metrics["solved_up_to"] = solved_up_to(metrics, config.loop.curriculum.solved)
        metrics["solved_progress"] = solved_progress(metrics, config.loop.curriculum.solved)
    pset = problem_set(config)
    verifier = gold_verifier(config, pset)
    accepted = [r for r in read_verified_jsonl(paths.validate / "accepted.jsonl", TrainRow) if r.round == paths.round]
    precision, by_bucket = label_precision(accepted, sampled, verifier)
    metrics.update(_health(paths, sampled, verifier))
    verifier.close()
    if precision is not None:
        metrics["acceptance_precision"] = precision
        metrics.update({f"acceptance_precision/{k}": v for k, v in by_bucket.items()})
    metrics.update(collect_stage_metrics(paths))
    metrics["round"] = paths.round
    seconds = t["seconds"] + sum(p["seconds"] for p in parts)
    report = StageReport(stage="evaluate", round=paths.round, seconds=seconds, metrics=metrics,
                         outputs={"metrics": str(paths.metrics), "predictions": str(paths.evaluate / "predictions.jsonl")})
    with staged_output(paths.evaluate) as out:
        write_jsonl(out / "predictions.jsonl", predictions)
        report.write(out)
        write_manifest(out, producer=f"evaluate@{paths.key}")
    write_json(paths.metrics, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(metrics.items())})
    parts_finish(paths, "evaluate")
    tracker.log_metrics(metrics | {"evaluate/seconds": seconds}, step=paths.round, parent=True)
    log.info("evaluate@%s: accuracy %.3f (%s)", paths.key, metrics.get("accuracy", float("nan")),
             ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in metrics.items()
                       if k.startswith("accuracy/") and k.count("/") == 1))
    return report


EVALUATE = Split("evaluate", evaluate_units, run_evaluate_unit, merge_evaluate)


def run_evaluate(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """The whole stage in this process (``selfimprove evaluate``, ``dvc repro``): members one after another."""
    return run_split(EVALUATE, config, paths, tracker)


__all__ = ["TransformersSampler", "collect_stage_metrics", "evaluate_model", "pool_gap", "pool_problems", "run_evaluate"]
