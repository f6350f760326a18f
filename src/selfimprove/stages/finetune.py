"""``finetune``: train on the round's validated set, starting from the previous round (or round 0)."""

from __future__ import annotations

import logging

from selfimprove.config import Config
from selfimprove.io import read_verified_jsonl, staged_output, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.samplers.hf import resolve_model
from selfimprove.stages.common import StageReport, setup_runtime, timer
from selfimprove.tracking import Tracker
from selfimprove.trainers import TRAINERS
from selfimprove.types import PreferencePair, TrainRow

log = logging.getLogger(__name__)


def run_finetune(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    setup_runtime(config)
    fc = config.finetune
    init = paths.prev_paths.model if fc.init == "continue" else paths.base.model
    resolve_model(init)
    row_type = PreferencePair if fc.trainer == "dpo" else TrainRow
    rows = read_verified_jsonl(paths.validate / "train.jsonl", row_type)
    train = TRAINERS.get(fc.trainer)
    with timer() as t, staged_output(paths.model) as out:
        kwargs = {"dpo": fc.dpo} if fc.trainer == "dpo" else {}
        result = train(init, rows, out, fc.train, tracker, prefix=f"finetune", **kwargs)
        metrics = {
            "finetune/rows": result["rows"],
            "finetune/steps": result["steps"],
            "finetune/train_loss": result["train_loss"],
            "finetune/final_loss": result["final_loss"],
            "finetune/seconds": result["seconds"],
        }
        report = StageReport(stage="finetune", round=paths.round, seconds=result["seconds"], metrics=metrics,
                             outputs={"model": str(paths.model)},
                             details={"init": str(init), "trainer": fc.trainer, "init_policy": fc.init})
        report.write(out)
        write_manifest(out, producer=f"finetune@{paths.key}")
    tracker.log_metrics(metrics, step=paths.round)
    log.info("finetune@%s: %s from %s, %d steps in %.1fs", paths.key, fc.trainer, init, result["steps"], result["seconds"])
    return report
