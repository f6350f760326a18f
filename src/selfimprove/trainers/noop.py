"""``noop`` trainer: a registered fake for tests about orchestration, beside the real trainers.

It writes a valid model folder without training: the init model's files (or, in the bootstrap stage, the freshly
built tiny model) copied as they are, plus ``skill.json``: the init's recorded gain + ``finetune.noop.gain``, which
the ``scripted`` sampler adds to its ``accuracy``. DVC hashes the folder, MLflow registers it and the real ``transformers`` sampler can
still load it, so everything downstream of fine-tuning runs for real; only gradient steps are skipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from selfimprove.io import MANIFEST
from selfimprove.options import Prob, Strict
from selfimprove.samplers.scripted import SKILL_FILE, recorded_gain

log = logging.getLogger(__name__)


class NoopTrainerConfig(Strict):
    """``finetune.noop``: what a fake fine-tuning adds."""

    gain: Prob = Field(0.2, description="Share of answers the scripted sampler gets right after each noop round.")
    revise_gain: Prob = Field(0.0, description="Share of right first answers the scripted sampler's second attempts "
                              "break, added after each noop round (a run that learns to break right answers).")


def train_noop(init_model: str | Path, rows: Sequence[Any], out_dir: str | Path, cfg: Any, tracker: Any = None, *,
               prefix: str = "finetune", model: Any = None, tokenizer: Any = None, gain: float = 0.2,
               revise_gain: float = 0.0, **_: Any) -> dict[str, Any]:
    """Copy the init model (or save the given in-memory one) to ``out_dir``; raise its recorded skill by ``gain``."""
    if not rows:
        raise ValueError("no training rows: the validate stage accepted nothing this round")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        total = revise = 0.0
    else:
        from selfimprove.checkpoint import resolve

        src = Path(resolve(init_model))
        for f in src.iterdir():
            if f.is_file() and f.name not in (MANIFEST, "stage_report.json"):
                shutil.copy2(f, out / f.name)
        total, revise = recorded_gain(src) + gain, recorded_gain(src, "revise") + revise_gain
    skill = {"gain": round(total, 6)} | ({"revise": round(revise, 6)} if revise else {})
    (out / SKILL_FILE).write_text(json.dumps(skill) + "\n")
    if tracker is not None:
        tracker.log_metrics({f"{prefix}/loss": 0.0}, step=0)
    log.info("noop trainer: %s, recorded gain %.2f (%d rows, no steps)", out, total, len(rows))
    return {"rows": len(rows), "steps": 0, "train_loss": 0.0, "final_loss": 0.0,
            "seconds": round(time.perf_counter() - t0, 2), "learning_rate": float(getattr(cfg, "lr", 0.0)), "processes": 1,
            "examples_per_s": 0.0}
