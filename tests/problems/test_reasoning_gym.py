"""reasoning-gym task families as a problem set and a verifier, and every problem set graded by the verifier it
declares (``selfimprove check`` refuses one that cannot read its answers)."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from selfimprove.params import load_config  # noqa: E402
from selfimprove.preflight import verifier_mismatches  # noqa: E402
from selfimprove.stages.common import gold_verifier, gold_verifier_name, problem_set  # noqa: E402
from selfimprove.types import Completion, Problem  # noqa: E402

from helpers import ROOT  # noqa: E402

FAMILIES = {
    "chain_sum": ["problems.reasoning_gym.attributes=[num_digits]",
                  "problems.reasoning_gym.config={min_terms: 2, max_terms: 2}"],
    "products": ["problems.reasoning_gym.attributes=[num_digits]",
                 "problems.reasoning_gym.config={min_terms: 2, max_terms: 2}"],
    "basic_arithmetic": ["problems.reasoning_gym.attributes=[num_terms]",
                         "problems.reasoning_gym.config={min_digits: 1, max_digits: 1}"],
}


def config(task: str, extra: list[str] | None = None):
    return load_config(ROOT / "params.yaml", ["problems.name=reasoning_gym", f"problems.reasoning_gym.task={task}",
                                              *FAMILIES[task], "verify.majority_vote.answer=reasoning_gym",
                                              "model.ensemble=1", "sample.views=[]", *(extra or [])])


def grade(v, p: Problem, text: str) -> bool:
    c = Completion(id=f"{p.id}#0", problem_id=p.id, round=1, sample_idx=0, text=text)
    return v.verify({p.id: p}, [c])[0].passed


@pytest.mark.parametrize("task", list(FAMILIES))
def test_a_family_climbs_its_knob_keeps_eval_apart_and_grades_with_its_scorer(task: str) -> None:
    c = config(task)
    ps = problem_set(c)
    assert verifier_mismatches(c, ps) == []
    assert gold_verifier_name(c, ps) == "reasoning_gym"
    d1, d3 = ps.generator_config(1, 0, 4), ps.generator_config(3, 0, 4)
    knob = {"chain_sum": "max_digits", "products": "max_digits", "basic_arithmetic": "max_terms"}[task]
    assert getattr(d3, knob) > getattr(d1, knob), (d1, d3)
    ev = ps.eval_set(20, [1, 2], seed=1234)
    pool = ps.training_pool(40, [1, 2], seed=0, round=1) + ps.labelled(20, [2], seed=0)
    assert ev and pool and not {p.meta["rg_question"] for p in ev} & {p.meta["rg_question"] for p in pool}
    assert ps.eval_set(20, [1, 2], seed=1234) == ev, "the same seed gives the same problems"
    assert all(p.messages and p.messages[0]["role"] == "system" for p in ev)
    v = gold_verifier(c, ps)
    p = ev[-1]
    assert grade(v, p, p.answer) and grade(v, p, f"The answer is {p.answer}.")
    assert not grade(v, p, str(int(p.answer) + 1)) and not grade(v, p, "I cannot solve this")


def test_check_refuses_a_verifier_that_cannot_read_the_sets_answers() -> None:
    c = config("chain_sum", ["evaluate.verifier=exact_match", "verify.verifier=gsm8k"])
    problems = verifier_mismatches(c, problem_set(c))
    assert any("evaluate.verifier = 'exact_match' cannot grade reasoning_gym" in m for m in problems), problems
    assert any("verify.verifier = 'gsm8k' cannot grade" in m for m in problems), problems
    vote = load_config(ROOT / "params.yaml", ["problems.name=reasoning_gym", "model.ensemble=1", "sample.views=[]"])
    assert any("verify.majority_vote.answer = 'exact_match'" in m for m in verifier_mismatches(vote, problem_set(vote)))


@pytest.mark.parametrize("name, declared", [("arithmetic", "exact_match"), ("reasoning_gym", "reasoning_gym")])
def test_each_set_is_evaluated_with_the_verifier_it_declares(name: str, declared: str) -> None:
    c = load_config(ROOT / "params.yaml", [f"problems.name={name}", "model.ensemble=1", "sample.views=[]"])
    assert gold_verifier_name(c, problem_set(c)) == declared


def test_a_jsonl_set_is_graded_by_its_configured_verifier_and_rows_by_their_own(tmp_path) -> None:
    rows = ['{"id": "a", "prompt": "What is 67 + 89?", "answer": "156"}',
            '{"id": "b", "prompt": "Name the colour.", "answer": "red", "verifier": "exact_match"}']
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    c = load_config(ROOT / "params.yaml", ["problems.name=jsonl", f"problems.jsonl.path={tmp_path / 'p.jsonl'}",
                                           "problems.jsonl.split=test", "problems.jsonl.verifier=gsm8k",
                                           "model.ensemble=1", "sample.views=[]",
                                           "verify.majority_vote.answer=gsm8k"])
    ps = problem_set(c)
    assert gold_verifier_name(c, ps) == "gsm8k" and verifier_mismatches(c, ps) == []
    v = gold_verifier(c, ps)
    a, b = ps.load("test")
    assert grade(v, a, "67 + 89 equals 156") and grade(v, b, "red") and not grade(v, b, "Red!")


def test_the_label_free_vote_reads_numbers_without_seeing_gold() -> None:
    """verify never sees gold answers: the vote still reads 'The final answer ... is 17.' as 17 (the set records
    the kind of answer its task asks for, not the answer)."""
    from selfimprove.verifiers.vote import MajorityVoteVerifier

    c = config("chain_sum")
    p = problem_set(c).eval_set(3, [1], seed=1)[0]
    blind = p.model_copy(update={"answer": None})
    texts = [f"The final answer to the given arithmetic problem is {p.answer}.", p.answer, f"The answer is {p.answer}",
             "To solve this problem, we need to add"]
    comps = [Completion(id=f"{p.id}#{i}", problem_id=p.id, round=1, sample_idx=i, text=t) for i, t in enumerate(texts)]
    verdicts = MajorityVoteVerifier(answer="reasoning_gym").verify({p.id: blind}, comps)
    assert [v.passed for v in verdicts] == [True, True, True, False], [v.reason for v in verdicts]
    assert verdicts[0].agreement == pytest.approx(0.75)


def test_views_ask_the_same_expression_another_way_and_pool_in_the_vote() -> None:
    """``sample.views: [rephrase, swap]``: "What is <expr>?" and b + a / b * a carry the original's answer, its
    system prompt and ``meta.group``, so ``majority_vote`` with ``views: true`` pools them; the gold scorer grades a
    view like its original; a difference has no swap view; a task without an expression is refused by name."""
    from selfimprove.stages.sample import with_views
    from selfimprove.verifiers.vote import MajorityVoteVerifier

    for task in ("chain_sum", "products"):
        c = config(task)
        ps = problem_set(c)
        pool = ps.training_pool(30, [1, 2], seed=0, round=1)
        problems = with_views(ps, pool, ["rephrase", "swap"])
        views = [p for p in problems if p.meta.get("view_of")]
        by_id = {p.id: p for p in problems}
        assert {v.meta["view"] for v in views} == {"rephrase", "swap"}
        v = gold_verifier(c, ps)
        for view in views:
            orig = by_id[view.meta["view_of"]]
            assert view.answer == orig.answer and view.meta["group"] == orig.id and view.id in orig.meta["views"]
            assert view.messages[0] == orig.messages[0] and view.messages[-1]["content"] != orig.messages[-1]["content"]
            assert grade(v, view, orig.answer) and not grade(v, view, str(int(orig.answer) + 1))
            if view.meta["view"] == "rephrase":
                assert view.prompt.startswith("What is ")
        swapped = [p for p in views if p.meta["view"] == "swap"]
        assert all(" - " not in by_id[s.meta["view_of"]].meta["rg_question"] for s in swapped)
    p = next(x for x in pool if x.meta["rg_question"].count(" * ") == 1)
    rephrase, swap = ps.views(p, ["rephrase", "swap"])
    a, b = p.meta["rg_question"].split(" * ")[0].split()[-1], p.meta["rg_question"].split(" * ")[1].split()[0].rstrip(".")
    assert f"{b} * {a}" in swap.prompt and rephrase.prompt == f"What is {a} * {b}?"
    # the vote pools a problem with its views: 1 right of 1 under one wording, 2 of 2 under the other two
    blind = {q.id: q.model_copy(update={"answer": None}) for q in (p, rephrase, swap)}
    wrong = str(int(p.answer) + 1)
    comps = [Completion(id=f"{q}#0", problem_id=q, round=1, sample_idx=0, text=t)
             for q, t in ((p.id, wrong), (rephrase.id, p.answer), (swap.id, p.answer))]
    pooled = MajorityVoteVerifier(answer="reasoning_gym", views=True).verify(blind, comps)
    assert [x.label for x in pooled] == [p.answer] * 3 and pooled[0].agreement == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="offers the views"):
        ps.views(p, ["paraphrase"])
    lc = load_config(ROOT / "params.yaml", ["problems.name=reasoning_gym", "problems.reasoning_gym.task=leg_counting",
                                           "model.ensemble=1", "sample.views=[]"])
    q = problem_set(lc).training_pool(2, [1], seed=0, round=1)[0]
    with pytest.raises(ValueError, match="leg_counting.*states no arithmetic expression"):
        problem_set(lc).views(q, ["rephrase"])
