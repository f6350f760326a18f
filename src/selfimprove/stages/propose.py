"""``propose``: the round's model (or ``propose.model``) writes new problems before ``sample``.

Each of ``propose.per_round`` prompts shows ``propose.shots`` example problems (earlier rounds' accepted proposals
first, then seed problems the problem set hands out for this round) and asks for one new problem; the problem set
parses the answer and labels it by construction (``selfimprove.proposals`` says how, per family). A proposal is
accepted when it is valid, within the length bounds and novel (not a near-duplicate of a seed, of an earlier or an
accepted proposal, or of an evaluation problem); every proposal is written with its checks and, if rejected, why.
A Great Expectations suite checks the accepted set (enough of them, labelled, no evaluation problem) and stops
the round when it fails. ``sample`` then mixes the accepted problems into the round (``propose.mix``), and
``validate`` keeps those whose pass rate in the round's own samples lies in ``propose.band``.

Writes ``runs/rN/propose/proposals.jsonl`` (every proposal), ``problems.jsonl`` (the accepted problems),
``quality.json`` (GX's result) and the stage report; with ``propose.enabled: false`` both files are empty.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfimprove.checkpoint import members
from selfimprove.config import Config
from selfimprove.io import read_verified_jsonl, staged_output, write_json, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.stages.common import (
    StageReport,
    eval_problems,
    make_sampler,
    problem_set,
    sampling_params,
    setup_runtime,
    timer,
)
from selfimprove.tracker import Tracker
from selfimprove.types import Problem, Proposal

log = logging.getLogger(__name__)


def earlier_proposals(paths: RoundPaths) -> list[Proposal]:
    """Every proposal earlier rounds sampled, with its band verdict (the pool ``validate`` keeps); [] after r0."""
    f = paths.prev_paths.validate / "proposals.jsonl"
    return read_verified_jsonl(f, Proposal) if f.exists() else []


def accepted_problems(paths: RoundPaths) -> list[Problem]:
    """The problems this round's propose stage accepted (what ``sample`` mixes in)."""
    f = paths.propose / "problems.jsonl"
    return read_verified_jsonl(f, Problem) if f.exists() else []


def rejections(proposals: list[Proposal]) -> str:
    """The rejections by reason, e.g. 'eval_problem 3, near_seed 20' (reasons in alphabetical order)."""
    counts = Counter(p.rejected_reason for p in proposals if not p.accepted)
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))


def _seed(config: Config, paths: RoundPaths) -> int:
    return config.seed * 100_003 + 7_919 * paths.round + 17


def proposer_model(config: Config, paths: RoundPaths) -> Path:
    """``propose.model``, else the round's start model (the first member of an ensemble), checked before use."""
    from selfimprove.checkpoint import resolve

    if config.propose.model:
        try:
            resolve(config.propose.model)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"propose.model: {e}") from None
        return Path(config.propose.model)
    model = members(paths.prev_paths.model)[0]
    resolve(model)
    return model


def _solved(config: Config, pset: Any, sampler: Any, problems: list[Problem], round: int) -> float:
    """The share of ``problems`` the sampler's model answers right greedily, graded by the set's own grader (the
    previous round's proposals, by the model trained on them: ``proposals/solved_next_round``)."""
    from selfimprove.stages.common import gold_verifier

    params = replace(sampling_params(config, evaluation=True), k=0, greedy=True)
    outs = sampler.sample(problems, params, round=round, progress=False)
    grader = gold_verifier(config, pset)
    try:
        verdicts = grader.verify({p.id: p for p in problems}, outs)
    finally:
        grader.close()
    return sum(v.passed for v in verdicts) / len(problems)


