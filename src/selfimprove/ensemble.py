"""Ensembles: several independently seeded models that label together (cross-model self-consistency).

A single model's self-vote is fooled by its own systematic errors: at a new difficulty it is often
confidently and consistently wrong. Models trained from different seeds make *different* errors, so a label
that several of them agree on is far more often right (the prototype studies measured 97-100 % label
precision with 2-of-3 agreement where one model alone was at 11-50 % accuracy). With ``model.ensemble: N``
the bootstrap trains N members, every member samples, the vote spans all members' answers, and every member
is fine-tuned on the shared accepted labels.

On disk a round's model folder is either one Hugging Face model (N = 1) or ``ensemble.json`` plus one
Hugging Face folder per member (``m0``, ``m1``, ...); each member loads with
``AutoModelForCausalLM.from_pretrained``. Member ``m0`` is the one registered in MLflow. The folder layout belongs to ``selfimprove.checkpoint``.
"""

from __future__ import annotations

from selfimprove.checkpoint import ENSEMBLE_FILE, member_names, members, write_ensemble

__all__ = ["ENSEMBLE_FILE", "member_names", "members", "write_ensemble"]
