"""``validate``: build the round's training set with the configured filters, then gate it with GX.

Steps: join problems, completions and verdicts; run the filter pipeline (``validate.filters``); accumulate
accepted self-labels across rounds (``validate.accumulate``); mix in labelled data (``validate.mix_real``);
run the Great Expectations suite. A failed suite raises ``DataQualityError``: the round stops, nothing is
written to the stage's output, and the readable report lands in ``runs/rN/validate.failed.json``.

With ``finetune.trainer: grpo`` the training set is prompts, not completions: the problems whose pass rate lies in
``finetune.grpo.prompt_band`` (run before the configured filters) and that survive the filters, one ``PromptRow``
each; no labelled data is mixed in, and the accumulated self-labels are carried over unchanged.
"""

from __future__ import annotations

import json
import logging
import random

from selfimprove.config import Config
from selfimprove.filters import Candidate, FilterContext, run_filters
from selfimprove.filters.builtin import pass_rates
from selfimprove.health import sample_health
from selfimprove.io import read_verified_jsonl, staged_output, write_json, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.quality import DataQualityError, check_round_data
from selfimprove.stages.common import (
    StageReport,
    eval_problems,
    is_timing,
    normalize_prompt,
    problem_set,
    read_report,
    setup_runtime,
    timer,
)
from selfimprove.tracker import Tracker
from selfimprove.types import Completion, PreferencePair, Problem, PromptRow, Proposal, Trace, TrainRow, Verdict

log = logging.getLogger(__name__)


def _row(c: Candidate, key_round: int) -> TrainRow:
    return TrainRow(
        id=f"r{key_round}/{c.completion.id}",
        prompt=c.problem.prompt,
        completion=c.completion.text,
        problem_id=c.problem.id,
        origin="self",
        round=key_round,
        weight=c.weight,
        difficulty=c.problem.difficulty,
        label=c.verdict.label,
        agreement=c.verdict.agreement,
        messages=c.problem.messages,
    )


def _prompt_rows(kept: list[Candidate], rates: dict[str, float], key_round: int) -> list[PromptRow]:
    """One GRPO prompt per kept problem, in problem order (the training order is shuffled after)."""
    problems = {c.problem.id: c.problem for c in kept}
    return [PromptRow(id=f"r{key_round}/{pid}", prompt=p.prompt, problem_id=pid, round=key_round,
                      pass_rate=round(rates[pid], 6), difficulty=p.difficulty, messages=p.messages)
            for pid, p in sorted(problems.items())]


def _frames(train: list, accepted_now: list, verdicts: list[Verdict], problems: dict[str, Problem],
            accepted_problems: set[str], pairs: bool, prompts: bool = False):
    import pandas as pd

    tdf = pd.DataFrame([r.model_dump() for r in train])
    if tdf.empty:
        from selfimprove.quality import PAIR_COLUMNS, PROMPT_COLUMNS, TRAIN_COLUMNS

        tdf = pd.DataFrame(columns=PROMPT_COLUMNS if prompts else PAIR_COLUMNS if pairs else TRAIN_COLUMNS)
    tdf["prompt_normalized"] = [normalize_prompt(p) for p in tdf["prompt"]] if len(tdf) else []
    return {
        "train": tdf,
        "accepted": pd.DataFrame({"id": [r.id for r in accepted_now]}),
        "samples": pd.DataFrame({"parsed": [1.0 if v.answer is not None else 0.0 for v in verdicts]}),
        "problems": pd.DataFrame({"accepted": [1.0 if pid in accepted_problems else 0.0
                                               for pid, p in problems.items() if not p.meta.get("view_of")]}),
    }


def _proposal_pool(config: Config, paths: RoundPaths, candidates: list[Candidate], problems: dict[str, Problem]
                   ) -> list[Proposal]:
    """This round's accepted proposals that were sampled, each with its pass rate in the round's own samples and
    where that falls against ``propose.band``."""
    from selfimprove.proposals import band_of

    rates = pass_rates(candidates)
    sampled = {p.meta["proposal"]: p.id for p in problems.values() if p.meta.get("proposal")}
    mine = []
    for prop in read_verified_jsonl(paths.propose / "proposals.jsonl", Proposal):
        pid = sampled.get(prop.id)
        if pid is None or pid not in rates:
            continue
        rate = round(rates[pid], 6)
        mine.append(prop.model_copy(update={"pass_rate": rate, "band": band_of(rate, config.propose.band)}))
    return mine


