"""Supervised fine-tuning with TRL's ``SFTTrainer`` on prompt/completion rows (loss on the completion only).

Used by rejection-sampling fine-tuning, STaR and ReST-EM rounds and by the tiny model's bootstrap. TRL does
the heavy lifting (tokenisation, completion-only masks, EOS handling, the training loop); this module maps
``TrainConfig`` onto ``SFTConfig`` with the CPU settings TRL needs (fp32, ``use_cpu``, no gradient
checkpointing), streams the loss to the tracker, and saves a plain Hugging Face folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.config import TrainConfig
from selfimprove.tracking import Tracker
from selfimprove.types import TrainRow

log = logging.getLogger(__name__)


def quiet_hf() -> None:
    """Silence dataset-map progress bars and info chatter (they drown the round's own progress)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def use_cuda(device: str) -> bool:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("finetune.train.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return device != "cpu" and torch.cuda.is_available()


def common_args(cfg: TrainConfig, out_dir: Path, progress: bool) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO trainers."""
    import torch

    cuda = use_cuda(cfg.device)
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    return dict(
        output_dir=str(out_dir / "_trainer"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        max_length=cfg.max_length,
    )


class TrackerCallback:
    """Streams the trainer's logged values (loss, lr, grad norm) to the round's run, step = optimizer step."""

    def __init__(self, tracker: Tracker, prefix: str):
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
                if not logs:
                    return
                vals = {f"{outer.prefix}/{k}": v for k, v in logs.items() if isinstance(v, int | float) and k != "epoch"}
                outer.last.update(vals)
                outer.tracker.log_metrics(vals, step=state.global_step)

        self.tracker = tracker
        self.prefix = prefix
        self.last: dict[str, float] = {}
        self.callback = _CB()


def load_for_training(init_model: str | Path, cfg: TrainConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class
    from selfimprove.samplers.hf import resolve_model

    path = resolve_model(init_model)
    dtype = torch.bfloat16 if use_cuda(cfg.device) and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return model, tok


def peft_config(cfg: TrainConfig) -> Any:
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig as PeftLora

    return PeftLora(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def save_model(trainer: Any, tok: Any, out_dir: Path, cfg: TrainConfig) -> None:
    """Save a plain HF folder; LoRA adapters are merged unless ``lora.merge`` is false."""
    import shutil

    model = trainer.model
    if cfg.lora.enabled:
        if cfg.lora.merge:
            model = model.merge_and_unload()
        else:
            model.save_pretrained(out_dir / "adapter")
            base = getattr(model, "peft_config", {})
            log.info("saved LoRA adapter only (%s); base model config kept for loading", list(base))
            model = model.get_base_model()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)


def train_sft(
    init_model: str | Path,
    rows: Sequence[TrainRow],
    out_dir: str | Path,
    cfg: TrainConfig,
    tracker: Tracker | None = None,
    *,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    prefix: str = "finetune",
    model: Any = None,
    tokenizer: Any = None,
    weighted: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``init_model`` (or the given in-memory model) on ``rows``; save to ``out_dir``; return a report."""
    quiet_hf()
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("no training rows: the validate stage accepted nothing this round")
    out_dir = Path(out_dir)
    tracker = tracker or Tracker()
    if model is None:
        model, tokenizer = load_for_training(init_model, cfg)
    tokenizer.padding_side = "right"
    records = [{"prompt": r.prompt, "completion": r.completion} | ({"weight": r.weight} if weighted else {}) for r in rows]
    ds = Dataset.from_list(records)
    args = SFTConfig(**common_args(cfg, out_dir, progress), completion_only_loss=True, dataset_num_proc=None,
                     remove_unused_columns=not weighted)
    tcb = TrackerCallback(tracker, prefix)
    trainer_cls = SFTTrainer
    if weighted:
        from selfimprove.trainers.weighted import WeightedSFTTrainer

        trainer_cls = WeightedSFTTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=[tcb.callback, *callbacks],
    )
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    save_model(trainer, tokenizer, out_dir, cfg)
    report = {
        "rows": len(rows),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "final_loss": float(tcb.last.get(f"{prefix}/loss", result.training_loss)),
        "seconds": round(seconds, 2),
        "examples_per_s": round(trainer.state.global_step * cfg.batch_size * cfg.grad_accum / max(seconds, 1e-9), 1),
    }
    log.info("trained %d steps on %d rows in %.1fs (loss %.4f)", report["steps"], len(rows), seconds, report["final_loss"])
    return report


def train_weighted_sft(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """SFT where each row's ``weight`` scales its loss (e.g. entropy-based weighting, EAST)."""
    return train_sft(*args, weighted=True, **kwargs)
