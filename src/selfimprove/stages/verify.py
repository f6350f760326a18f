"""``verify``: the round's verifier judges every completion (gold match, majority vote, tests, judge)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from selfimprove.config import Config
from selfimprove.io import atomic_path, read_verified_jsonl, staged_output, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.stages.common import StageReport, round_verifier, setup_runtime, strip_gold, timer
from selfimprove.stages.parts import Split, Unit, concat_lines, run_split
from selfimprove.stages.parts import finish as parts_finish
from selfimprove.tracker import Tracker
from selfimprove.types import Completion, Problem

log = logging.getLogger(__name__)


def verify_units(config: Config, paths: RoundPaths) -> list[Unit]:
    """One unit per shard of problems (``sample.shards``): a verdict depends only on its problem's completions."""
    n = config.sample.shards
    return [Unit("verify", shard=s if n > 1 else None) for s in range(n)]


def run_verify_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """The verdicts on one shard's completions, into the unit's ``verdicts.jsonl``."""
    from selfimprove.stages.sample import problem_shards

    setup_runtime(config)
    problems = read_verified_jsonl(paths.sample / "problems.jsonl", Problem)
    completions = read_verified_jsonl(paths.sample / "samples.jsonl", Completion)
    if unit.shard is not None:
        problems = [problems[j] for j in problem_shards(problems, config.sample.shards)[unit.shard]]
        ids = {p.id for p in problems}
        completions = [c for c in completions if c.problem_id in ids]
    by_id = {p.id: p for p in problems}
    verifier = round_verifier(config, model_dir=paths.prev_paths.model)
    visible = by_id if verifier.needs_gold else strip_gold(by_id)
    # a model-written problem labelled by construction (propose: computed from its expression, or its own tests) is
    # graded against that label by the set's grader, whatever the round's verifier: the label is the proposal's,
    # not hidden gold; the rest goes to the round's verifier
    constructed = set() if verifier.needs_gold else {pid for pid, p in by_id.items()
                                                     if p.meta.get("label_source") == "execution"}
    with timer() as t:
        try:
            rest = [c for c in completions if c.problem_id not in constructed]
            verdicts = verifier.verify(visible, rest) if rest else []
            if constructed:
                from selfimprove.stages.common import gold_verifier, problem_set

                grader = gold_verifier(config, problem_set(config))
                try:
                    own = [c for c in completions if c.problem_id in constructed]
                    graded = {v.sample_id: v for v in grader.verify(by_id, own)}
                finally:
                    grader.close()
                routed = iter(verdicts)
                verdicts = [graded[c.id] if c.problem_id in constructed else next(routed) for c in completions]
        finally:
            verifier.close()
    if len(verdicts) != len(completions):
        raise RuntimeError(f"verifier {verifier.name!r} returned {len(verdicts)} verdicts for {len(completions)} completions")
    out = unit.dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    # cost_s is a timing: the same completions must give the same bytes (it stays in the verifier's metrics)
    write_jsonl(out / "verdicts.jsonl", (v.model_dump(mode="json", exclude={"cost_s"}) for v in verdicts))
    agreements = [v.agreement for v in verdicts if v.agreement is not None]
    return {"seconds": t["seconds"], "cost_seconds": sum(v.cost_s for v in verdicts), "verifier": verifier.name,
            "label_free": not verifier.needs_gold, "verdicts": len(verdicts), "passed": sum(v.passed for v in verdicts),
            "parsed": sum(v.answer is not None for v in verdicts), "status": dict(Counter(v.status for v in verdicts)),
            "agreement_sum": sum(agreements), "agreements": len(agreements)}


_ID = re.compile(rb'"(?:id|sample_id)":"((?:[^"\\]|\\.)*)"')


def _line_ids(path: Path) -> list[bytes]:
    """The first ``id``/``sample_id`` of every line, without parsing the records (a round has tens of thousands)."""
    with open(path, "rb") as f:
        return [m.group(1) for m in map(_ID.search, f) if m is not None]


def merge_verify(config: Config, paths: RoundPaths, units: list[Unit], parts: list[dict[str, Any]],
                 tracker: Tracker) -> StageReport:
    """Every shard's verdicts, in the order of the completions in ``samples.jsonl``."""
    files = [u.dir(paths) / "verdicts.jsonl" for u in units]
    order = _line_ids(paths.sample / "samples.jsonl")
    n_verdicts = sum(p["verdicts"] for p in parts)
    if n_verdicts != len(order):
        raise RuntimeError(f"verify@{paths.key}: {n_verdicts} verdicts for {len(order)} completions")
    seconds = sum(p["seconds"] for p in parts)
    n = max(n_verdicts, 1)
    status: Counter[str] = Counter()
    for p in parts:
        status.update(p["status"])
    agreements = sum(p["agreements"] for p in parts)
    metrics = {
        "verify/pass_rate": sum(p["passed"] for p in parts) / n,
        "verify/parse_rate": sum(p["parsed"] for p in parts) / n,
        "verify/seconds": seconds,
        "verify/cost_seconds": sum(p["cost_seconds"] for p in parts),  # MLflow only: timings never enter DVC outputs
    }
    if agreements:
        metrics["verify/mean_agreement"] = sum(p["agreement_sum"] for p in parts) / agreements
    name = parts[0]["verifier"] if parts else config.verify.verifier
    report = StageReport(stage="verify", round=paths.round, seconds=seconds, metrics=metrics,
                         outputs={"verdicts": str(paths.verify / "verdicts.jsonl")},
                         details={"verifier": name, "status": dict(status),
                                  "label_free": bool(parts[0]["label_free"]) if parts else False})
    with staged_output(paths.verify) as out:
        if len(files) == 1:
            concat_lines(files, out / "verdicts.jsonl")
        else:  # shards hold interleaved slices of samples.jsonl (member-major): put them back in its order
            lines: dict[bytes, bytes] = {}
            for f in files:
                with open(f, "rb") as fh:
                    for line in fh:
                        m = _ID.search(line)
                        lines[m.group(1) if m else b""] = line
            missing = [i for i in order if i not in lines]
            if missing:
                raise RuntimeError(f"verify@{paths.key}: no verdict for {len(missing)} completions "
                                   f"(first: {missing[0].decode()})")
            with atomic_path(out / "verdicts.jsonl") as tmp, open(tmp, "wb") as fh:
                fh.writelines(lines[i] for i in order)
        report.write(out)
        write_manifest(out, producer=f"verify@{paths.key}")
    parts_finish(paths, "verify")
    tracker.log_metrics(metrics)
    log.info("verify@%s: %s, %s", paths.key, name, dict(status))
    return report


VERIFY = Split("verify", verify_units, run_verify_unit, merge_verify)


def run_verify(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """The whole stage in this process (``selfimprove verify``, ``dvc repro``): shards one after another."""
    return run_split(VERIFY, config, paths, tracker)
