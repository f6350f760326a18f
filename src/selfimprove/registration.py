"""Model registry step (after ``evaluate@rN``): one version per distinct round model, ``best`` on the best one.

A step of its own rather than a side effect of ``evaluate``: evaluation is a DVC stage whose outputs are data;
the registry is MLflow state, owned by the round flow. A model is identified by the DVC hash of its folder
(``selfimprove.model_md5``), so a retried round, a resumed run, or another experiment that restored the same round
from DVC's run cache gets the existing version instead of a new one.

Promotion (``loop.promote``): ``best`` moves the alias by the policy layer's one definition of best
(``selfimprove.curriculum.promotion``): on ``loop.target.metric``, a round that did not fall more than
``loop.curriculum.regress_tolerance`` below the round it started from and ties or beats the current ``best`` within
it, the rule by which the curriculum picks the round the next one starts from. ``last`` always moves it. A round
that failed a health gate (``loop.health``) is never promoted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from selfimprove.config import Config
from selfimprove.curriculum import promotion, value
from selfimprove.paths import RoundPaths

log = logging.getLogger(__name__)


def description(experiment: str, paths: RoundPaths, metrics: dict[str, Any], config: Config) -> str:
    accs = ", ".join(f"{k.split('/')[1].removeprefix('d')}-digit {v:.2f}" if k.split("/")[1].startswith("d")
                     else f"{k.split('/')[1]} {v:.2f}"
                     for k, v in sorted(metrics.items()) if k.startswith("accuracy/") and k.count("/") == 1)
    parts = [f"Round {paths.round} ({paths.key}) of experiment '{experiment}' (loop '{config.loop.name}').",
             f"Held-out greedy accuracy {metrics.get('accuracy', float('nan')):.3f}" + (f" ({accs})." if accs else ".")]
    if paths.key == "r0":
        parts.append("Bootstrap model (round 0).")
    else:
        parts.append(f"Trained by {config.finetune.trainer} from round {paths.prev}'s model "
                     f"on {int(metrics.get('validate/train_rows', 0))} rows "
                     f"({int(metrics.get('validate/accepted', 0))} new self-labels"
                     + (f", precision against hidden gold {metrics['acceptance_precision']:.3f}"
                        if "acceptance_precision" in metrics else "") + ").")
    parts.append(f"Reproduce: dvc exp apply {experiment} && dvc repro")
    return " ".join(parts)


def register_round(store: Any, config: Config, paths: RoundPaths, run_id: str, experiment: str,
                   model_md5: str | None, veto: str | None = None) -> dict[str, Any]:
    """Register the round's model (once per distinct model) and move ``best`` if the round earned it.

    ``veto``: why the round may not be promoted whatever its metrics (a failed health gate)."""
    metrics = json.loads(paths.metrics.read_text()) if paths.metrics.exists() else {}
    key = config.loop.target.metric
    version = store.register(run_id, paths.model, model_md5, description(experiment, paths, metrics, config),
                             {"selfimprove.round": str(paths.round), "selfimprove.experiment": experiment,
                              "selfimprove.loop": config.loop.name})
    if version is None:
        return {"model_version": None, "promoted": False, "reason": "not registered (external model or log_model off)"}
    now = value(metrics, key)
    prev_value = None
    if paths.prev is not None:
        prev = paths.prev_paths.metrics
        prev_value = value(json.loads(prev.read_text()), key) if prev.exists() else None
    current = store.alias_version("best")
    best_value = store.version_metric(current, key) if current is not None else None
    if veto is not None:
        promote, reason = False, veto
    elif config.loop.promote == "last":
        promote, reason = True, "loop.promote is 'last'"
    else:
        promote, reason = promotion(now, prev_value, best_value, key, config.loop.curriculum.regress_tolerance,
                                    paths.prev, current.version if current is not None else None)
    moved = promote and (current is None or current.version != version)
    if moved:
        store.set_alias(version, "best")
    store.set_tags(run_id, {"selfimprove.model_version": version, "selfimprove.promoted": str(promote).lower(),
                            "selfimprove.promotion": reason})
    if moved:
        said = f", alias 'best' moved here ({reason})"
    elif promote:  # the same model already holds it (a restored or re-evaluated round): nothing was announced anew
        said = f", already 'best' (the same model; {reason})"
    else:
        said = f" (not promoted: {reason})"
    log.info("registry: %s version %s%s", config.tracking.registered_model, version, said)
    return {"model_version": version, "promoted": promote, "reason": reason}


def model_dir_md5(paths: RoundPaths) -> str | None:
    """The DVC hash of the round's model folder, from dvc.lock (None if not recorded yet)."""
    from selfimprove import dvcstate

    stage = "bootstrap" if paths.key == "r0" else f"finetune@{paths.key}"
    rel = Path(paths.model).resolve().relative_to(Path(paths.project).resolve()).as_posix()
    return dvcstate.out_hash(paths.project, stage, rel)
