"""``scripted`` sampler: a registered fake for tests about orchestration (lm-eval's dummy-LM way).

It never loads the model's weights. Each answer is the problem's gold answer or a wrong one, decided by a hash
of (problem, sample index, seed, round), so the same inputs give the same records, byte for byte. How often it is
right is the model folder's *skill*: ``accuracy`` plus the ``gain`` that ``noop`` fine-tunings recorded in the
folder's ``skill.json`` (capped at 1). A loop on it therefore "improves" by a known amount per round, which lets Prefect,
DVC, Ray, resume and the loop's decisions be tested in seconds; the answers are shaped like the tiny model's
(``" 57"``), so every verifier, filter and GX expectation runs for real on them.

    sample:
      sampler: scripted
      scripted: {accuracy: 0.4}
    finetune:
      trainer: noop
      noop: {gain: 0.2}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Prob, Strict
from selfimprove.samplers.base import Sampler, SamplingParams, completion_id
from selfimprove.types import Completion, Problem

SKILL_FILE = "skill.json"


class ScriptedSamplerConfig(Strict):
    """``sample.scripted``: how often the fake is right."""

    accuracy: Prob = Field(0.3, description="Share of right answers of a model no noop fine-tuning has raised.")
    revise: Prob = Field(0.0, description="Second attempts (correct): share of right first answers the fake breaks, "
                         "plus the revise_gain noop fine-tunings recorded (a wrong first answer is answered afresh).")


def recorded_gain(model_dir: str | Path, key: str = "gain") -> float:
    """The gain noop fine-tunings recorded in a model folder (``skill.json``), else 0."""
    f = Path(model_dir) / SKILL_FILE
    return float(json.loads(f.read_text()).get(key, 0.0)) if f.exists() else 0.0


def _unit(*parts: object) -> float:
    """A number in [0, 1) from its parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def wrong_answer(answer: str | None, salt: float) -> str:
    """A wrong answer shaped like the right one: a number off by 1-9, else a word."""
    text = (answer or "").strip()
    try:
        return str(int(text) + 1 + int(salt * 9))
    except ValueError:
        return f"not {text}" if text else "unknown"


class ScriptedSampler(Sampler):
    name: ClassVar[str] = "scripted"

    def __init__(self, model_dir: str | Path, accuracy: float = 0.3, revise: float = 0.0, chat: Any = None, **_: Any):
        super().__init__(model_dir, accuracy=accuracy)
        self.skill = min(1.0, accuracy + recorded_gain(model_dir))
        self.revise = min(1.0, revise + recorded_gain(model_dir, "revise"))
        self.calls = 0  # batches "generated": tests count work with it

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int,
               progress: bool = True) -> list[Completion]:
        self.calls += 1
        out: list[Completion] = []
        for p in problems:
            for j in range(params.n_per_problem):
                greedy = params.greedy and j == 0
                # greedy answers depend on the problem only (a deterministic decoder); samples also on the seed
                u = _unit(p.id, "greedy") if greedy else _unit(p.id, j, params.seed, round)
                right = u < self.skill
                if p.meta.get("attempt_of") is not None and p.answer is not None:  # a second attempt (correct)
                    was_right = str(p.meta.get("first", "")).strip() == str(p.answer).strip()
                    right = u >= self.revise if was_right else right
                text = " " + (str(p.answer).strip() if right and p.answer is not None
                              else wrong_answer(p.answer, _unit(p.id, j, "wrong", round if not greedy else "")))
                out.append(Completion(
                    id=completion_id(p.id, j), problem_id=p.id, round=round, sample_idx=j, text=text,
                    greedy=greedy, n_tokens=len(text.split()), finish_reason="stop",
                    token_logprobs=[-0.1 if right else -1.0] * max(1, len(text.split())) if params.logprobs else None,
                    sampler=self.name))
        return out
