"""Options every trainer reads (``finetune.train``, ``bootstrap.train``): steps, batch, optimiser, LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfimprove.options import NonNegInt, PosInt, Strict


class LoraConfig(Strict):
    enabled: bool = False
    r: PosInt = 16
    alpha: PosInt = 32
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge: bool = Field(True, description="Merge the adapter into the weights after training (else save adapter-only).")


class TrainConfig(Strict):
    steps: PosInt = Field(130, description="Optimizer steps.")
    max_epochs: float | None = Field(
        None, gt=0, description="Cap the steps at this many passes over the round's rows (None = always `steps`): a "
        "round that kept few rows trains on them fewer times instead of memorising them (SFT and DPO).")
    batch_size: PosInt = 64
    grad_accum: PosInt = 1
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    warmup_steps: NonNegInt = 50
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_length: PosInt = 64
    seed: NonNegInt = 0
    logging_steps: PosInt = 25
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on small GPUs).")
    lora: LoraConfig = LoraConfig()


def capped_steps(cfg: TrainConfig, rows: int) -> int:
    """``cfg.steps``, or fewer when ``max_epochs`` passes over ``rows`` take fewer (at least one step).

    >>> capped_steps(TrainConfig(steps=24, batch_size=16, max_epochs=4), 25), capped_steps(TrainConfig(steps=24), 25)
    (7, 24)
    """
    import math

    if cfg.max_epochs is None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, min(cfg.steps, math.ceil(cfg.max_epochs * rows / per_step)))
