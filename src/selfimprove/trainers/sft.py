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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfimprove.checkpoint import adapter_base, load_merged  # noqa: F401 (model-folder loading)
from selfimprove.trainers.options import TrainConfig, capped_steps
from selfimprove.tracker import Tracker
from selfimprove.types import TrainRow

log = logging.getLogger(__name__)


def quiet_hf() -> None:
    """Silence dataset-map progress bars and info chatter (they drown the round's own progress)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    # TRL's configs still set the renamed TrainingArguments field; the warning is not actionable for users.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def use_cuda(device: str) -> bool:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("finetune.train.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return device != "cpu" and torch.cuda.is_available()


def common_args(cfg: TrainConfig, out_dir: Path, progress: bool, rows: int | None = None) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO trainers; ``rows``: the training set's size, for
    ``max_epochs``."""
    import torch

    cuda = use_cuda(cfg.device)
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    return dict(
        output_dir=str(out_dir / "_trainer"),
        max_steps=cfg.steps if rows is None else capped_steps(cfg, rows),
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
        gradient_checkpointing=cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=not progress or bool(os.environ.get("TQDM_DISABLE")),  # Ray workers set it
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


def quiet_progress(trainer: Any) -> None:
    """Keep the trainer's progress bar but stop it printing every log dict (our tracker records them)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            return

    had_bar = any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if had_bar:
        trainer.add_callback(_Bar())


def load_for_training(init_model: str | Path, cfg: TrainConfig) -> tuple[Any, Any]:
    """The init model and tokenizer. An adapter-only init (a LoRA round saved with ``lora.merge: false``) is loaded
    as a trainable PEFT model when LoRA is on, so the same adapter keeps training on the same base (one adapter,
    one base: every loader and vLLM can use it); with LoRA off it is merged first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class
    from selfimprove.checkpoint import resolve as resolve_model

    path = resolve_model(init_model)
    dtype = torch.bfloat16 if use_cuda(cfg.device) and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(path)
    if adapter_base(path) is not None and cfg.lora.enabled:
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(adapter_base(path), dtype=dtype), path, is_trainable=True
        )
    elif adapter_base(path) is not None:
        model, _ = load_merged(path, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return model, tok


def peft_config(cfg: TrainConfig, model: Any = None) -> Any:
    """The LoRA config for a trainer, or None (LoRA off, or ``model`` already carries a trainable adapter)."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig as PeftLora
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return None

    return PeftLora(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def save_model(trainer: Any, tok: Any, out_dir: Path, cfg: TrainConfig) -> None:
    """Save a plain HF folder; LoRA adapters are merged unless ``lora.merge`` is false.

    Adapter-only (``merge: false``): the folder holds the PEFT adapter (``adapter_config.json``, whose
    ``base_model_name_or_path`` names the plain base model, and ``adapter_model.safetensors``) plus the tokenizer.
    ``AutoModelForCausalLM.from_pretrained`` loads such a folder as base + adapter, the next round keeps training
    the same adapter (``load_for_training``), and the vllm sampler serves a merged copy.
    """
    import shutil

    acc = getattr(trainer, "accelerator", None)
    if acc is not None and acc.num_processes > 1 and not cfg.lora.enabled:
        # several processes (finetune.launch: DDP, FSDP, DeepSpeed): the trainer gathers the full weights and the
        # main process writes one ordinary Hugging Face folder; the others write nothing
        trainer.save_model(str(out_dir))
        if acc.is_main_process:
            (out_dir / "training_args.bin").unlink(missing_ok=True)
            shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
        acc.wait_for_everyone()
        return
    if acc is not None and acc.num_processes > 1:  # LoRA under DDP: every process holds the same weights
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return
        _save_single(trainer, tok, out_dir, cfg)
        acc.wait_for_everyone()
        return
    _save_single(trainer, tok, out_dir, cfg)


def _save_single(trainer: Any, tok: Any, out_dir: Path, cfg: TrainConfig) -> None:
    import shutil

    model = trainer.model
    if cfg.lora.enabled and hasattr(model, "merge_and_unload"):
        # DPO adds a frozen "ref" copy of a pretrained adapter; only the trained one is the round's model.
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        if cfg.lora.merge:
            model = model.merge_and_unload()
        else:
            pc = model.peft_config["default"]
            base = pc.base_model_name_or_path
            if not base:
                raise ValueError("lora.merge=false needs a base model loaded from a folder or hub id (an in-memory model "
                                 "has no path the adapter could name); use lora.merge=true here")
            if Path(base).exists():
                pc.base_model_name_or_path = str(Path(base).resolve())  # loadable from any working directory
            model.save_pretrained(out_dir, selected_adapters=["default"])
            tok.save_pretrained(out_dir)
            log.info("saved LoRA adapter only (base: %s)", adapter_base(out_dir))
            shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
            return
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
    chat: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``init_model`` (or the given in-memory model) on ``rows``; save to ``out_dir``; return a report.

    ``chat``: rows go to TRL in its conversational prompt/completion format (the prompt as messages, the completion
    as one assistant message), so TRL renders the tokenizer's chat template and masks the loss to the completion
    (the assistant's content and its end-of-turn token)."""
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
    from selfimprove.chat import conversational

    records = [(conversational(r.prompt, r.messages, r.completion) if chat
                else {"prompt": r.prompt, "completion": r.completion}) | ({"weight": r.weight} if weighted else {})
               for r in rows]
    ds = Dataset.from_list(records)
    args = SFTConfig(**common_args(cfg, out_dir, progress, rows=len(rows)), completion_only_loss=True,
                     dataset_num_proc=None, remove_unused_columns=not weighted)
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
        peft_config=peft_config(cfg, model),
        callbacks=[tcb.callback, *callbacks],
    )
    quiet_progress(trainer)
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
        "learning_rate": float(trainer.args.learning_rate),  # what the trainer was given (a run's own value)
        "processes": int(trainer.accelerator.num_processes),  # > 1 under finetune.launch (DDP, FSDP, DeepSpeed)
        "examples_per_s": round(trainer.state.global_step * cfg.batch_size * cfg.grad_accum / max(seconds, 1e-9), 1),
    }
    log.info("trained %d steps on %d rows in %.1fs (loss %.4f)", report["steps"], len(rows), seconds, report["final_loss"])
    return report


def train_weighted_sft(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """SFT where each row's ``weight`` scales its loss (e.g. entropy-based weighting, EAST)."""
    return train_sft(*args, weighted=True, **kwargs)
