"""What SmolLM2-135M-Instruct really writes for reasoning-gym chain sums (round-1 samples of
``examples/smollm2.params.yaml``, temperature 1.0), graded by hand as a careful grader would
(``smollm2_outputs.jsonl``: ``expect``), against the verifiers.

Grading rules used by hand: the number the completion states as its answer ("The answer is 2.", "6 - 3 = 3",
"The final answer ... would be 15, since 9" -> 15); an equation's right-hand side; a completion that names several
numbers and marks none of them is no answer, even when its last number is right ("No, 0 is the only number that
adds up to 7." for 7 + 0 names 0 as the answer, 7 is the question's own number)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

from selfimprove.types import Completion, Problem  # noqa: E402
from selfimprove.verifiers.gsm8k import GSM8KVerifier  # noqa: E402
from selfimprove.verifiers.reasoning_gym import ReasoningGymVerifier  # noqa: E402

ROWS = [json.loads(line) for line in (Path(__file__).parent / "smollm2_outputs.jsonl").read_text().splitlines()]


def verdict(verifier, row: dict) -> bool:
    p = Problem(id="q", prompt=row["question"], answer=row["answer"],
                meta={"rg_task": "chain_sum", "rg_question": row["question"], "rg_metadata": {}})
    c = Completion(id="q#0", problem_id="q", round=1, sample_idx=0, text=row["text"])
    return verifier.verify({"q": p}, [c])[0].passed


def test_the_table_has_both_verdicts() -> None:
    assert len(ROWS) >= 30 and 5 <= sum(r["expect"] for r in ROWS) < len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r["text"][:40] for r in ROWS])
def test_the_reasoning_gym_verifier_grades_as_a_careful_grader(row: dict) -> None:
    assert verdict(ReasoningGymVerifier(), row) == row["expect"], row


def test_the_gsm8k_verifier_agrees_except_where_it_cannot_see_the_question() -> None:
    """The gsm8k reader never sees the question, so it cannot tell that a lone last number is the question's own;
    the reasoning_gym verifier, which grades these tasks, does."""
    g = GSM8KVerifier()
    disagree = [r["text"] for r in ROWS if verdict(g, r) != r["expect"]]
    assert disagree == ["No, 0 is the only number that adds up to 7."], disagree
