"""Verifier protocol: judge completions, return one ``Verdict`` per completion.

Two shapes:
- ``Verifier.verify(problems, completions)``: the batch interface every stage calls. Batch-level verifiers
  (majority vote, sandboxed tests with a worker pool, judges) override it.
- ``AnswerVerifier``: per-completion answer checking against gold. Subclasses implement ``extract`` (final
  answer from free text) and ``equivalent`` (answer vs reference). The same two methods let
  ``majority_vote`` cluster answers label-free, so reward and evaluation share one grader.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from selfimprove.types import Completion, Problem, Verdict


class Verifier:
    name: ClassVar[str] = "base"
    #: True if the verifier needs ``Problem.answer``/``tests`` (gold); False for label-free verifiers.
    needs_gold: ClassVar[bool] = True

    def __init__(self, **options: Any):
        self.options = options

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (worker pools, servers)."""


class AnswerVerifier(Verifier):
    """Compare the final answer extracted from a completion with the gold answer."""

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        raise NotImplementedError

    def equivalent(self, answer: str, reference: str) -> bool:
        raise NotImplementedError

    @staticmethod
    def require_gold(problem: Problem, verifier: str) -> str:
        if problem.answer is None:
            raise ValueError(
                f"problem {problem.id!r} has no gold answer; verifier {verifier!r} needs one "
                "(use a label-free verifier such as 'majority_vote' for unlabelled problems)"
            )
        return problem.answer

    def verdict(self, completion: Completion, answer: str | None, gold: str, passed: bool, t0: float,
                status: str | None = None, reason: str | None = None) -> Verdict:
        """The verdict for one answer compared with gold; status/reason default from ``answer``/``passed``."""
        if status is None:
            status = "no_answer" if answer is None else ("pass" if passed else "fail")
        if reason is None:
            if answer is None:
                reason = "no final answer found in the completion"
            else:
                reason = "answer matches gold" if passed else f"answer {answer!r} != gold {gold!r}"
        return Verdict(
            sample_id=completion.id,
            problem_id=completion.problem_id,
            round=completion.round,
            verifier=self.name,
            passed=passed,
            score=1.0 if passed else 0.0,
            status=status,  # type: ignore[arg-type]
            answer=answer,
            label=gold,
            reason=reason,
            cost_s=time.perf_counter() - t0,
        )

    def check(self, problem: Problem, completion: Completion) -> Verdict:
        t0 = time.perf_counter()
        gold = self.require_gold(problem, self.name)
        answer = self.extract(completion.text, problem)
        passed = answer is not None and self.equivalent(answer, gold)
        return self.verdict(completion, answer, gold, passed, t0)

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        return [self.check(problems[c.problem_id], c) for c in completions]
