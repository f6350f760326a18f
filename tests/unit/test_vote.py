"""Label-free majority vote: plurality pseudo-label, agreement share, ties abstain, gold never read."""

from __future__ import annotations

from selfimprove.types import Completion, Problem
from selfimprove.verifiers import make_verifier


def comps(pid: str, texts: list[str]) -> list[Completion]:
    return [Completion(id=f"{pid}#{i}", problem_id=pid, round=2, sample_idx=i, text=t, greedy=i == 0) for i, t in enumerate(texts)]


def test_plurality_label_and_agreement() -> None:
    v = make_verifier("majority_vote")
    problems = {"p": Problem(id="p", prompt="1+2=")}
    verdicts = v.verify(problems, comps("p", ["30", "30", "31", " 30 ", ""]))
    assert [x.label for x in verdicts] == ["30"] * 5
    assert [x.passed for x in verdicts] == [True, True, False, True, False]
    assert verdicts[0].agreement == 0.6  # 3 of 5, the unparseable one counts against
    assert verdicts[4].status == "no_answer"
    assert verdicts[2].score == 0.0 and verdicts[0].score == 0.6


def test_tie_abstains() -> None:
    v = make_verifier("majority_vote")
    verdicts = v.verify({"p": Problem(id="p", prompt="x")}, comps("p", ["1", "2", "1", "2"]))
    assert {x.status for x in verdicts} == {"abstain"}
    assert not any(x.passed for x in verdicts)


def test_gold_is_irrelevant() -> None:
    """The vote must give the same verdicts whatever (wrong) gold the problem carries."""
    v = make_verifier("majority_vote")
    texts = ["7", "7", "8"]
    a = v.verify({"p": Problem(id="p", prompt="x", answer="8")}, comps("p", texts))
    b = v.verify({"p": Problem(id="p", prompt="x", answer=None)}, comps("p", texts))
    assert [x.model_dump(exclude={"cost_s"}) for x in a] == [x.model_dump(exclude={"cost_s"}) for x in b]
    assert v.needs_gold is False


def test_views_pool_votes_across_equivalent_prompts() -> None:
    v = make_verifier("majority_vote", views=True)
    problems = {"p": Problem(id="p", prompt="12+34=", meta={"group": "g"}), "q": Problem(id="q", prompt="34+12=", meta={"group": "g"})}
    verdicts = v.verify(problems, comps("p", ["46", "47"]) + comps("q", ["46", "46"]))
    assert {x.label for x in verdicts} == {"46"}
    assert verdicts[0].agreement == 0.75
