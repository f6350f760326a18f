"""Trainers by name (TRL loads lazily, only when a trainer runs)."""

from selfimprove.registry import Registry

TRAINERS: Registry = Registry("trainer")
TRAINERS.register("sft", "selfimprove.trainers.sft:train_sft")
TRAINERS.register("weighted_sft", "selfimprove.trainers.sft:train_weighted_sft")
TRAINERS.register("dpo", "selfimprove.trainers.dpo:train_dpo")
TRAINERS.register("grpo", "selfimprove.trainers.grpo:train_grpo")
TRAINERS.register("noop", "selfimprove.trainers.noop:train_noop")  # a fake for orchestration tests

__all__ = ["TRAINERS"]
