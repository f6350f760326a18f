"""Filters declared as data, table-driven, with adversarial rows."""

from __future__ import annotations

import pytest

from selfimprove.filters import FILTERS, Candidate, FilterContext, run_filters
from selfimprove.types import Completion, Problem, Verdict


def cand(pid: str, idx: int, text: str, *, passed: bool = True, agreement: float | None = 1.0, greedy: bool = False,
         finish: str = "stop", regex: str | None = r"[0-9]{3}[01]", prompt: str | None = None, lp: float = -1.0,
         answer: str | None = "__text__") -> Candidate:
    p = Problem(id=pid, prompt=prompt or f"{pid}=", meta={"answer_regex": regex} if regex else {})
    c = Completion(id=f"{pid}#{idx}", problem_id=pid, round=1, sample_idx=idx, text=text, greedy=greedy,
                   finish_reason=finish, token_logprobs=[lp])
    v = Verdict(sample_id=c.id, problem_id=pid, round=1, verifier="t", passed=passed, score=1.0 if passed else 0.0,
                answer=text.strip() if answer == "__text__" else answer, agreement=agreement)
    return Candidate(p, c, v)


CTX = FilterContext(eval_prompts=frozenset({"eval prob="}))

CASES = [
    # (filter, kwargs, rows, ids kept)
    ("keep_correct", {}, [cand("a", 0, "1230", passed=True), cand("b", 0, "1230", passed=False)], ["a#0"]),
    ("agreement", {"min": 0.8}, [cand("a", 0, "1230", agreement=0.8), cand("b", 0, "1230", agreement=0.6),
                                 cand("c", 0, "1230", agreement=1.0, passed=False)], ["a#0"]),
    ("format", {}, [cand("a", 0, "1230"), cand("b", 0, "12301"), cand("c", 0, "1232"), cand("d", 0, "123"),
                    cand("e", 0, "1230", finish="length"), cand("f", 0, "   "), cand("g", 0, "x", regex=None)],
     ["a#0", "g#0"]),
    ("length", {"min_chars": 2, "max_chars": 4}, [cand("a", 0, "1"), cand("b", 0, "1234"), cand("c", 0, "12345")], ["b#0"]),
    ("dedup", {}, [cand("a", 0, "1230"), cand("a", 1, " 1230 "), cand("a", 2, "1231"), cand("b", 0, "1230")],
     ["a#0", "a#2", "b#0"]),
    ("per_problem_cap", {"max": 1}, [cand("a", 0, "1", lp=-3.0), cand("a", 1, "2", greedy=True, lp=-9.0),
                                      cand("b", 0, "3", lp=-2.0), cand("b", 1, "4", lp=-1.0)], ["a#1", "b#1"]),
    ("decontaminate", {}, [cand("a", 0, "1", prompt="eval  prob="), cand("b", 0, "1", prompt="train=")], ["b#0"]),
    ("min_score", {"min": 0.5}, [cand("a", 0, "1", passed=True), cand("b", 0, "1", passed=False)], ["a#0"]),
    ("agreement", {"min": 0.5, "max": 0.9}, [cand("a", 0, "1230", agreement=0.6), cand("b", 0, "1230", agreement=1.0),
                                             cand("c", 0, "1230", agreement=0.4)], ["a#0"]),
    # a pass-rate band: gold verdicts (no vote share) -> share of the problem's samples that passed
    ("pass_rate_band", {"min": 0.3, "max": 0.8},
     [cand("a", 0, "1", agreement=None), cand("a", 1, "2", agreement=None, passed=False),   # 1/2 -> kept
      cand("b", 0, "1", agreement=None), cand("b", 1, "1", agreement=None),                 # 2/2 -> solved, dropped
      cand("c", 0, "1", agreement=None, passed=False), cand("c", 1, "2", agreement=None, passed=False),  # 0/2
      cand("d", 0, "1", agreement=0.5), cand("d", 1, "2", agreement=0.5, passed=False)],    # vote share 0.5 -> kept
     ["a#0", "a#1", "d#0", "d#1"]),
]


@pytest.mark.parametrize("name, kwargs, rows, kept", CASES, ids=[c[0] for c in CASES])
def test_filter(name: str, kwargs: dict, rows: list[Candidate], kept: list[str]) -> None:
    out = FILTERS.get(name)(rows, CTX, **kwargs)
    assert sorted(r.completion.id for r in out) == sorted(kept)


def test_pipeline_reports_each_step() -> None:
    rows = [cand("a", 0, "1230"), cand("a", 1, "1230"), cand("b", 0, "99", agreement=0.2)]
    kept, stats = run_filters(rows, [("format", {}), ("agreement", {"min": 0.5}), ("dedup", {})], CTX)
    assert [r.completion.id for r in kept] == ["a#0"]
    assert [(s.function, s.rows_in, s.rows_out) for s in stats] == [("format", 3, 2), ("agreement", 2, 2), ("dedup", 2, 1)]


def test_bad_filter_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="filter 'dedup' does not take max"):
        run_filters([], [("dedup", {"max": 1})], CTX)
    with pytest.raises(ValueError, match="agreement needs 0 <= min <= max <= 1"):
        FILTERS.get("agreement")([], CTX, min=2.0)


def test_view_agreement_needs_every_view_label_consistent_and_unanimous() -> None:
    """Originals keep an answer only if each of their views has a unanimous label whose low digits agree; view
    rows pass through (validate drops them later); a view with no label at all (filtered out) fails its original."""
    from selfimprove.problems.arithmetic import ArithmeticProblems

    ps = ArithmeticProblems()
    rows = []
    for a, b, answer, view_label, agreement in [
        (123, 456, "9750", "975", 1.0),    # consistent, unanimous view -> kept
        (124, 456, "0850", "085", 0.67),   # view label not unanimous -> dropped
        (125, 456, "1850", "085", 1.0),    # low digit disagrees with the view -> dropped
        (126, 456, "2850", None, None),    # the view has no label -> dropped
    ]:
        p = ps.make_problem(a, b, 3, "train")
        (v,) = ps.views(p, ["prefix"])
        p = p.model_copy(update={"meta": {**p.meta, "views": [v.id]}})
        rows.append(Candidate(p, Completion(id=f"{p.id}#0", problem_id=p.id, round=1, sample_idx=0, text=answer),
                              Verdict(sample_id=f"{p.id}#0", problem_id=p.id, round=1, verifier="t", passed=True,
                                      score=1.0, answer=answer, label=answer, agreement=1.0)))
        if view_label is not None:
            text = view_label + "0"
            rows.append(Candidate(v, Completion(id=f"{v.id}#0", problem_id=v.id, round=1, sample_idx=0, text=text),
                                  Verdict(sample_id=f"{v.id}#0", problem_id=v.id, round=1, verifier="t", passed=True,
                                          score=1.0, answer=text, label=text, agreement=agreement)))
    out = FILTERS.get("view_agreement")(rows, FilterContext(problem_set=ps))
    kept = {r.completion.id for r in out}
    assert "arithmetic/train/3/123+456#0" in kept
    assert not kept & {"arithmetic/train/3/124+456#0", "arithmetic/train/3/125+456#0", "arithmetic/train/3/126+456#0"}
    assert {r.completion.id for r in rows if r.problem.meta.get("view_of")} <= kept
