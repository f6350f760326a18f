"""Second attempts' pure parts: flip metrics, SFT rows from traces, the improvement reward, the prompts per format."""

from __future__ import annotations

import pytest

from selfimprove.correction import edit_distance, first_attempts, flip_metrics, format_rows, improvement_reward, trace_rows
from selfimprove.problems.arithmetic import ArithmeticProblems
from selfimprove.problems.base import EXTRINSIC_FEEDBACK, INTRINSIC_INSTRUCTION, ProblemSet
from selfimprove.types import Completion, Problem, Trace


def trace(i: int, r1: bool, r2: bool, attempted: bool = True, y1: str = "12", y2: str | None = None) -> Trace:
    y2 = y2 if y2 is not None else (y1 if r1 == r2 else "99")
    return Trace(edit=edit_distance(y1, y2), id=f"p{i}#0/2#0", problem_id=f"p{i}", round=1, mode="intrinsic", x=f"{i}+1=", y1=y1, r1=r1,
                 feedback="=" if attempted else "", y2=y2, r2=r2,
                 attempted=attempted)


def test_flip_metrics_count_every_transition() -> None:
    ts = [trace(0, True, True), trace(1, False, True), trace(2, True, False), trace(3, False, False),
          trace(4, False, True)]
    m = flip_metrics(ts)
    assert m["correct/acc1"] == pytest.approx(0.4) and m["correct/acc2"] == pytest.approx(0.6)
    assert m["correct/delta"] == pytest.approx(0.2)
    assert m["correct/wrong_to_right"] == pytest.approx(0.4) and m["correct/right_to_wrong"] == pytest.approx(0.2)
    assert m["correct/edit"] > 0 and m["correct/unchanged"] == pytest.approx(0.4)
    assert flip_metrics([]) == {}


@pytest.mark.parametrize("keep_ratio,kept", [(0.0, 0), (0.5, 1), (1.0, 2), (10.0, 3)])
def test_trace_rows_keep_every_fix_and_right_to_right_by_the_ratio(keep_ratio: float, kept: int) -> None:
    pset = ArithmeticProblems()
    problems = {f"p{i}": Problem(id=f"p{i}", prompt=f"{i}+1=", answer="12") for i in range(8)}
    ts = [trace(0, False, True), trace(1, False, True), trace(2, True, True), trace(3, True, True),
          trace(4, True, True), trace(5, True, False), trace(6, False, False),
          trace(7, True, True, attempted=False)]
    rows = trace_rows(ts, problems, pset, keep_ratio, 1, seed=0)
    fixes = [r for r in rows if r.problem_id in ("p0", "p1")]
    assert len(fixes) == 2 and len(rows) == 2 + kept, "every wrong->right, right->right by the ratio, never a break"
    assert {r.problem_id for r in rows} <= {"p0", "p1", "p2", "p3", "p4"}, "an ended episode teaches no second attempt"
    r0 = next(r for r in rows if r.problem_id == "p0")
    assert r0.prompt == "0+1=12=" and r0.completion == "99" and r0.origin == "self"


def test_first_attempts_take_the_greedy_one_per_problem_and_member_never_views() -> None:
    problems = {"a": Problem(id="a", prompt="a"), "v": Problem(id="v", prompt="v", meta={"view_of": "a"})}
    cs = [Completion(id=f"a#{i}", problem_id="a", round=1, sample_idx=i, text="1", greedy=i in (0, 2),
                     meta={"member": i // 2}) for i in range(4)]
    cs.append(Completion(id="v#0", problem_id="v", round=1, sample_idx=0, text="1", greedy=True))
    assert [c.id for c in first_attempts(cs, problems, 1)] == ["a#0", "a#2"]
    assert [c.id for c in first_attempts(cs, problems, 2)] == ["a#0", "a#1", "a#2", "a#3"]


def test_improvement_reward_is_score_s() -> None:
    assert [improvement_reward(a, b, 0.5) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))] == [0, 1.5, -0.5, 1]


def test_second_attempt_prompts_per_format() -> None:
    chat = ProblemSet()
    p = Problem(id="q", prompt="What is 2+2?", messages=[{"role": "system", "content": "S"},
                                                          {"role": "user", "content": "What is 2+2?"}], answer="4")
    second = chat.correction_prompt(p, "5", chat.feedback("intrinsic"), id="q#0/2")
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
    assert second.messages[2]["content"] == "5" and second.messages[3]["content"] == INTRINSIC_INSTRUCTION
    assert second.answer == "4" and second.meta["attempt_of"] == "q"
    assert chat.feedback("extrinsic") == EXTRINSIC_FEEDBACK and chat.feedback("intrinsic", None, "Again.") == "Again."
    tiny = ArithmeticProblems()
    x = tiny.make_problem(12, 34, 2, "train")
    assert tiny.correction_prompt(x, "640", tiny.feedback("intrinsic"), id="x/2").prompt == x.prompt + "640="
    assert tiny.correction_prompt(x, "640", tiny.feedback("extrinsic"), id="x/2").prompt == x.prompt + "640=="


def test_code_feedback_carries_the_failing_test() -> None:
    from selfimprove.problems.mbpp import MBPPProblems
    from selfimprove.types import Verdict

    v = Verdict(sample_id="s", problem_id="p", round=1, verifier="sandboxed_tests", passed=False, score=0.0,
                reason="AssertionError: assert add(1, 2) == 3")
    assert "assert add(1, 2) == 3" in MBPPProblems.feedback(MBPPProblems.__new__(MBPPProblems), "extrinsic", v)


def test_format_rows_teach_a_model_from_scratch_what_a_second_attempt_is() -> None:
    pset = ArithmeticProblems()
    problems = pset.labelled(200, [2], seed=0)
    rows = format_rows(pset, problems, "intrinsic", None, 0.25, seed=0)
    assert len(rows) == 50 and all(r.origin == "real" and r.prompt.endswith("=") for r in rows)
    kept = [r for r in rows if r.prompt.endswith(r.completion + "=")]
    assert 0 < len(kept) < len(rows), "intrinsic: right first answers kept, wrong ones corrected"
    ext = format_rows(pset, problems, "extrinsic", None, 0.25, seed=0)
    assert all(r.prompt.endswith("==") and not r.prompt.endswith(r.completion + "==") for r in ext)


@pytest.mark.parametrize(("overrides", "message"), [
    (["correct.samples=3"], "correct.samples is 3 but correct.temperature is 0"),
    (["verify.verifier=judge"], "correct.enabled needs a round verifier that can grade a second attempt"),
    (["correct.train=traces", "finetune.trainer=dpo"], "correct.train: traces trains with sft, weighted_sft or grpo"),
    (["correct.mode=extrensic"], "correct.mode"),
])
def test_config_errors_name_the_key(overrides: list[str], message: str) -> None:
    from pathlib import Path

    from selfimprove.config import ConfigError
    from selfimprove.params import load_config

    root = Path(__file__).resolve().parents[2]
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(root / "params.yaml", ["correct.enabled=true", *overrides])


def test_quality_gate_refuses_inconsistent_traces() -> None:
    from selfimprove.quality import DataQualityError, check_traces

    good = [trace(0, True, True), trace(1, False, True), trace(2, True, True, attempted=False)]
    assert check_traces(good, 1).success
    ended_wrong = trace(3, False, False, attempted=False)  # an episode may end only after a right first attempt
    with pytest.raises(DataQualityError, match="r1"):
        check_traces(good + [ended_wrong], 1)
    with pytest.raises(DataQualityError, match="row count|between"):
        check_traces([], 1)
