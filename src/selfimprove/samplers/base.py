"""Sampler protocol: k completions per problem from one model, as ``Completion`` records.

Every backend (transformers, vLLM, any OpenAI-compatible server) returns the same record shape, so
verification, filtering and evaluation never care where samples came from. ``sample_idx`` 0 is the greedy
completion when ``greedy`` is on; sampled completions follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from selfimprove.types import Completion, Problem


@dataclass(frozen=True)
class SamplingParams:
    k: int = 4
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    seed: int = 0
    logprobs: bool = True
    batch_size: int = 512
    stop: tuple[str, ...] = ()

    @property
    def n_per_problem(self) -> int:
        return self.k + (1 if self.greedy else 0)


class Sampler:
    name: ClassVar[str] = "base"

    def __init__(self, model_dir: str | Path, **options: Any):
        self.model_dir = Path(model_dir)
        self.options = options

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int, progress: bool = True) -> list[Completion]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model / server."""

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion_id(problem_id: str, sample_idx: int) -> str:
    return f"{problem_id}#{sample_idx}"
