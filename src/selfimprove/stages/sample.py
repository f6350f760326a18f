"""``sample``: k completions per problem from the previous round's model.

Writes ``problems.jsonl`` (the round's problems, gold included for later auditing) and ``samples.jsonl``
(completions only) separately, so label-free verifiers are handed no gold by construction.
"""

from __future__ import annotations

import logging

from selfimprove.config import Config
from selfimprove.ensemble import members
from selfimprove.io import staged_output, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.samplers.hf import resolve_model
from selfimprove.stages.common import StageReport, make_sampler, problem_set, sampling_params, setup_runtime, timer
from selfimprove.tracking import Tracker
from selfimprove.types import Problem

log = logging.getLogger(__name__)


def with_views(pset, problems: list[Problem], kinds: list[str]) -> list[Problem]:
    """The problems, each followed by its views; originals list their views in ``meta.views``."""
    out: list[Problem] = []
    for p in problems:
        views = pset.views(p, kinds)
        out.append(p.model_copy(update={"meta": {**p.meta, "views": [v.id for v in views]}}))
        out.extend(views)
    return out


def run_sample(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    setup_runtime(config)
    rc = config.round_config(paths.key)
    model_dir = paths.prev_paths.model
    for member in members(model_dir):
        resolve_model(member)  # fail before any work if the model is missing
    pset = problem_set(config)
    n = rc.problems or config.sample.problems_per_round
    seed = config.seed * 100_003 + config.sample.seed * 101 + paths.round
    with timer() as t:
        problems = pset.training_pool(n, rc.difficulties, seed, paths.round, split=config.problems.train_split)
        if not problems:
            raise ValueError(
                f"problem set {config.problems.name!r} gave no problems for round {paths.key} "
                f"(difficulties={rc.difficulties}); check rounds.{paths.key}.difficulties"
            )
        n_original = len(problems)
        if config.sample.views:
            problems = with_views(pset, problems, config.sample.views)
        params = sampling_params(config, seed=seed)
        completions = []
        group = members(model_dir)
        for i, member in enumerate(group):
            with make_sampler(config, member) as sampler:
                batch = sampler.sample(problems, params, round=paths.round)
            if len(group) > 1:  # one id space across members; the vote pools them (see selfimprove.ensemble)
                offset = i * params.n_per_problem
                batch = [c.model_copy(update={"sample_idx": c.sample_idx + offset,
                                              "id": f"{c.problem_id}#{c.sample_idx + offset}",
                                              "meta": {**c.meta, "member": i}}) for c in batch]
            completions.extend(batch)
    tokens = sum(c.n_tokens for c in completions)
    metrics = {
        "sample/problems": n_original,
        "sample/view_problems": len(problems) - n_original,
        "sample/completions": len(completions),
        "sample/tokens": tokens,
        "sample/tokens_per_s": tokens / max(t["seconds"], 1e-9),
        "sample/stop_rate": sum(c.finish_reason == "stop" for c in completions) / max(len(completions), 1),
        "sample/seconds": t["seconds"],
    }
    report = StageReport(stage="sample", round=paths.round, seconds=t["seconds"], metrics=metrics,
                         outputs={"samples": str(paths.sample / "samples.jsonl")},
                         details={"sampler": config.sample.sampler, "model": str(model_dir),
                                  "members": len(members(model_dir))})
    with staged_output(paths.sample) as out:
        write_jsonl(out / "problems.jsonl", problems)
        write_jsonl(out / "samples.jsonl", completions)
        report.write(out)
        write_manifest(out, producer=f"sample@{paths.key}")
    tracker.log_metrics(metrics)
    tracker.log_dataset(paths.sample / "samples.jsonl", name=f"{paths.key}/samples", context="samples")
    log.info("sample@%s: %d problems (+%d views), %d completions in %.1fs", paths.key, n_original,
             len(problems) - n_original, len(completions), t["seconds"])
    return report
