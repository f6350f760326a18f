"""GRPO's pieces without training: verifier rewards (label-free vote, gold, weighted), the rollout records, TTRL's
label and reward accuracy, the GX gate on rollouts, and the configuration errors a user meets first."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from selfimprove.config import ConfigError
from selfimprove.params import load_config
from selfimprove.quality import DataQualityError, check_rollouts
from selfimprove.trainers.grpo import (
    GRPOOptions,
    RewardSpec,
    Rollouts,
    grade_gold,
    label_reward_accuracy,
    reward_functions,
)
from selfimprove.types import Problem
from selfimprove.verifiers import VERIFIERS

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
PROBLEMS = {"p": Problem(id="p", prompt="5+7=", answer="12"), "q": Problem(id="q", prompt="1+1=", answer="2")}


def make(name: str):
    return VERIFIERS.get(name)()


def rewards(specs: list[RewardSpec]) -> tuple[list, Rollouts]:
    rec = Rollouts([s.verifier for s in specs], [s.weight for s in specs], None, round=1)
    return reward_functions(specs, make, PROBLEMS, rec, round=1), rec


def call(fn, ids: list[str], texts: list[str], step: int = 0) -> list[float]:
    return fn(prompts=[PROBLEMS[i].prompt for i in ids], completions=texts, problem_id=ids,
              trainer_state=SimpleNamespace(global_step=step))


def test_majority_vote_reward_is_agreement_with_the_groups_plurality_never_gold() -> None:
    [fn], rec = rewards([RewardSpec(verifier="majority_vote")])
    # p: the plurality answer 13 is wrong, and still earns the reward (label-free); q: a tie gives no label
    assert call(fn, ["p"] * 4 + ["q"] * 4, ["13", "13", "12", "x y"] + ["2", "3", "2", "3"]) == \
        [1.0, 1.0, 0.0, 0.0] + [0.0] * 4
    [r] = [r for r in rec.records() if r.problem_id == "p" and r.index == 0]
    assert r.pseudo_label == "13" and r.answer == "13" and r.reward == 1.0 and r.id == "model/0/p#0"
    assert {r.pseudo_label for r in rec.records() if r.problem_id == "q"} == {None}


def test_gold_and_weighted_rewards_and_their_records() -> None:
    specs = [RewardSpec(verifier="exact_match", weight=1.0), RewardSpec(verifier="majority_vote", weight=0.5)]
    (gold, vote), rec = rewards(specs)
    texts = ["12", "13", "13", "12"]
    assert call(gold, ["p"] * 4, texts, step=3) == [1.0, 0.0, 0.0, 1.0]
    assert call(vote, ["p"] * 4, texts, step=3) == [0.0, 0.0, 0.0, 0.0]  # 2-2 tie: no pseudo-label
    recs = rec.records()
    assert [r.reward for r in recs] == [1.0, 0.0, 0.0, 1.0] and all(r.step == 3 for r in recs)
    assert recs[0].rewards == {"exact_match": 1.0, "majority_vote": 0.0}
    call(gold, ["p"] * 4, ["12"] * 4, step=4)
    call(vote, ["p"] * 4, ["12"] * 4, step=4)
    assert [r.reward for r in rec.records()[4:]] == [1.5] * 4  # 1.0 * gold + 0.5 * vote


def test_label_and_reward_accuracy_against_gold() -> None:
    [fn], rec = rewards([RewardSpec(verifier="majority_vote")])
    call(fn, ["p"] * 4, ["12", "12", "12", "7"], step=0)   # right label; rewards match gold on all 4
    call(fn, ["q"] * 4, ["3", "3", "3", "2"], step=0)      # wrong label; rewards match gold on none
    records = rec.records()
    verifier = make("exact_match")
    gold = grade_gold(records, PROBLEMS, verifier)
    graded = [r.model_copy(update={"gold_passed": gold[r.id]}) for r in records]
    acc = label_reward_accuracy(graded, PROBLEMS, verifier)
    assert acc == {"gold_reward": 4 / 8, "reward_accuracy": 4 / 8, "label_accuracy": 1 / 2}
    assert label_reward_accuracy(records, PROBLEMS, verifier) == {}  # no gold verdicts: nothing to say


def test_rollouts_gate_checks_group_sizes_and_reward_bounds() -> None:
    [fn], rec = rewards([RewardSpec(verifier="majority_vote")])
    call(fn, ["p"] * 4, ["12", "12", "12", "7"])
    frame = pd.DataFrame([r.model_dump() for r in rec.records()])
    assert check_rollouts(frame, 4, (0.0, 1.0)).success
    with pytest.raises(DataQualityError, match=r"\[groups\] expect_column_values_to_be_between on column 'size'"):
        check_rollouts(frame.iloc[:3], 4, (0.0, 1.0))
    bad = frame.assign(reward=[0.0, 2.0, 0.0, 0.0])
    with pytest.raises(DataQualityError, match=r"column 'reward'"):
        check_rollouts(bad, 4, (0.0, 1.0))


@pytest.mark.parametrize(("overrides", "message"), [
    (["finetune.train.batch_size=60"], "must be a multiple of finetune.grpo.num_generations"),
    ([], "validate.filters.1 \\(agreement, min 1.0\\) keeps only problems"),
    (["validate.filters.1.min=0.0", "model.ensemble=1"], "each problem gets 1 sample"),
    (["validate.filters.1.min=0.0", "finetune.grpo.rewards=[{verifier: majority_vot}]"], "did you mean 'majority_vote'"),
    (["validate.filters.1.min=0.0", "finetune.grpo.rewards=[]"], "finetune.grpo.rewards is empty"),
])
def test_config_errors_name_the_key(overrides: list[str], message: str) -> None:
    base = ["finetune.trainer=grpo"] + (["model.ensemble=1", "sample.k=0"] if "model.ensemble=1" in overrides else [])
    with pytest.raises(ConfigError, match=message):
        load_config(PARAMS, base + overrides)


def test_vllm_rollouts_refused_on_cpu_with_what_to_do() -> None:
    from selfimprove.trainers.grpo import _check_vllm

    with pytest.raises(RuntimeError, match="training runs on CPU .* set finetune.grpo.vllm: none"):
        _check_vllm(GRPOOptions(vllm="colocate"), cuda=False)
    with pytest.raises(RuntimeError, match="vllm_server_base_url"):
        _check_vllm(GRPOOptions(vllm="server"), cuda=True)


def test_judge_reward_is_the_judges_normalised_score() -> None:
    """A judge as the GRPO reward: each completion earns the judge's score scaled to [0, 1]; an unparseable
    judgment is an abstention and earns 0 (never a guess)."""
    import re

    from selfimprove.samplers.base import Sampler, completion_id
    from selfimprove.types import Completion
    from selfimprove.verifiers.judge import JudgeVerifier

    class Scripted(Sampler):
        name = "scripted"

        def sample(self, problems, params, round, progress=True):  # noqa: ANN001
            said = {"12": "Score: 10", "13": "Score: 4", "x": "no idea"}
            return [Completion(id=completion_id(p.id, 0), problem_id=p.id, round=round, sample_idx=0, greedy=True,
                               text=said[re.search(r"Answer:\n(.*)\n\nRate", p.prompt, re.S).group(1)])
                    for p in problems]

    judge = JudgeVerifier(judge_sampler=Scripted("scripted"))
    rec = Rollouts(["judge"], [1.0], None, round=1)
    [fn] = reward_functions([RewardSpec(verifier="judge")], lambda name: judge, PROBLEMS, rec, round=1)
    assert call(fn, ["p"] * 3, ["12", "13", "x"]) == pytest.approx([1.0, 3 / 9, 0.0])
    assert [r.reward for r in rec.records()] == pytest.approx([1.0, 3 / 9, 0.0])
