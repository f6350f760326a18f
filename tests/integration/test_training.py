"""TRL training on a tiny model built from a config: it really trains, through the coupled positions."""

from __future__ import annotations

from pathlib import Path

import torch

from selfimprove.config import TrainConfig
from selfimprove.models import build_char_tokenizer, build_tiny_model
from selfimprove.trainers.sft import train_sft
from selfimprove.types import TrainRow


def rows(n: int = 64) -> list[TrainRow]:
    out = []
    for i in range(n):
        a, b = i % 10, (i * 7) % 10
        s = str(a + b).zfill(2)[::-1]
        out.append(TrainRow(id=f"{i}", prompt=f"{a}+{b}=", completion=s, problem_id=f"{i}", origin="real", round=0))
    return out


def test_one_sft_step_changes_every_trainable_parameter(tmp_path: Path) -> None:
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, layers=1, hidden=32, heads=2, intermediate=64, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # One step, a large lr and no warmup so every weight moves visibly; a tiny model keeps it fast.
    cfg = TrainConfig(steps=1, lr=1e-2, warmup_steps=0, batch_size=16, max_length=16, scheduler="constant")
    report = train_sft("unused", rows(16), tmp_path / "out", cfg, model=model, tokenizer=tok, progress=False)
    assert report["steps"] == 1
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(before[n], p.detach())]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer.json").exists()
    assert not (tmp_path / "out" / "_trainer").exists()


def test_training_uses_the_coupled_positions_generation_uses(tmp_path: Path) -> None:
    """Regression: TRL's fused LM head calls the backbone directly; positions must be coupled there too."""
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, seed=1)
    cfg = TrainConfig(steps=120, lr=3e-3, warmup_steps=10, batch_size=64, max_length=16, logging_steps=40)
    data = rows(100)
    train_sft("unused", data, tmp_path / "out", cfg, model=model, tokenizer=tok, progress=False)
    model.eval()
    tok.padding_side = "left"
    enc = tok([r.prompt for r in data[:40]], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    acc = sum(t == r.completion for t, r in zip(texts, data[:40])) / 40
    assert acc >= 0.9, f"greedy accuracy on training prompts {acc}: training and generation positions disagree"


def test_max_epochs_caps_the_steps_at_passes_over_the_rows(tmp_path: Path) -> None:
    """``max_epochs``: 10 rows, batch 4, 2 epochs -> 5 optimizer steps, not the 50 asked (a round that kept few
    rows is not trained on them 20 times); without it, every asked step runs."""
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, layers=1, hidden=32, heads=2, intermediate=64, seed=0)
    cfg = TrainConfig(steps=50, lr=1e-3, warmup_steps=0, batch_size=4, max_length=16, max_epochs=2)
    report = train_sft("unused", rows(10), tmp_path / "capped", cfg, model=model, tokenizer=tok, progress=False)
    assert report["steps"] == 5
    cfg = cfg.model_copy(update={"steps": 3, "max_epochs": None})
    assert train_sft("unused", rows(10), tmp_path / "plain", cfg, model=model, tokenizer=tok, progress=False)["steps"] == 3