def run_validate(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    setup_runtime(config)
    vc = config.validate_cfg
    problems = {p.id: p for p in read_verified_jsonl(paths.sample / "problems.jsonl", Problem)}
    completions = read_verified_jsonl(paths.sample / "samples.jsonl", Completion)
    verdicts = read_verified_jsonl(paths.verify / "verdicts.jsonl", Verdict)
    vmap = {v.sample_id: v for v in verdicts}
    missing = [c.id for c in completions if c.id not in vmap]
    if missing:
        raise ValueError(f"{paths.verify / 'verdicts.jsonl'}: no verdict for {len(missing)} completion(s), e.g. {missing[:3]}")
    candidates = [Candidate(problems[c.problem_id], c, vmap[c.id]) for c in completions]
    pset = problem_set(config)
    eval_prompts = sorted({normalize_prompt(p.prompt) for p in eval_problems(config, pset, paths.key)})
    ctx = FilterContext(eval_prompts=frozenset(eval_prompts), problem_set=pset)
    with timer() as t:
        steps = [(s.function, s.kwargs) for s in vc.filters]
        band = config.round_config(paths.key).band
        if band is not None:  # the curriculum's pass-rate band (loop.curriculum.band)
            steps.insert(0, ("pass_rate_band", {"min": band[0], "max": band[1]}))
        proposed = config.propose.enabled and any(p.meta.get("proposal") for p in problems.values())
        if proposed:  # model-written problems: train on those the model solves sometimes, not always or never
            steps[:0] = [("pass_rate_band", {"min": config.propose.band[0], "max": config.propose.band[1],
                                             "proposals_only": True}),
                         ("keep_correct", {"proposals_only": True})]  # graded against their computed labels
        grpo = config.finetune.trainer == "grpo"
        if grpo:  # online RL: only groups with some reward variance teach anything
            lo, hi = config.finetune.grpo.prompt_band
            steps.insert(0, ("pass_rate_band", {"min": lo, "max": hi}))
        kept, stats = run_filters(candidates, steps, ctx)
        kept = [c for c in kept if not c.problem.meta.get("view_of")]  # views are checks, never training data
        prompt_rows = _prompt_rows(kept, pass_rates(candidates), paths.round) if grpo else []
        accepted_now = [] if grpo else [_row(c, paths.round) for c in kept]
        accepted_problems = {c.problem.id for c in kept}
        n_trace_rows = 0
        if config.correct.enabled and config.correct.train == "traces" and not grpo:  # SFT on two-attempt traces
            from selfimprove.correction import trace_rows

            traces = read_verified_jsonl(paths.correct / "traces.jsonl", Trace)
            rows = trace_rows(traces, problems, pset, config.correct.keep_ratio, paths.round,
                              config.seed * 7919 + paths.round)
            accepted_now, n_trace_rows = accepted_now + rows, len(rows)
        prev_accepted: list[TrainRow] = []
        if vc.accumulate and paths.prev_paths.key != "r0":
            prev_accepted = read_verified_jsonl(paths.prev_paths.validate / "accepted.jsonl", TrainRow)
        accepted_all = prev_accepted + accepted_now
        real_pool = [r for r in read_verified_jsonl(paths.base.validate / "train.jsonl", TrainRow) if r.origin == "real"]
        rng = random.Random(config.seed * 7919 + paths.round)
        n_real = 0
        if vc.mix_real > 0 and real_pool and accepted_all and not grpo:
            n_real = min(len(real_pool), round(len(accepted_all) * vc.mix_real / (1 - vc.mix_real)))
        real_rows = rng.sample(real_pool, n_real) if n_real else []
        pairs: list[PreferencePair] = []
        dpo = config.finetune.trainer == "dpo"
        if dpo:
            from selfimprove.trainers.dpo import build_pairs

            pairs = build_pairs(candidates, kept, config.finetune.dpo, paths.round)
        train: list = prompt_rows if grpo else pairs if dpo else accepted_all + real_rows
        rng.shuffle(train)
        frames = _frames(train, prompt_rows if grpo else pairs if dpo else accepted_now, verdicts, problems,
                         accepted_problems, dpo, prompts=grpo)
        failed_path = paths.dir / "validate.failed.json"
        try:
            quality = check_round_data(frames, vc.expectations, eval_prompts, name=f"validate@{paths.key}", pairs=dpo,
                                       prompts=grpo, band=config.finetune.grpo.prompt_band if grpo else None)
        except DataQualityError as e:
            write_json(failed_path, json.loads(json.dumps({"error": str(e), "report": e.report}, default=str)))
            tracker.set_tags({"selfimprove.validate_failed": "true"})
            fix = (f"To go on: give the round more problems (rounds.{paths.key}.problems or sample.problems_per_round) "
                   "or relax validate.expectations, and start a new run with those -S settings")
            asked = sum(1 for q in problems.values() if not q.meta.get("view_of"))
            rows_now = len(prompt_rows if grpo else pairs if dpo else accepted_now)
            need = vc.expectations.min_rows
            if 0 < rows_now < need and asked:  # sizing from what this round measured
                enough = -(-need * asked * 5 // (rows_now * 4))  # +25% for the draw's noise
                fix += (f". This round kept {rows_now} rows from {asked} problems; about {enough} problems would give "
                        f"{need}: -S rounds.{paths.key}.problems={enough}")
            if proposed:  # the band says whether more of the same problems could help at all
                from selfimprove.proposals import band_metrics

                b = band_metrics(_proposal_pool(config, paths, candidates, problems))
                easy, hard, sampled = (b.get("proposals/too_easy", 0), b.get("proposals/too_hard", 0),
                                       b.get("proposals/sampled", 0))
                if sampled and max(easy, hard) >= sampled / 2:
                    fix = (f"The model's proposals fell {'above' if easy >= hard else 'below'} propose.band "
                           f"({int(easy)} too easy, {int(hard)} too hard of {int(sampled)}): more of them will not "
                           "fill it. To go on: " + (f"sample harder problems (rounds.{paths.key}.difficulties one "
                           "higher; loop.policy: curriculum moves the frontier itself)" if easy >= hard else
                           f"sample easier problems (rounds.{paths.key}.difficulties one lower)")
                           + " or widen propose.band, and start a new run with those -S settings")
            raise DataQualityError(f"{e}\nFull report: {failed_path}\n{fix}", e.report, path=failed_path) from None
        failed_path.unlink(missing_ok=True)
    n_problems = max(sum(1 for p in problems.values() if not p.meta.get("view_of")), 1)
    metrics = {
        "validate/accepted": len(accepted_now),
        "validate/accepted_problems": len(accepted_problems),
        "validate/acceptance_rate": len(accepted_problems) / n_problems,
        "validate/accepted_total": len(accepted_all),
        "validate/real_rows": len(real_rows),
        "validate/trace_rows": n_trace_rows,
        "validate/train_rows": len(train),
        "validate/seconds": t["seconds"],
    }
    if grpo:
        metrics["validate/prompts"] = len(prompt_rows)
        metrics["validate/mean_pass_rate"] = (sum(r.pass_rate for r in prompt_rows) / len(prompt_rows)
                                              if prompt_rows else 0.0)
    for s in stats:
        metrics[f"validate/removed/{s.function}"] = s.removed
    metrics.update(sample_health(completions, verdicts, problems, accepted_now))
    corrected = read_report(paths.correct)  # the round's flip metrics join its metrics file through here
    if corrected is not None:
        metrics.update({k: v for k, v in corrected.metrics.items() if not is_timing(k)})
    pool = None
    if config.propose.enabled:  # every proposal sampled so far, with its pass rate and band (later rounds' pool)
        from selfimprove.proposals import band_metrics
        from selfimprove.stages.propose import earlier_proposals

        mine = _proposal_pool(config, paths, candidates, problems)
        pool = earlier_proposals(paths) + mine
        metrics.update(band_metrics(mine))
        proposed_report = read_report(paths.propose)  # the round's proposal health joins its metrics file through here
        if proposed_report is not None:
            metrics.update({k: v for k, v in proposed_report.metrics.items() if not is_timing(k)})
    report = StageReport(
        stage="validate", round=paths.round, seconds=t["seconds"], metrics=metrics,
        outputs={"train": str(paths.validate / "train.jsonl")},
        details={
            "filters": [{"function": s.function, "kwargs": s.kwargs, "rows_in": s.rows_in, "rows_out": s.rows_out,
                         "problems_out": s.problems_out} for s in stats],
            "expectations": quality.summary(),
        },
    )
    with staged_output(paths.validate) as out:
        write_jsonl(out / "train.jsonl", train)
        write_jsonl(out / "accepted.jsonl", accepted_all)
        write_json(out / "quality.json", json.loads(json.dumps(quality.to_stable_dict(), default=str)))
        if pool is not None:
            write_jsonl(out / "proposals.jsonl", pool)
        report.write(out)
        write_manifest(out, producer=f"validate@{paths.key}")
    tracker.log_metrics(metrics)
    tracker.log_dataset(paths.validate / "train.jsonl", name=f"{paths.key}/train", context="training")
    tracker.log_dict(json.loads(json.dumps(quality.to_dict(), default=str)), f"validate/{paths.key}/quality.json")
    log.info("validate@%s: accepted %d rows from %d/%d problems; train %d rows; %s", paths.key, len(accepted_now),
             len(accepted_problems), n_problems, len(train), quality.summary())
    return report
