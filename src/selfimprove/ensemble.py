"""Ensembles: several independently seeded models that label together (cross-model self-consistency).

A single model's self-vote is fooled by its own systematic errors: at a new difficulty it is often
confidently and consistently wrong. Models trained from different seeds make *different* errors, so a label
that several of them agree on is far more often right (the prototype studies measured 97-100 % label
precision with 2-of-3 agreement where one model alone was at 11-50 % accuracy). With ``model.ensemble: N``
the bootstrap trains N members, every member samples, the vote spans all members' answers, and every member
is fine-tuned on the shared accepted labels.

On disk a round's model folder is either one Hugging Face model (N = 1) or ``ensemble.json`` plus one
Hugging Face folder per member (``m0``, ``m1``, ...); each member loads with
``AutoModelForCausalLM.from_pretrained``. Member ``m0`` is the one registered in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

ENSEMBLE_FILE = "ensemble.json"


def members(model_dir: str | Path) -> list[Path]:
    """The member folders of a round's model (the folder itself for a single model)."""
    model_dir = Path(model_dir)
    spec = model_dir / ENSEMBLE_FILE
    if spec.exists():
        return [model_dir / m for m in json.loads(spec.read_text())["members"]]
    return [model_dir]


def member_names(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


def write_ensemble(out_dir: str | Path, names: list[str]) -> None:
    from selfimprove.io import write_json

    write_json(Path(out_dir) / ENSEMBLE_FILE, {"members": names})
