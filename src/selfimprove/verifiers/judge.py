"""``judge`` verifier: a language model scores each completion (LLM-as-a-judge, Self-Rewarding style).

What: for every completion, the judge model continues ``judge.template`` (filled with the problem's prompt and
the completion) greedily, and the score is parsed from what it wrote. ``passed = score >= threshold``; the
verdict's ``score`` is the judgment mapped from ``[min_score, max_score]`` onto [0, 1]. The judge is the round's
current model (``judge.model_path: null``, Self-Rewarding) or any other model (a path, or a hub id), sampled by
any registered sampler (``judge.sampler``: transformers, vllm, openai; settings from ``sample.<sampler>``).

Why parsing is strict: a judge's text is untrusted output. A judgment is used only when the regex finds exactly
one score value and it lies within ``[min_score, max_score]``; anything else (no number, two different
numbers, out of range, empty) is an ``abstain`` verdict whose reason says why and whose ``details['judgment']``
holds the raw text. Such completions are counted (the verify stage reports statuses; ``JudgeVerifier.stats``),
never guessed: an abstention is neither a pass nor a fail, so filters and the DPO pair builder leave it out.

How the score is read: ``score_regex`` is searched case-insensitively everywhere in the judgment; its named group
``score`` (else group 1, else the whole match) is the number. The default regex accepts ``7``, ``Score: 7``,
``score=7.5`` and ``8/10`` (the ``/10`` belongs to the match, so it is not a second number).
Label-free: the verify stage hands this verifier problems without gold (``needs_gold = False``).
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from selfimprove.options import PosInt, Strict
from selfimprove.samplers.base import Sampler, SamplingParams
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import Verifier

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Problem:\n{prompt}\n\nAnswer:\n{completion}\n\nRate the answer from 1 to 10. Score:"
DEFAULT_REGEX = r"(?:score\s*[:=]?\s*)?(\d+(?:\.\d+)?)\s*(?:/\s*10)?"


@dataclass(frozen=True)
class Judgment:
    """A parsed judgment: ``score`` (raw scale) when usable, else ``None`` and the reason."""

    score: float | None
    reason: str


def parse_judgment(text: str, pattern: re.Pattern[str], min_score: float, max_score: float) -> Judgment:
    """Read one score from a judge's text, or say why not.

    >>> p = re.compile(DEFAULT_REGEX, re.IGNORECASE)
    >>> parse_judgment(" 8/10", p, 1, 10)
    Judgment(score=8.0, reason='score 8 in [1, 10]')
    >>> parse_judgment("Score: 11", p, 1, 10).reason
    'score 11 outside [1, 10]'
    >>> parse_judgment("7, no wait, 4", p, 1, 10).reason
    'ambiguous: 2 different scores (7, 4)'
    """
    if not text.strip():
        return Judgment(None, "empty judgment")
    values: list[float] = []
    raw: list[str] = []
    for m in pattern.finditer(text):
        key: int | str = "score" if "score" in pattern.groupindex else (1 if pattern.groups else 0)
        group = m.group(key)
        if group is None:
            continue
        try:
            value = float(group)
        except ValueError:
            continue
        if m.start(key) > 0 and text[m.start(key) - 1] == "-" and not group.startswith("-"):
            value, group = -value, "-" + group  # "-3" is minus three (out of range), not a 3
        if value not in values:
            values.append(value)
            raw.append(group)
    if not values:
        return Judgment(None, "no score found")
    if len(values) > 1:
        return Judgment(None, f"ambiguous: {len(values)} different scores ({', '.join(raw)})")
    value = values[0]
    shown = f"{value:g}"
    if not min_score <= value <= max_score:
        return Judgment(None, f"score {shown} outside [{min_score:g}, {max_score:g}]")
    return Judgment(value, f"score {shown} in [{min_score:g}, {max_score:g}]")


def _check_template(template: str) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - {"prompt", "completion"}
    if unknown or "completion" not in fields:
        raise ValueError(
            f"judge.template must use {{completion}} (and may use {{prompt}}); it uses {sorted(fields)}. "
            "Write literal braces as {{ and }}."
        )


class JudgeConfig(Strict):
    sampler: str = "transformers"
    model_path: str | None = Field(None, description="Judge model; None = the round's current model.")
    template: str = Field(DEFAULT_TEMPLATE, description="Prompt template with {prompt} and {completion}.")
    score_regex: str = DEFAULT_REGEX
    min_score: float = 1.0
    max_score: float = 10.0
    threshold: float = Field(7.0, description="Scores at or above pass.")
    max_new_tokens: PosInt = 16


class JudgeVerifier(Verifier):
    """Scores completions with a judge model; see the module docstring."""

    name: ClassVar[str] = "judge"
    needs_gold: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True

    def __init__(
        self,
        sampler: str = "transformers",
        model_path: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        score_regex: str = DEFAULT_REGEX,
        min_score: float = 1.0,
        max_score: float = 10.0,
        threshold: float = 7.0,
        max_new_tokens: int = 16,
        *,
        model_dir: str | None = None,
        judge_sampler: Sampler | None = None,
        make_sampler: Callable[[str, str], Sampler] | None = None,
        batch_size: int = 64,
    ):
        _check_template(template)
        if not min_score < max_score:
            raise ValueError(f"judge.min_score ({min_score}) must be below judge.max_score ({max_score})")
        if not min_score <= threshold <= max_score:
            raise ValueError(f"judge.threshold ({threshold}) must be within [{min_score}, {max_score}]")
        try:
            self.pattern = re.compile(score_regex, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"judge.score_regex is not a valid regular expression: {e}") from None
        self.model = model_path or model_dir
        if self.model is None and judge_sampler is None:
            raise ValueError("judge verifier: no judge model (set verify.judge.model_path, or run it inside a round, "
                             "whose current model is the default judge)")
        self.sampler_name = sampler
        self.template = template
        self.min_score, self.max_score, self.threshold = float(min_score), float(max_score), float(threshold)
        self.max_new_tokens = max_new_tokens
        self._make_sampler = make_sampler  # (sampler name, model path) -> Sampler: the round's own factory
        self.batch_size = batch_size
        self._sampler = judge_sampler
        self._owns_sampler = judge_sampler is None
        self.stats: Counter[str] = Counter()
        super().__init__(sampler=sampler, model_path=model_path, template=template, score_regex=score_regex,
                         min_score=min_score, max_score=max_score, threshold=threshold, max_new_tokens=max_new_tokens)

    def _get_sampler(self) -> Sampler:
        if self._sampler is None:
            if self._make_sampler is not None:
                self._sampler = self._make_sampler(self.sampler_name, str(self.model))
            else:
                from selfimprove.samplers import SAMPLERS

                self._sampler = SAMPLERS.get(self.sampler_name)(Path(str(self.model)))
        return self._sampler

    def judge_prompt(self, problem: Problem, completion: Completion) -> str:
        return self.template.format(prompt=problem.prompt, completion=completion.text)

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        if not completions:
            return []
        t0 = time.perf_counter()
        # The judge's own problems: one per completion, no declared answer length, so max_new_tokens applies.
        judge_problems = [
            Problem(id=c.id, prompt=self.judge_prompt(problems[c.problem_id], c), source="judge")
            for c in completions
        ]
        params = SamplingParams(k=0, greedy=True, max_new_tokens=self.max_new_tokens, logprobs=False,
                                batch_size=self.batch_size)
        judgments = self._get_sampler().sample(judge_problems, params, round=completions[0].round, progress=False)
        by_id = {j.problem_id: j for j in judgments}
        cost = (time.perf_counter() - t0) / len(completions)
        out = []
        for c in completions:
            text = by_id[c.id].text
            j = parse_judgment(text, self.pattern, self.min_score, self.max_score)
            if j.score is None:
                status, passed, score = "abstain", False, 0.0
                reason = f"unparseable judgment: {j.reason}"
            else:
                passed = j.score >= self.threshold
                status = "pass" if passed else "fail"
                score = (j.score - self.min_score) / (self.max_score - self.min_score)
                reason = f"judge {j.reason}; {'>=' if passed else '<'} threshold {self.threshold:g}"
            self.stats[status] += 1
            out.append(Verdict(
                sample_id=c.id, problem_id=c.problem_id, round=c.round, verifier=self.name, passed=passed,
                score=min(1.0, max(0.0, score)), status=status, reason=reason, cost_s=cost,
                details={"judgment": text, "judge_score": j.score, "judge_model": str(self.model) if self.model else None},
            ))
        n_abstain = self.stats["abstain"]
        log.info("judge: %d completions, %d pass, %d fail, %d unparseable judgments (abstain)", len(completions),
                 self.stats["pass"], self.stats["fail"], n_abstain)
        return out

    def close(self) -> None:
        if self._sampler is not None and self._owns_sampler:
            self._sampler.close()
        self._sampler = None
