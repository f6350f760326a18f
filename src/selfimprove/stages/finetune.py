"""``finetune``: train on the round's validated set, starting from the previous round (or round 0)."""

from __future__ import annotations

import logging

from selfimprove.config import Config
from selfimprove.ensemble import members, write_ensemble
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
    inits = members(init)
    for m in inits:
        resolve_model(m)
    row_type = PreferencePair if fc.trainer == "dpo" else TrainRow
    rows = read_verified_jsonl(paths.validate / "train.jsonl", row_type)
    train = TRAINERS.get(fc.trainer)
    with timer() as t, staged_output(paths.model) as out:
        kwargs = {"dpo": fc.dpo} if fc.trainer == "dpo" else {}
        results = []
        for i, m in enumerate(inits):
            target = out / m.name if len(inits) > 1 else out
            cfg = fc.train.model_copy(update={"seed": fc.train.seed + i})
            prefix = "finetune" if len(inits) == 1 else f"finetune/{m.name}"
            results.append(train(m, rows, target, cfg, tracker, prefix=prefix, **kwargs))
        if len(inits) > 1:
            write_ensemble(out, [m.name for m in inits])
        result = {
            "rows": results[0]["rows"],
            "steps": results[0]["steps"],
            "train_loss": sum(r["train_loss"] for r in results) / len(results),
            "final_loss": sum(r["final_loss"] for r in results) / len(results),
            "seconds": sum(r["seconds"] for r in results),
        }
        metrics = {
            "finetune/rows": result["rows"],
            "finetune/steps": result["steps"],
            "finetune/train_loss": result["train_loss"],
            "finetune/final_loss": result["final_loss"],
            "finetune/seconds": result["seconds"],
        }
        report = StageReport(stage="finetune", round=paths.round, seconds=result["seconds"], metrics=metrics,
                             outputs={"model": str(paths.model)},
                             details={"init": str(init), "trainer": fc.trainer, "init_policy": fc.init,
                                      "members": results})
        report.write(out)
        write_manifest(out, producer=f"finetune@{paths.key}")
    tracker.log_metrics(metrics, step=paths.round)
    log.info("finetune@%s: %s from %s, %d steps at lr %g in %.1fs", paths.key, fc.trainer, init, result["steps"],
             results[0].get("learning_rate", fc.train.lr), result["seconds"])
    return report
