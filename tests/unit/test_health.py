"""Loop health metrics (``selfimprove.health``): each one moves the way its failure mode says it should."""

from __future__ import annotations

import pytest

from selfimprove.health import distinct_n, entropy_bits, gold_health, repeats, sample_health
from selfimprove.types import Completion, Problem, TrainRow, Verdict
from selfimprove.verifiers.exact import ExactMatchVerifier

PROBLEMS = {f"p{i}": Problem(id=f"p{i}", prompt="", answer=str(10 + i), difficulty=1 + i % 2) for i in range(4)}


def _round(texts_per_problem: dict[str, list[str]], finish: str = "stop", agreement: float | None = None):
    samples, verdicts = [], []
    for pid, texts in texts_per_problem.items():
        for i, t in enumerate(texts):
            c = Completion(id=f"{pid}#{i}", problem_id=pid, round=1, sample_idx=i, text=t, finish_reason=finish)
            samples.append(c)
            verdicts.append(Verdict(sample_id=c.id, problem_id=pid, round=1, verifier="majority_vote", passed=True,
                                    score=1.0, answer=t.split()[-1] if t.split() else None, agreement=agreement))
    return samples, verdicts


def test_diverse_round_vs_collapsed_round():
    diverse, dv = _round({pid: [f"so it is {10 + j}" for j in range(4)] for pid in PROBLEMS})
    collapsed, cv = _round({pid: ["it is it is it is it is 7"] * 4 for pid in PROBLEMS}, finish="length", agreement=1.0)
    d = sample_health(diverse, dv, PROBLEMS, [])
    c = sample_health(collapsed, cv, PROBLEMS, [])
    assert d["health/distinct_answers"] == 4 and c["health/distinct_answers"] == 1
    assert d["health/answer_entropy"] == pytest.approx(2.0) and c["health/answer_entropy"] == 0
    assert d["health/distinct_2"] > c["health/distinct_2"]
    assert (d["health/repetition_rate"], c["health/repetition_rate"]) == (0, 1)
    assert (d["health/stop_rate"], c["health/stop_rate"]) == (1, 0)
    assert "health/proxy_agreement" not in d and c["health/proxy_agreement"] == 1.0


def test_accepted_labels_per_difficulty_show_the_tail():
    samples, verdicts = _round({pid: ["x 1"] for pid in PROBLEMS})
    accepted = [TrainRow(id=f"{pid}#0", prompt="", completion="1", problem_id=pid, origin="self", round=1)
                for pid in ("p0", "p2", "p1")]
    h = sample_health(samples, verdicts, PROBLEMS, accepted)
    assert (h["health/accepted/d1"], h["health/accepted/d2"]) == (2.0, 1.0)


def test_exploration_is_pass_at_k_minus_pass_at_1_against_gold():
    # p0: 1 of 4 right, p1: 4 of 4, p2 and p3: none
    texts = {"p0": ["10", "9", "9", "9"], "p1": ["11"] * 4, "p2": ["0"] * 4, "p3": ["0"] * 4}
    samples, _ = _round(texts)
    h = gold_health(samples, PROBLEMS, ExactMatchVerifier())
    assert h["health/pass_at_1"] == pytest.approx((0.25 + 1) / 4)
    assert h["health/pass_at_k"] == pytest.approx(0.5)
    assert h["health/exploration"] == pytest.approx(0.5 - 1.25 / 4)
    assert gold_health(samples, {k: p.model_copy(update={"answer": None}) for k, p in PROBLEMS.items()},
                       ExactMatchVerifier()) == {}


def test_helpers():
    assert distinct_n([]) is None and entropy_bits([]) == 0 and entropy_bits([2, 2]) == 1.0
    assert repeats("ab ab ab ab ab ab".replace(" ", "")) is True  # one word: character 3-grams
    assert sample_health([], [], PROBLEMS, []) == {}


