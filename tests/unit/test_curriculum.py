"""The loop's decisions (``selfimprove.curriculum``): next round, start model, stop; and the params they write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from selfimprove.config import ConfigError
from selfimprove.params import add_round, clear_rounds, load_config
from selfimprove.curriculum import (
    Outcome,
    best_round,
    decide,
    lineage,
    solved_up_to,
    stop_reason,
)
from selfimprove.stages.evaluate import pool_gap

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, *overrides: str):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return load_config(tmp_path / "params.yaml", ["loop.policy=curriculum", *overrides])


def _acc(**by_digit: float) -> dict[str, float]:
    m = {f"accuracy/d{k[1:]}": v for k, v in by_digit.items()}
    return m | {"accuracy": sum(m.values()) / len(m), "solved_up_to": solved_up_to(m, 0.95)}


def test_solved_up_to_counts_only_an_unbroken_run_from_the_easiest():
    assert solved_up_to(_acc(d1=1.0, d2=0.96, d3=0.94, d4=1.0), 0.95) == 2
    assert solved_up_to(_acc(d1=0.5, d2=1.0), 0.95) == 0
    assert solved_up_to({}, 0.95) == 0


def test_the_frontier_is_the_easiest_unsolved_difficulty_plus_ahead(tmp_path):
    cfg = _cfg(tmp_path)
    r0 = Outcome("r0", None, _acc(d1=1.0, d2=1.0, d3=0.99, d4=0.6, d5=0.2, d6=0.0))
    d = decide(cfg, [r0], list(range(1, 21)))
    assert d.stop is None and d.key == "r1"
    assert d.entry["prev"] == "r0" and d.entry["difficulties"] == [4, 5] and d.entry["problems"] == 8000
    assert d.entry["eval_difficulties"] == [1, 2, 3, 4, 5, 6]
    assert d.entry["why"] == ("curriculum: start from r0 (accuracy 0.632, the best healthy round); frontier d4 "
                              "(d4 accuracy 0.60 < 0.95), sample d4, d5, evaluate d1-d6")
    cfg = _cfg(tmp_path, "loop.curriculum.width=2", "loop.curriculum.ahead=0", "loop.curriculum.eval_ahead=2")
    d = decide(cfg, [r0], list(range(1, 21)))
    assert d.entry["difficulties"] == [4, 5] and d.entry["eval_difficulties"] == [1, 2, 3, 4, 5, 6, 7]


def test_evaluation_widens_past_the_fixed_list_as_the_frontier_moves(tmp_path):
    cfg = _cfg(tmp_path, "loop.target.metric=solved_up_to")
    solved = {f"d{i}": 1.0 for i in range(1, 8)}
    r3 = Outcome("r3", "r2", _acc(**solved, d8=0.3))
    hist = [Outcome("r0", None, _acc(d1=1.0)), Outcome("r1", "r0", _acc(d1=1.0)), Outcome("r2", "r1", _acc(d1=1.0)), r3]
    d = decide(cfg, hist, list(range(1, 21)))
    assert d.entry["prev"] == "r3" and d.entry["difficulties"] == [8, 9]
    assert d.entry["eval_difficulties"] == list(range(1, 11))


def test_a_regressed_or_unhealthy_round_never_starts_another(tmp_path):
    cfg = _cfg(tmp_path, "loop.on_health_failure=rollback")
    r0 = Outcome("r0", None, _acc(d1=1.0, d4=0.5))
    r1 = Outcome("r1", "r0", _acc(d1=1.0, d4=0.9))
    r2 = Outcome("r2", "r1", _acc(d1=1.0, d4=0.8))  # regressed against r1
    best, why = best_round([r0, r1, r2], "accuracy")
    assert best.key == "r1" and "rolled back past r2 (regressed)" in why
    r3 = Outcome("r3", "r1", _acc(d1=1.0, d4=0.99), healthy=False)  # better, but failed a gate
    best, why = best_round([r0, r1, r2, r3], "accuracy")
    assert best.key == "r1" and "r3 (failed a health gate)" in why
    d = decide(cfg, [r0, r1, r2, r3], list(range(1, 21)))
    assert d.stop is None and d.key == "r4" and d.entry["prev"] == "r1"


def test_stop_reasons(tmp_path):
    r0 = Outcome("r0", None, _acc(d1=1.0, d2=0.5))
    r1 = Outcome("r1", "r0", _acc(d1=1.0, d2=0.97, d3=0.96))
    cfg = _cfg(tmp_path, "loop.target.metric=solved_up_to", "loop.target.goal=3")
    assert stop_reason(cfg, [r0, r1]) == "goal reached: solved_up_to 3.000 >= 3 in r1"
    cfg = _cfg(tmp_path, "loop.max_rounds=1")
    assert stop_reason(cfg, [r0, r1]) == "max_rounds: 1 rounds ran (loop.max_rounds)"
    assert stop_reason(_cfg(tmp_path), [r0, r1]) is None  # curriculum default bound: 10 rounds
    cfg = _cfg(tmp_path, "loop.stop_on_plateau=1", "loop.target.metric=accuracy/d2")
    flat = Outcome("r2", "r1", _acc(d1=1.0, d2=0.97))
    assert stop_reason(cfg, [r0, r1, flat]).startswith("plateau: round 2 did not improve accuracy/d2 beyond 0.970")
    sick = Outcome("r2", "r1", _acc(d1=1.0, d2=0.99), healthy=False)
    assert stop_reason(_cfg(tmp_path), [r0, r1, sick]) == "a health gate failed"
    assert decide(_cfg(tmp_path), [r0, r1, sick], [1, 2]).stop == "a health gate failed"
    everything = Outcome("r2", "r1", _acc(d1=1.0, d2=1.0))
    assert decide(_cfg(tmp_path), [r0, r1, everything], [1, 2]).stop.startswith("every difficulty of the problem set")


def test_a_set_without_difficulties_gets_a_pass_rate_band(tmp_path):
    cfg = _cfg(tmp_path, "loop.curriculum.band=[0.3, 0.9]", "loop.curriculum.problems_per_difficulty=500")
    d = decide(cfg, [Outcome("r0", None, {"accuracy": 0.4})], [])
    assert d.entry == {"prev": "r0", "band": [0.3, 0.9], "problems": 500, "why": d.entry["why"]}
    assert "label agreement in [0.3, 0.9]" in d.entry["why"]


def test_decisions_are_written_into_the_params_and_load_back(tmp_path):
    cfg = _cfg(tmp_path)
    path = tmp_path / "params.yaml"
    cfg = clear_rounds(path)
    assert cfg.round_keys() == [] and sorted(cfg.eval_rounds) == ["r0"]
    text = path.read_text()
    assert "# selfimprove: the embedded default loop." in text and "eval_rounds:" in text
    entry = {"prev": "r0", "difficulties": [4, 5], "problems": 8000, "eval_difficulties": [1, 2, 3, 4, 5, 6],
             "why": "curriculum: start from r0; frontier d4"}
    add_round(path, "r1", entry)
    cfg = add_round(path, "r2", entry | {"prev": "r0", "why": "rolled back past r1"})
    loaded = load_config(path)
    assert loaded.round_keys() == ["r1", "r2"] and loaded.rounds["r2"].prev == "r0"
    assert loaded.rounds["r1"].why == "curriculum: start from r0; frontier d4"
    assert sorted(loaded.eval_rounds) == ["r0", "r1", "r2"] and lineage(loaded, "r2") == ["r0", "r2"]
    assert "r1: {prev: r0, difficulties: [4, 5]" in path.read_text()
    with pytest.raises(ConfigError, match="already in rounds"):
        add_round(path, "r2", entry)


def test_a_round_may_start_from_any_earlier_round_but_not_a_later_one(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    ok = load_config(tmp_path / "params.yaml", ["rounds.r3.prev=r1"])
    assert ok.rounds["r3"].prev == "r1"
    with pytest.raises(ConfigError, match=r"rounds.r2.prev must be an earlier round \(r0, r1\)"):
        load_config(tmp_path / "params.yaml", ["rounds.r2.prev=r3"])
    with pytest.raises(ConfigError, match="rollback needs loop.policy: curriculum"):
        load_config(tmp_path / "params.yaml", ["loop.on_health_failure=rollback"])


def test_pool_gap_compares_the_same_difficulties():
    assert pool_gap({"accuracy/d4": 0.5, "accuracy/d5": 0.1}, {"accuracy/d4": 0.9, "accuracy/d5": 0.3}) == pytest.approx(
        {"health/pool_accuracy": 0.6, "health/heldout_accuracy": 0.3, "health/pool_gap": 0.3})
    assert pool_gap({"accuracy/d4": 0.5}, {}) == {}


def test_a_regress_tolerance_keeps_noise_from_discarding_a_round(tmp_path):
    r0 = Outcome("r0", None, {"solved_progress": 5.10})
    r1 = Outcome("r1", "r0", {"solved_progress": 5.09})  # 0.01 lower: evaluation noise
    assert best_round([r0, r1], "solved_progress")[0].key == "r0"
    best, why = best_round([r0, r1], "solved_progress", tolerance=0.03)
    assert best.key == "r1" and "rolled back" not in why
    r2 = Outcome("r2", "r1", {"solved_progress": 5.00})  # 0.09 lower: a real regression
    assert best_round([r0, r1, r2], "solved_progress", tolerance=0.03)[0].key == "r1"


@pytest.mark.parametrize("tolerance", [0.0, 0.02])
@pytest.mark.parametrize("accs", [
    [0.50, 0.60, 0.59, 0.61],   # a dip within noise, then a new best
    [0.50, 0.70, 0.55, 0.69],   # a regression, then a round from the regressed one
    [0.50, 0.49, 0.50, 0.50],   # ties: the later round wins
    [0.50, 0.40, 0.45, 0.30],   # nothing beats round 0
])
def test_promotion_and_the_start_model_use_one_definition_of_best(accs: list[float], tolerance: float) -> None:
    """Rounds in a chain, each promoted or not as the registry step does; after every round the ``best`` alias sits
    on the round ``best_round`` would start the next one from."""
    from selfimprove.curriculum import best_round, promotion

    history: list[Outcome] = []
    alias: tuple[str, float] | None = None
    for i, a in enumerate(accs):
        o = Outcome(f"r{i}", f"r{i - 1}" if i else None, {"accuracy": a})
        start = history[-1].metrics["accuracy"] if history else None
        ok, _ = promotion(a, start, alias[1] if alias else None, "accuracy", tolerance)
        if ok:
            alias = (o.key, a)
        history.append(o)
        assert alias is not None and alias[0] == best_round(history, "accuracy", tolerance)[0].key, (i, alias)


def test_proposals_the_model_solves_move_the_frontier_one_difficulty_harder(tmp_path):
    cfg = _cfg(tmp_path, "propose.enabled=true")
    r0 = Outcome("r0", None, _acc(d1=1.0, d2=1.0, d3=0.99, d4=0.6, d5=0.2, d6=0.0))
    r1_easy = Outcome("r1", "r0", _acc(d1=1.0, d2=1.0, d3=0.99, d4=0.7, d5=0.3, d6=0.0)
                      | {"proposals/sampled": 100, "proposals/too_easy": 80, "proposals/in_band": 20})
    d = decide(cfg, [r0, r1_easy], list(range(1, 21)))
    assert d.entry["difficulties"] == [5, 6], d.entry
    assert d.entry["why"].endswith("proposals 80% above propose.band: one difficulty harder")
    r1_band = Outcome("r1", "r0", r1_easy.metrics | {"proposals/too_easy": 20, "proposals/in_band": 80})
    assert decide(cfg, [r0, r1_band], list(range(1, 21))).entry["difficulties"] == [4, 5]
    off = _cfg(tmp_path)  # without propose the same metrics change nothing
    assert decide(off, [r0, r1_easy], list(range(1, 21))).entry["difficulties"] == [4, 5]
