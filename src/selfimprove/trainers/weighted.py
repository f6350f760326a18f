"""Weighted SFT: TRL's ``SFTTrainer`` with a loss that honours a per-example ``weight`` column.

What: ``WeightedSFTTrainer`` (used by ``train_weighted_sft`` / ``finetune.trainer: weighted_sft``) trains on
prompt/completion rows like the SFT trainer, but each row's loss is scaled by ``TrainRow.weight``, e.g. the
entropy-based weights of EAST (``validate.filters: [{function: entropy_weight, sharpness: ...}]``) or any
other per-example importance.

The loss, and why it is normalised this way:

    loss(batch) = (1 / B) * sum_i  s * w_i * mean_t NLL(completion token t of row i)

- per-sequence, not per-token: a weight is a statement about an *example*, so each row contributes its mean
  completion-token NLL (a long completion does not get more say than a short one; TRL's default ``nll`` loss
  averages over all tokens of the batch instead);
- ``s = 1 / mean(w)`` over the whole training set, fixed before training: the weights are relative, so a set
  whose weights are all 0.2 trains exactly like an unweighted one, and ``lr`` keeps its meaning; but weights
  are *not* renormalised per batch, so a batch of low-weight rows really moves the model less;
- ``1 / B`` (rows in the micro-batch) and the trainer's division by the gradient-accumulation steps make the
  loss a mean over rows. With every weight equal the loss is plain per-sequence-mean SFT.

How: a collator wrapper carries the ``weight`` column into the batch as ``sample_weight`` (the SFT trainer is
created with ``remove_unused_columns=False`` so the column survives); ``compute_loss`` pops it and uses the
fused LM head's per-token log-probs (``model(..., fused_lm_head=True)``, as TRL's own loss does), so the tiny
model's coupled positions are computed by its backbone exactly as in plain SFT.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import SFTTrainer

log = logging.getLogger(__name__)


class _WeightCollator:
    """Wraps TRL's collator and adds the rows' weights as a ``sample_weight`` tensor."""

    def __init__(self, inner: Any, scale: float):
        self.inner = inner
        self.scale = scale

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        batch["sample_weight"] = torch.tensor([float(e.get("weight", 1.0)) * self.scale for e in examples])
        return batch


class WeightedSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the weighted mean of per-sequence completion losses (module docstring)."""

    # compute_loss returns a per-micro-batch mean; the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("WeightedSFTTrainer needs remove_unused_columns=False so the 'weight' column reaches the loss")
        if self.args.packing:
            raise ValueError("WeightedSFTTrainer does not support packing: a packed row mixes examples of different weights")
        ds = self.train_dataset
        weights = [float(w) for w in ds["weight"]] if ds is not None and "weight" in ds.column_names else []
        if any(w < 0 for w in weights):
            raise ValueError("weights must be >= 0")
        mean = sum(weights) / len(weights) if weights else 1.0
        if weights and mean <= 0:
            raise ValueError("every training row has weight 0: nothing to learn from")
        self.weight_scale = 1.0 / mean
        self.data_collator = _WeightCollator(self.data_collator, self.weight_scale)
        log.info("weighted SFT: %d rows, mean weight %.4g (scaled to 1), min %.4g, max %.4g", len(weights), mean,
                 min(weights, default=1.0), max(weights, default=1.0))

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        weights = inputs.pop("sample_weight", None)
        if weights is None:  # e.g. an eval batch built by another collator
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        mask = outputs.label_mask.to(outputs.log_probs.dtype)
        per_seq = -(outputs.log_probs * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = (weights.to(per_seq) * per_seq).mean()
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            valid = outputs.label_mask.sum()
            self._metrics[mode]["entropy"].append((outputs.entropy.sum() / valid).item() if valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append((outputs.is_top1.sum() / valid).item() if valid > 0 else 0.0)
            self._metrics[mode]["mean_weight"].append(weights.mean().item())
        return (loss, outputs) if return_outputs else loss
