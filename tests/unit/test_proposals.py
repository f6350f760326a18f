"""Model-written problems: validity by family, novelty, the band and the health metrics (selfimprove.proposals)."""

from __future__ import annotations

import random

import pytest

from selfimprove.problems.arithmetic import ArithmeticProblems
from selfimprove.proposals import (
    NoveltyIndex,
    band_metrics,
    band_of,
    evaluate_expression,
    health,
    self_similarity,
)
from selfimprove.types import Problem, Proposal


def test_expressions_are_computed_from_their_syntax_and_nothing_else_runs() -> None:
    assert evaluate_expression("12 + 7 * 3 - -2") == 35
    assert evaluate_expression("4 - 1 - 7") == -4
    for bad in ("__import__('os').system('true')", "2 ** 100", "7 / 2", "x + 1", "1 + 2" * 20):
        with pytest.raises(ValueError):
            evaluate_expression(bad)


def test_novelty_index_finds_exact_and_near_duplicates_not_distinct_ones() -> None:
    idx = NoveltyIndex(threshold=0.7)
    idx.add("seed:a", "State the final answer to the following arithmetic problem: 43 + 14 =")
    idx.add("eval:b", "Write a function to find the shared elements from the given two lists.")
    assert idx.nearest("state the final answer to the following  arithmetic problem: 43 + 14 =") == (1.0, "seed:a")
    sim, key = idx.nearest("Write a function to find the shared elements of the given two lists.")
    assert key == "eval:b" and sim >= 0.7
    sim, key = idx.nearest("How many legs do 3 spiders and 2 ducks have?")
    assert sim < 0.3


def test_tiny_arithmetic_proposals_are_labelled_by_computing_never_by_the_model() -> None:
    ps = ArithmeticProblems()
    parent = ps.make_problem(123, 456, 3, "train")
    rng = random.Random(0)
    prompt = ps.proposal_prompt([parent], 0, rng)
    assert prompt.prompt == "321+" and prompt.meta["max_new_tokens"] == 3
    b = next(b for b in range(789, 1000) if not ps.is_eval_pair(123, b))
    ok = ps.parse_proposal(str(b)[::-1], [parent], round=1)  # the model writes b reversed
    assert ok.reason is None and ok.label_source == "execution"
    assert ok.problem.meta["a"] == 123 and ok.problem.meta["b"] == b
    assert ok.problem.answer == ps.format_answer(123 + b, 3)
    assert ps.parse_proposal("9x", [parent], 1).reason == "malformed"
    assert ps.parse_proposal("980", [parent], 1).reason == "wrong_difficulty"  # b = 089: two digits
    b = next(b for b in range(100, 1000) if ps.is_eval_pair(123, b))
    assert ps.parse_proposal(str(b)[::-1], [parent], 1).reason == "eval_problem"
    ref = ps.reference_proposal([parent], random.Random(1))
    assert ps.parse_proposal(ref, [parent], 1).reason is None


def test_reasoning_gym_proposals_keep_the_family_and_compute_the_label() -> None:
    pytest.importorskip("reasoning_gym")
    from selfimprove.problems.reasoning_gym import ReasoningGymProblems

    ps = ReasoningGymProblems(task="chain_sum", attributes=["num_digits"], config={"min_terms": 2, "max_terms": 2},
                              system_prompt="Answer with only the number.")
    examples = ps.training_pool(3, [2], 0, 1)
    assert ps.parse_proposal("State the final answer to the following arithmetic problem: 57 - 19 =", examples,
                             round=1).reason == "eval_problem"  # its question hashes into the evaluation split
    res = ps.parse_proposal("Sure! State the final answer to the following arithmetic problem: 53 - 19 =", examples, 1)
    assert res.reason is None and res.problem.answer == "34"
    assert res.problem.messages[0] == {"role": "system", "content": "Answer with only the number."}
    assert res.problem.meta["label_source"] == "execution"
    assert ps.parse_proposal("What is 6 * 7?", examples, 1).reason == "wrong_family"
    assert ps.parse_proposal("Tell me a joke", examples, 1).reason == "no_expression"
    from selfimprove.verifiers.reasoning_gym import ReasoningGymVerifier
    from selfimprove.types import Completion

    v = ReasoningGymVerifier()
    c = Completion(id="x#0", problem_id=res.problem.id, round=1, sample_idx=0, text=res.problem.answer)
    assert v.verify({res.problem.id: res.problem}, [c])[0].passed


def test_band_and_health_metrics() -> None:
    assert [band_of(r, (0.2, 0.8)) for r in (0.0, 0.2, 0.5, 0.8, 1.0)] == ["too_hard", "in", "in", "in", "too_easy"]
    probs = [Problem(id=f"q{i}", prompt=f"{i}{i}+{i * 7}=") for i in range(4)]
    props = [Proposal(id=f"p{i}", round=1, text=p.prompt, problem=p, accepted=i < 3, label="1",
                      label_source="execution", length=len(p.prompt), complexity=4.0, difficulty=2,
                      rejected_reason=None if i < 3 else "near_seed", pass_rate=[0.0, 0.5, 1.0, 0.5][i],
                      band=band_of([0.0, 0.5, 1.0, 0.5][i], (0.2, 0.8)))
             for i, p in enumerate(probs)]
    h = health(props)
    assert h["propose/proposed"] == 4 and h["propose/accepted"] == 3 and h["propose/rejected/near_seed"] == 1
    assert h["propose/mean_complexity"] == 4.0 and 0 <= h["propose/self_similarity"] <= 1
    b = band_metrics(props)
    assert b["proposals/in_band"] == 2 and b["proposals/too_easy"] == 1 and b["proposals/too_hard"] == 1
    assert sum(v for k, v in b.items() if "/pass_rate_hist/" in k) == 4
    assert self_similarity(["a b c d", "a b c d"]) == 1.0
