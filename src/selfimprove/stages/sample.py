"""``sample``: k completions per problem from the previous round's model.

Writes ``problems.jsonl`` (the round's problems, gold included for later auditing) and ``samples.jsonl``
(completions only) separately, so label-free verifiers are handed no gold by construction.
"""

from __future__ import annotations

import logging
from typing import Any

from selfimprove.config import Config
from selfimprove.ensemble import members
from selfimprove.io import staged_output, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.checkpoint import resolve as resolve_model
from selfimprove.stages.common import StageReport, make_sampler, problem_set, sampling_params, setup_runtime, timer
from selfimprove.stages.parts import Split, Unit, concat_lines, run_split, shard_groups, unit_seed
from selfimprove.stages.parts import finish as parts_finish
from selfimprove.tracker import Tracker
from selfimprove.types import Completion, Problem

log = logging.getLogger(__name__)


def with_views(pset, problems: list[Problem], kinds: list[str]) -> list[Problem]:
    """The problems, each followed by its views; originals list their views in ``meta.views``."""
    out: list[Problem] = []
    for p in problems:
        views = pset.views(p, kinds)
        out.append(p.model_copy(update={"meta": {**p.meta, "views": [v.id for v in views]}}))
        out.extend(views)
    return out


def round_problems(config: Config, paths: RoundPaths) -> tuple[list[Problem], int]:
    """The round's problems (views after each original) and how many are originals; the same in every unit."""
    rc = config.round_config(paths.key)
    pset = problem_set(config)
    n = rc.problems or config.sample.problems_per_round
    proposed: list[Problem] = []
    if config.propose.enabled:  # the model's own problems first (propose.mix of the round), then the problem set's
        from selfimprove.stages.propose import accepted_problems

        take = round(n * config.propose.mix)
        proposed, n = accepted_problems(paths)[:take], n - take
    problems = proposed + (pset.training_pool(n, rc.difficulties, _seed(config, paths), paths.round,
                                              split=config.problems.train_split) if n > 0 else [])
    if not problems:
        raise ValueError(
            f"problem set {config.problems.name!r} gave no problems for round {paths.key} "
            f"(difficulties={rc.difficulties}); check rounds.{paths.key}.difficulties"
        )
    n_original = len(problems)
    if config.sample.views:
        problems = with_views(pset, problems, config.sample.views)
    return problems, n_original


def _seed(config: Config, paths: RoundPaths) -> int:
    return config.seed * 100_003 + config.sample.seed * 101 + paths.round


def problem_shards(problems: list[Problem], n: int) -> list[list[int]]:
    """``sample.shards`` contiguous groups of the round's problems (indices), each problem with its views."""
    return shard_groups([p.id for p in problems], [p.meta.get("view_of") or p.id for p in problems], n)


def sample_units(config: Config, paths: RoundPaths) -> list[Unit]:
    """Member-major, then shard: every member samples every shard."""
    group = members(paths.prev_paths.model)
    for member in group:
        resolve_model(member)  # fail before any work if the model is missing
    names = [m.name if len(group) > 1 else None for m in group]
    shards = config.sample.shards
    return [Unit("sample", member=i, shard=s if shards > 1 else None, member_name=names[i])
            for i in range(len(group)) for s in range(shards)]


def run_sample_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """One member's completions on one shard, with the ensemble's ids, into the unit's ``samples.jsonl``."""
    setup_runtime(config)
    group = members(paths.prev_paths.model)
    i = unit.member or 0
    problems, _ = round_problems(config, paths)
    shard = problems if unit.shard is None else [problems[j] for j in problem_shards(problems, config.sample.shards)[unit.shard]]
    params = sampling_params(config, seed=unit_seed(_seed(config, paths), unit.shard))
    with timer() as t:
        batch: list[Completion] = []
        if shard:
            with make_sampler(config, group[i]) as sampler:
                batch = sampler.sample(shard, params, round=paths.round)
    if len(group) > 1:  # one id space across members; the vote pools them (see selfimprove.ensemble)
        offset = i * params.n_per_problem
        batch = [c.model_copy(update={"sample_idx": c.sample_idx + offset, "id": f"{c.problem_id}#{c.sample_idx + offset}",
                                      "meta": {**c.meta, "member": i}}) for c in batch]
    out = unit.dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "samples.jsonl", batch)
    return {"completions": len(batch), "tokens": sum(c.n_tokens for c in batch),
            "stops": sum(c.finish_reason == "stop" for c in batch), "seconds": t["seconds"]}


def merge_sample(config: Config, paths: RoundPaths, units: list[Unit], parts: list[dict[str, Any]],
                 tracker: Tracker) -> StageReport:
    """The round's problems and every unit's completions, in unit order (the part files' bytes, concatenated)."""
    setup_runtime(config)
    model_dir = paths.prev_paths.model
    with timer() as t:
        problems, n_original = round_problems(config, paths)
    seconds = t["seconds"] + sum(p["seconds"] for p in parts)  # the units' work, side by side or one after another
    n, tokens = sum(p["completions"] for p in parts), sum(p["tokens"] for p in parts)
    metrics = {
        "sample/problems": n_original,
        "sample/view_problems": len(problems) - n_original,
        "sample/completions": n,
        "sample/tokens": tokens,
        "sample/tokens_per_s": tokens / max(seconds, 1e-9),
        "sample/stop_rate": sum(p["stops"] for p in parts) / max(n, 1),
        "sample/seconds": seconds,
    }
    report = StageReport(stage="sample", round=paths.round, seconds=seconds, metrics=metrics,
                         outputs={"samples": str(paths.sample / "samples.jsonl")},
                         details={"sampler": config.sample.sampler, "model": str(model_dir),
                                  "members": len(members(model_dir)), "shards": config.sample.shards})
    with staged_output(paths.sample) as out:
        write_jsonl(out / "problems.jsonl", problems)
        concat_lines([u.dir(paths) / "samples.jsonl" for u in units], out / "samples.jsonl")
        report.write(out)
        write_manifest(out, producer=f"sample@{paths.key}")
    parts_finish(paths, "sample")
    tracker.log_metrics(metrics)
    tracker.log_dataset(paths.sample / "samples.jsonl", name=f"{paths.key}/samples", context="samples")
    log.info("sample@%s: %d problems (+%d views), %d completions (%d units)", paths.key, n_original,
             len(problems) - n_original, n, len(units))
    return report


SAMPLE = Split("sample", sample_units, run_sample_unit, merge_sample)


def run_sample(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """The whole stage in this process (``selfimprove sample``, ``dvc repro``): units one after another."""
    return run_split(SAMPLE, config, paths, tracker)