def test_health_gates_are_checked_by_great_expectations():
    from selfimprove.config import HealthGate
    from selfimprove.health import check_health, describe_failure

    rounds = [
        {"round": 0, "accuracy": 0.5},
        {"round": 1, "acceptance_precision": 0.95, "health/proxy_agreement": 0.80, "health/answer_entropy": 1.2},
        {"round": 2, "acceptance_precision": 0.97, "health/proxy_agreement": 0.85, "health/answer_entropy": 1.0},
        {"round": 3, "acceptance_precision": 0.70, "health/proxy_agreement": 0.95, "health/answer_entropy": 0.4},
    ]
    gates = [HealthGate(metric="acceptance_precision", min=0.9),
             HealthGate(metric="health/answer_entropy", min_fraction_of_first=0.5),
             HealthGate(metric="acceptance_precision", not_falling_while="health/proxy_agreement")]
    ok = check_health(rounds[:3], gates)
    assert ok["success"] is True and ok["failures"] == []
    bad = check_health(rounds, gates)
    assert bad["success"] is False
    by_check = {f["check"]: f for f in bad["failures"]}
    assert set(by_check) == {"acceptance_precision", "health/answer_entropy / first",
                             "acceptance_precision falls while health/proxy_agreement rises"}
    assert all(f["failed_rounds"] == [3] for f in bad["failures"])
    assert by_check["acceptance_precision"]["values"] == {0: None, 1: 0.95, 2: 0.97, 3: 0.7}
    assert "failed in round 3" in describe_failure(by_check["acceptance_precision"])
    assert [row["round"] for row in bad["table"]] == [0, 1, 2, 3]


def test_a_gate_without_a_condition_is_refused():
    from pydantic import ValidationError

    from selfimprove.config import HealthGate

    with pytest.raises(ValidationError, match="sets no condition"):
        HealthGate(metric="health/repetition_rate")


def test_a_greedy_only_round_still_gets_its_gold_metrics():
    samples, _ = _round({"p0": ["10"], "p1": ["0"]})
    samples = [c.model_copy(update={"greedy": True}) for c in samples]
    h = gold_health(samples, PROBLEMS, ExactMatchVerifier())
    assert (h["health/pass_at_1"], h["health/pass_at_k"]) == (0.5, 0.5)


def test_health_gates_read_the_proposals_drift_and_collapse():
    """The seed-3 tiny proposer of bench/propose.py: acceptance fell from 0.37 to 0.07 as it rewrote its own problems."""
    from selfimprove.config import HealthGate
    from selfimprove.health import check_health

    rounds = [{"round": 0, "accuracy": 0.66},
              {"round": 1, "propose/acceptance_rate": 0.368, "propose/mean_complexity": 8.0, "proposals/band_yield": 0.70},
              {"round": 2, "propose/acceptance_rate": 0.0705, "propose/mean_complexity": 8.0, "proposals/band_yield": 0.02}]
    gates = [HealthGate(metric="propose/acceptance_rate", min_fraction_of_first=0.5),
             HealthGate(metric="propose/mean_complexity", max=12),
             HealthGate(metric="proposals/band_yield", min=0.05)]
    res = check_health(rounds, gates)
    assert {f["check"] for f in res["failures"]} == {"propose/acceptance_rate / first", "proposals/band_yield"}
    assert all(f["failed_rounds"] == [2] for f in res["failures"])


def test_a_rise_gate_stops_right_to_wrong_flips_rising_and_a_delta_floor():
    from selfimprove.config import HealthGate
    from selfimprove.health import check_health, describe_failure

    rounds = [{"round": 0}, {"round": 1, "correct/right_to_wrong": 0.05, "correct/delta": 0.02},
              {"round": 2, "correct/right_to_wrong": 0.04, "correct/delta": 0.01},
              {"round": 3, "correct/right_to_wrong": 0.12, "correct/delta": -0.06}]
    gates = [HealthGate(metric="correct/right_to_wrong", max_rise=0.01), HealthGate(metric="correct/delta", min=-0.02)]
    assert check_health(rounds[:3], gates)["success"] is True
    bad = check_health(rounds, gates)
    by_check = {f["check"]: f for f in bad["failures"]}
    assert set(by_check) == {"correct/right_to_wrong rise", "correct/delta"}
    rise = by_check["correct/right_to_wrong rise"]
    assert rise["failed_rounds"] == [3] and rise["values"] == {0: None, 1: 0.05, 2: 0.04, 3: 0.12}
    assert describe_failure(rise).startswith("correct/right_to_wrong (correct/right_to_wrong rise, max_value 0.01) "
                                             "failed in round 3")