def run_propose(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    from selfimprove.proposals import NoveltyIndex, choose_examples, health, normalize, problem_text
    from selfimprove.quality import check_proposals

    setup_runtime(config)
    pc, rc = config.propose, config.round_config(paths.key)
    proposals: list[Proposal] = []
    quality: dict[str, Any] = {}
    solved_next: float | None = None
    proposer: Path | None = None
    with timer() as t:
        if pc.enabled and pc.per_round:
            proposer = proposer_model(config, paths)  # a missing model fails here, before any work
            pset = problem_set(config)
            rng = random.Random(_seed(config, paths))
            seeds = pset.training_pool(max(pc.per_round, 8), rc.difficulties, _seed(config, paths), paths.round,
                                       split=config.problems.train_split)
            if not seeds:
                raise ValueError(f"propose@{paths.key}: problem set {config.problems.name!r} gave no seed problems "
                                 f"(rounds.{paths.key}.difficulties={rc.difficulties})")
            earlier = earlier_proposals(paths)
            pool = [p.problem for p in earlier if p.band == "in" and p.problem is not None
                    and (not rc.difficulties or p.problem.difficulty in rc.difficulties)]
            evals = eval_problems(config, pset, paths.key) + eval_problems(config, pset)
            index = NoveltyIndex(pc.novelty.threshold, pc.novelty.ngram, pc.novelty.num_perm)
            key = pset.novelty_text  # what near-duplicates are judged on (a template's varying part)
            index.add_all((f"eval:{e.id}", key(e)) for e in evals)
            index.add_all((f"seed:{s.id}", key(s)) for s in seeds)
            index.add_all((f"earlier:{p.id}", key(p.problem)) for p in earlier if p.problem is not None)
            examples, prompts = [], []
            for i in range(pc.per_round):
                ex = choose_examples(pool, seeds, pc.shots, rng)
                examples.append(ex)
                prompts.append(pset.proposal_prompt(ex, i, rng))
            params = sampling_params(config, seed=_seed(config, paths))
            want = pc.max_new_tokens or max([int(p.meta.get("max_new_tokens") or 0) for p in prompts]
                                            + [config.sample.max_new_tokens])
            params = replace(params, k=1, greedy=False, temperature=pc.temperature, max_new_tokens=want,
                             logprobs=False)
            if pc.max_new_tokens:  # the user's bound wins over each prompt's own room
                prompts = [p.model_copy(update={"meta": {**p.meta, "max_new_tokens": pc.max_new_tokens}})
                           for p in prompts]
            # the previous round's sampled proposals, which its training saw: does the model it made solve them?
            last = [p.problem for p in earlier if p.round == paths.prev_paths.round and p.problem is not None]
            with make_sampler(config, proposer) as sampler:
                outs = sampler.sample(prompts, params, round=paths.round)
                solved_next = _solved(config, pset, sampler, last, paths.round) if last else None
            by_prompt = {c.problem_id: c for c in outs}
            parsed = [pset.parse_proposal(by_prompt[p.id].text if p.id in by_prompt else "", ex, paths.round)
                      for p, ex in zip(prompts, examples)]
            pset.check_proposals(parsed, config.verify.options("sandboxed_tests"))
            for i, (prompt, ex, res) in enumerate(zip(prompts, examples, parsed)):
                text = by_prompt[prompt.id].text if prompt.id in by_prompt else ""
                prop = Proposal(id=f"p/r{paths.round}/{i}", round=paths.round, parents=[e.id for e in ex], text=text,
                                problem=res.problem, label=res.problem.answer if res.problem else None,
                                label_source=res.label_source, checks=dict(res.checks), complexity=res.complexity,
                                difficulty=res.problem.difficulty if res.problem else None, length=len(text.strip()))
                reason = res.reason or ("unparsed" if res.problem is None else None)
                if reason is None:
                    body = problem_text(res.problem)
                    prop.checks["length"] = pc.min_chars <= len(body) <= pc.max_chars
                    if not prop.checks["length"]:
                        reason = "too_short" if len(body) < pc.min_chars else "too_long"
                if reason is None:
                    sim, nearest = index.nearest(key(res.problem))
                    prop.novelty, prop.nearest = round(1.0 - sim, 6), nearest
                    prop.checks["novel"] = sim < pc.novelty.threshold
                    if not prop.checks["novel"]:
                        kind = (nearest or "").split(":", 1)[0]
                        reason = {"eval": "near_eval", "seed": "near_seed", "earlier": "near_earlier",
                                  "accepted": "near_this_round"}.get(kind, "near_duplicate")
                if reason is None:
                    index.add(f"accepted:{prop.id}", key(res.problem))  # no two alike within a round
                    prop.accepted = True
                    prop.problem = res.problem.model_copy(update={"meta": {**res.problem.meta, "proposal": prop.id}})
                else:
                    prop.rejected_reason = reason
                proposals.append(prop)
            accepted = [p for p in proposals if p.accepted]
            from selfimprove.verifiers import VERIFIERS

            if any(p.label_source == "vote" for p in accepted) and VERIFIERS.get(config.verify.verifier).needs_gold:
                raise ValueError(f"propose@{paths.key}: {config.problems.name!r} proposals are free text with no "
                                 f"computed label, and verify.verifier {config.verify.verifier!r} needs one; use "
                                 "verify.verifier: majority_vote (the round's vote labels them)")
            import pandas as pd

            frame = pd.DataFrame({"id": [p.id for p in accepted],  # accepted proposals always have a problem
                                  "problem_id": [p.problem.id for p in accepted],
                                  "text_normalized": [normalize(problem_text(p.problem)) for p in accepted],
                                  "label_source": [p.label_source for p in accepted],
                                  "labelled": [bool(p.label) or bool(p.problem.tests) for p in accepted]})
            report = check_proposals(frame, sorted({normalize(problem_text(e)) for e in evals}), pc.min_accepted,
                                     name=f"propose@{paths.key}", raise_on_failure=False)
            quality = report.to_stable_dict()
            if not report.success:
                from selfimprove.quality import DataQualityError

                failed = paths.dir / "propose.failed.json"
                write_json(failed, json.loads(json.dumps({"report": report.to_dict(), "proposals": [
                    p.model_dump(exclude={"problem"}) for p in proposals]}, default=str)))
                raise DataQualityError(
                    f"propose@{paths.key}: the model's proposals failed validation ({len(accepted)} of {len(proposals)} "
                    f"accepted; rejected: {rejections(proposals) or 'none'}).\n{report.summary()}\nFull report: {failed}\nTo go on: ask "
                    f"for more proposals (propose.per_round), lower propose.min_accepted, or set propose.mix below 1 "
                    "so that the problem set fills the round", report.to_dict(), path=failed)
    metrics = health(proposals, pc.novelty.ngram, pc.novelty.num_perm) if pc.enabled else {}
    if pc.enabled and solved_next is not None:
        metrics["proposals/solved_next_round"] = solved_next
    metrics["propose/seconds"] = t["seconds"]
    report_ = StageReport(stage="propose", round=paths.round, seconds=t["seconds"], metrics=metrics,
                          outputs={"proposals": str(paths.propose / "proposals.jsonl"),
                                   "problems": str(paths.propose / "problems.jsonl")},
                          details={"enabled": pc.enabled, "model": str(proposer) if proposer else None,
                                   "expectations": "passed" if quality else "not run"})
    with staged_output(paths.propose) as out:
        write_jsonl(out / "proposals.jsonl", proposals)
        write_jsonl(out / "problems.jsonl", [p.problem for p in proposals if p.accepted and p.problem is not None])
        write_json(out / "quality.json", json.loads(json.dumps(quality, default=str)))
        report_.write(out)
        write_manifest(out, producer=f"propose@{paths.key}")
    (paths.dir / "propose.failed.json").unlink(missing_ok=True)
    if pc.enabled:
        tracker.log_metrics(metrics)
        tracker.log_dataset(paths.propose / "proposals.jsonl", name=f"{paths.key}/proposals", context="proposals")
        log.info("propose@%s: %d of %d proposals accepted (%s)", paths.key, int(metrics.get("propose/accepted", 0)),
                 len(proposals), rejections(proposals) or "none rejected")
    return report_
