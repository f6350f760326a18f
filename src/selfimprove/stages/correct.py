"""``correct``: a second attempt after feedback for the round's first attempts; the two-attempt traces are a dataset.

After ``verify``: each first attempt (``correct.per_problem`` completions per problem and model of the round's
``sample``, greedy first) with its verdict ``r1`` gets a second attempt from the *same* model (an ensemble member
answers after its own first attempt), prompted by the problem set's ``correction_prompt``: the conversation so far,
then the feedback (``correct.mode``: ``intrinsic``, a fixed instruction that reveals no verdict; ``extrinsic``, the
verifier's verdict, only for wrong first attempts: a right one ends the episode as in verl's GSM8K interaction).
The second attempt is graded like the first: by the round's gold verifier, or in a label-free round by agreement
with the first attempts' pseudo-label (the vote's answer reader), so no gold reaches a label-free round here either.

Writes ``runs/rN/correct/traces.jsonl`` (``Trace``: x, y1, r1, feedback, y2, r2, edit distance), checked by Great
Expectations (``quality.check_traces``), logged to MLflow as a dataset, with the flip metrics
(``selfimprove.correction.flip_metrics``) in its report; ``validate`` trains on the traces when ``correct.train`` is
``traces``. With ``correct.enabled: false`` it writes an empty set, so the DVC pipeline keeps one shape.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from selfimprove.config import Config
from selfimprove.ensemble import members
from selfimprove.io import read_verified_jsonl, staged_output, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.stages.common import (
    StageReport,
    make_sampler,
    problem_set,
    round_verifier,
    sampling_params,
    setup_runtime,
    timer,
)
from selfimprove.tracker import Tracker
from selfimprove.types import Completion, Problem, Trace, Verdict

log = logging.getLogger(__name__)


def second_grader(config: Config, model_dir: Any = None) -> tuple[Any, bool]:
    """The grader of second attempts and whether it is label-free: the round's verifier when it reads gold, else
    (``majority_vote``) its answer verifier, which grades against the first attempts' pseudo-label."""
    from selfimprove.verifiers import VERIFIERS

    if VERIFIERS.get(config.verify.verifier).needs_gold:
        return round_verifier(config, model_dir), False
    name = config.verify.majority_vote.answer
    return VERIFIERS.get(name)(**config.verify.options(name)), True


def second_attempts(pset: Any, firsts: list[tuple[Problem, Completion, Verdict]], mode: str, instruction: str | None,
                    sampler: Any, params: Any, round: int, grader: Any, label_free: bool, member: int | None
                    ) -> list[Trace]:
    """One member's traces: the second-attempt prompts, sampled with ``params``, graded like the first attempts."""
    from selfimprove.correction import edit_distance

    asked: list[Problem] = []
    feedback: dict[str, str] = {}
    for p, c, v in firsts:
        if mode == "extrinsic" and v.passed:
            continue  # a right first attempt ends the episode
        fb = pset.feedback(mode, v, instruction)
        feedback[c.id] = fb
        asked.append(pset.correction_prompt(p, c.text, fb, id=f"{c.id}/2"))
    seconds = sampler.sample(asked, params, round=round) if asked else []
    by_first: dict[str, list[Completion]] = {}
    for s in seconds:
        by_first.setdefault(s.problem_id.removesuffix("/2"), []).append(s)
    # graded against the problem (gold) or, label-free, against the first attempt's pseudo-label
    graded_problems: dict[str, Problem] = {}
    to_grade: list[Completion] = []
    for p, c, v in firsts:
        if label_free and v.label is None:
            continue  # no pseudo-label (a tie): the second attempt cannot pass either
        for j, s in enumerate(by_first.get(c.id, [])):
            key = f"{c.id}/2#{j}"
            graded_problems[key] = (p.model_copy(update={"id": key, "answer": v.label, "solution": None})
                                    if label_free else p.model_copy(update={"id": key}))
            to_grade.append(s.model_copy(update={"id": key, "problem_id": key}))
    verdicts = {v.sample_id: v for v in grader.verify(graded_problems, to_grade)} if to_grade else {}
    traces = []
    for p, c, v in firsts:
        if c.id not in feedback:
            traces.append(Trace(id=f"{c.id}/2#0", problem_id=p.id, round=round, member=member, mode=mode, x=p.prompt,
                                y1=c.text, r1=True, feedback="", y2=c.text, r2=True, attempted=False, label=v.label,
                                answer1=v.answer, answer2=v.answer, edit=0.0, difficulty=p.difficulty))
            continue
        for j, s in enumerate(by_first.get(c.id, [])):
            key = f"{c.id}/2#{j}"
            v2 = verdicts.get(key)
            r2 = v2 is not None and bool(v2.passed)
            traces.append(Trace(id=key, problem_id=p.id, round=round, member=member, mode=mode, x=p.prompt, y1=c.text,
                                r1=bool(v.passed), feedback=feedback[c.id], y2=s.text, r2=r2, label=v.label,
                                answer1=v.answer, answer2=v2.answer if v2 else None, edit=round_(edit_distance(c.text, s.text)),
                                difficulty=p.difficulty))
    return traces


