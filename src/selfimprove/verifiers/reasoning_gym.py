"""``reasoning_gym`` verifier: the task's own ``score_answer`` on the answer read from the completion.

What: every reasoning-gym task ships a scorer (``reasoning_gym.get_score_answer_fn(task)``) that takes the
answer string and the generated entry (question, gold answer, metadata) and returns a score in [0, 1]; a
problem of the ``reasoning_gym`` set carries its task and metadata in ``Problem.meta``. A verdict passes when
the score reaches ``min_score`` (1.0: fully right).

How the answer is read (``extract``): with ``extract: auto``, a numeric gold answer is read as the ``gsm8k``
verifier reads numbers from free text (the answer phrase, a concluding sentence such as "67 + 89 equals 156",
or a bare number; never a number inside an expression; hedges fail) and written canonically (``156``, ``-4``),
which is what the numeric tasks' scorers compare; otherwise the text inside the last ``<answer>...</answer>``,
or the completion's last non-empty line. ``number``, ``answer_tag`` and ``text`` force one way.

The same ``extract`` and ``equivalent`` serve ``majority_vote`` (``verify.majority_vote.answer:
reasoning_gym``), so the label-free vote and the gold grade read answers the same way.
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Any, ClassVar, Literal

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import AnswerVerifier

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d+)?(?:/\d+)?\s*$")


class ReasoningGymVerifierConfig(Strict):
    """Options of the ``reasoning_gym`` verifier (``verify.reasoning_gym.*`` in params.yaml)."""

    extract: Literal["auto", "number", "answer_tag", "text"] = Field(
        "auto", description="How the answer is read: auto (numbers as gsm8k reads them for numeric gold, else "
        "<answer> tags or the last line), number, answer_tag, text.")
    min_score: float = Field(1.0, gt=0, le=1, description="The task scorer's score at which a verdict passes.")


@lru_cache(maxsize=None)
def _scorer(task: str) -> Any:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


class ReasoningGymVerifier(AnswerVerifier):
    name: ClassVar[str] = "reasoning_gym"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = ReasoningGymVerifierConfig(**options)
        from selfimprove.verifiers.gsm8k import GSM8KVerifier

        self._numbers = GSM8KVerifier()

    def _mode(self, problem: Problem | None) -> str:
        if self.config.extract != "auto":
            return self.config.extract
        if problem is not None and problem.meta.get("answer_kind"):  # set by the problem set: no gold needed
            return "number" if problem.meta["answer_kind"] == "number" else "answer_tag"
        gold = problem.answer if problem is not None else None
        return "number" if gold is not None and _NUMBER.match(gold) else "answer_tag"

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        mode = self._mode(problem)
        if mode == "number":
            reading = self._numbers.read(text)
            if reading.refusal is not None or reading.value is None:
                return None
            if reading.source == "last_number" and problem is not None and self._echoes(reading.answer, text, problem):
                return None
            return reading.answer
        if mode == "answer_tag":
            tags = _TAG.findall(text)
            if tags:
                return tags[-1].strip() or None
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else None

    @staticmethod
    def _echoes(answer: str | None, text: str, problem: Problem) -> bool:
        """A last number that is one of the question's own numbers, in a completion naming other numbers too and
        marking none ("No, 0 is the only number that adds up to 7." for 7 + 0): not an answer a careful grader
        reads."""
        question = str(problem.meta.get("rg_question", problem.prompt))
        in_question = set(re.findall(r"-?\d+(?:\.\d+)?", question))
        in_text = set(re.findall(r"-?\d+(?:\.\d+)?", text))
        return answer in in_question and len(in_text) > 1

    def equivalent(self, answer: str, reference: str) -> bool:
        if _NUMBER.match(answer) and _NUMBER.match(reference):
            return self._numbers.equivalent(answer, reference)
        return " ".join(answer.split()) == " ".join(reference.split())

    def check(self, problem: Problem, completion: Completion) -> Verdict:
        t0 = time.perf_counter()
        gold = self.require_gold(problem, self.name)
        task = problem.meta.get("rg_task")
        if not task:
            raise ValueError(f"problem {problem.id!r} is not from the reasoning_gym problem set (no meta.rg_task); "
                             "grade it with its own set's verifier")
        answer = self.extract(completion.text, problem)
        if answer is None:
            return self.verdict(completion, None, gold, False, t0)
        entry = {"question": problem.meta.get("rg_question", problem.prompt), "answer": gold,
                 "metadata": problem.meta.get("rg_metadata") or {}}
        try:
            score = float(_scorer(task)(answer, entry))
        except Exception as e:  # noqa: BLE001 - a scorer that cannot read an answer fails it, never the round
            return self.verdict(completion, answer, gold, False, t0, status="fail",
                                reason=f"{task} scorer could not read {answer!r}: {type(e).__name__}")
        passed = score >= self.config.min_score
        v = self.verdict(completion, answer, gold, passed, t0,
                         reason=f"{task} score {score:.2f}" + ("" if passed else f" < {self.config.min_score}"))
        return v.model_copy(update={"score": score})
