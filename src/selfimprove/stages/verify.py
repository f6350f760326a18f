"""``verify``: the round's verifier judges every completion (gold match, majority vote, tests, judge)."""

from __future__ import annotations

import logging
from collections import Counter

from selfimprove.config import Config
from selfimprove.io import read_verified_jsonl, staged_output, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.stages.common import StageReport, round_verifier, setup_runtime, strip_gold, timer
from selfimprove.tracking import Tracker
from selfimprove.types import Completion, Problem

log = logging.getLogger(__name__)


def run_verify(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    setup_runtime(config)
    problems = {p.id: p for p in read_verified_jsonl(paths.sample / "problems.jsonl", Problem)}
    completions = read_verified_jsonl(paths.sample / "samples.jsonl", Completion)
    verifier = round_verifier(config, model_dir=paths.prev_paths.model)
    visible = problems if verifier.needs_gold else strip_gold(problems)
    with timer() as t:
        try:
            verdicts = verifier.verify(visible, completions)
        finally:
            verifier.close()
    if len(verdicts) != len(completions):
        raise RuntimeError(f"verifier {verifier.name!r} returned {len(verdicts)} verdicts for {len(completions)} completions")
    n = max(len(verdicts), 1)
    status = Counter(v.status for v in verdicts)
    agreements = [v.agreement for v in verdicts if v.agreement is not None]
    metrics = {
        "verify/pass_rate": sum(v.passed for v in verdicts) / n,
        "verify/parse_rate": sum(v.answer is not None for v in verdicts) / n,
        "verify/seconds": t["seconds"],
        "verify/cost_seconds": sum(v.cost_s for v in verdicts),  # MLflow only: timings never enter DVC outputs
    }
    if agreements:
        metrics["verify/mean_agreement"] = sum(agreements) / len(agreements)
    report = StageReport(stage="verify", round=paths.round, seconds=t["seconds"], metrics=metrics,
                         outputs={"verdicts": str(paths.verify / "verdicts.jsonl")},
                         details={"verifier": verifier.name, "status": dict(status), "label_free": not verifier.needs_gold})
    with staged_output(paths.verify) as out:
        # cost_s is a timing: the same completions must give the same bytes (it stays in the verifier's metrics)
        write_jsonl(out / "verdicts.jsonl", (v.model_dump(mode="json", exclude={"cost_s"}) for v in verdicts))
        report.write(out)
        write_manifest(out, producer=f"verify@{paths.key}")
    tracker.log_metrics(metrics)
    log.info("verify@%s: %s, %s", paths.key, verifier.name, dict(status))
    return report