def round_(x: float) -> float:
    return round(x, 6)


def correction_params(config: Config, seed: int) -> Any:
    """How second attempts are sampled: greedy at temperature 0, else ``correct.samples`` draws (no log-probs)."""
    cc = config.correct
    base = sampling_params(config, seed=seed)
    if cc.temperature == 0:
        return replace(base, k=0, greedy=True, logprobs=False)
    return replace(base, k=cc.samples, greedy=False, temperature=cc.temperature, logprobs=False)


def run_correct(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """Second attempts of the round's first attempts, by each member that wrote them; traces checked by GX."""
    from selfimprove.correction import first_attempts, flip_metrics
    from selfimprove.quality import check_traces

    setup_runtime(config)
    cc = config.correct
    traces: list[Trace] = []
    with timer() as t:
        if cc.enabled:
            problems = {p.id: p for p in read_verified_jsonl(paths.sample / "problems.jsonl", Problem)}
            completions = read_verified_jsonl(paths.sample / "samples.jsonl", Completion)
            verdicts = {v.sample_id: v for v in read_verified_jsonl(paths.verify / "verdicts.jsonl", Verdict)}
            firsts = first_attempts(completions, problems, cc.per_problem)
            pset = problem_set(config)
            group = members(paths.prev_paths.model)
            grader, label_free = second_grader(config, paths.prev_paths.model)
            seed = config.seed * 100_003 + config.sample.seed * 101 + paths.round + 7
            try:
                for i, model_dir in enumerate(group):
                    mine = [(problems[c.problem_id], c, verdicts[c.id]) for c in firsts
                            if (c.meta.get("member") or 0) == i]
                    if not mine:
                        continue
                    with make_sampler(config, model_dir) as sampler:
                        traces += second_attempts(pset, mine, cc.mode, cc.instruction, sampler,
                                                  correction_params(config, seed), paths.round, grader, label_free,
                                                  i if len(group) > 1 else None)
            finally:
                grader.close()
            check_traces(traces, cc.min_traces, name=f"correct@{paths.key}")
    metrics = flip_metrics(traces) | {"correct/seconds": t["seconds"]} if traces else {}
    report = StageReport(stage="correct", round=paths.round, seconds=t["seconds"], metrics=metrics,
                         outputs={"traces": str(paths.correct / "traces.jsonl")},
                         details={"enabled": cc.enabled, "mode": cc.mode, "train": cc.train})
    with staged_output(paths.correct) as out:
        write_jsonl(out / "traces.jsonl", traces)
        report.write(out)
        write_manifest(out, producer=f"correct@{paths.key}")
    if traces:
        tracker.log_metrics(metrics)
        tracker.log_dataset(paths.correct / "traces.jsonl", name=f"{paths.key}/traces", context="traces")
        log.info("correct@%s (%s): %d traces, acc@1 %.3f -> acc@2 %.3f (wrong->right %.3f, right->wrong %.3f)",
                 paths.key, cc.mode, len(traces), metrics["correct/acc1"], metrics["correct/acc2"],
                 metrics["correct/wrong_to_right"], metrics["correct/right_to_wrong"])
    return report


def heldout_flips(config: Config, sampler: Any, problems: list[Problem], verifier: Any, round: int,
                  keep: list[Trace] | None = None,
                  graded: tuple[list[Completion], list[Verdict]] | None = None) -> dict[str, float]:
    """Held-out acc@1 and acc@2 of a model in the run's ``correct.mode`` (``evaluate``, with ``correct.eval``): a
    greedy first attempt (``graded``: the evaluation's own completions and verdicts, whose greedy ones are used; else
    sampled here),
    graded by the gold verifier, whose verdict is also the extrinsic feedback; a greedy second attempt.
    ``correct_eval/*`` (overall and per difficulty ``correct_eval/acc2/dN``)."""
    from selfimprove.correction import flip_metrics
    from selfimprove.metrics import sample_and_grade

    pset = problem_set(config)
    params = replace(sampling_params(config, evaluation=True), k=0, greedy=True, logprobs=False)
    completions, verdicts = graded or sample_and_grade(sampler, problems, verifier, params, round)
    by_id = {p.id: p for p in problems}
    firsts = [(by_id[c.problem_id], c, v) for c, v in zip(completions, verdicts) if c.greedy]
    traces = second_attempts(pset, firsts, config.correct.mode, config.correct.instruction, sampler, params, round,
                             verifier, False, None)
    if keep is not None:
        keep.extend(traces)
    out = flip_metrics(traces, prefix="correct_eval/")
    for d in sorted({t.difficulty for t in traces if t.difficulty is not None}):
        mine = [t for t in traces if t.difficulty == d]
        out[f"correct_eval/acc2/d{d}"] = sum(t.r2 for t in mine) / len(mine)
        out[f"correct_eval/delta/d{d}"] = (sum(t.r2 for t in mine) - sum(t.r1 for t in mine)) / len(mine)
    return out
