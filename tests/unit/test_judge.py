"""The ``judge`` verifier: the parsing table on a deterministic fake judge, and a real tiny model as judge.

The fake sampler answers each judge prompt with a scripted text (keyed by the completion it is asked about), so
every row of the table goes through the verifier exactly as a model's judgment would. The tiny arithmetic model
cannot read the judge template (its vocabulary is digits, '+' and '='), so most of its judgments are unparseable:
that is the case the test checks, every one of them counted as ``abstain`` with the raw text kept, none guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from selfimprove.samplers.base import Sampler, SamplingParams, completion_id
from selfimprove.types import Completion, Problem
from selfimprove.verifiers import VERIFIERS
from selfimprove.verifiers.judge import DEFAULT_REGEX, JudgeVerifier, parse_judgment


class ScriptedJudge(Sampler):
    """Greedy 'judge' whose answer is looked up by the judged completion's text (found in the judge prompt)."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]):
        super().__init__("scripted")
        self.answers = answers
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []
        self.closed = False

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int, progress: bool = True) -> list[Completion]:
        self.params.append(params)
        out = []
        for p in problems:
            self.prompts.append(p.prompt)
            key = re.search(r"Answer:\n(.*)\n\nRate", p.prompt, re.DOTALL).group(1)  # type: ignore[union-attr]
            out.append(Completion(id=completion_id(p.id, 0), problem_id=p.id, round=round, sample_idx=0, greedy=True,
                                  text=self.answers[key]))
        return out

    def close(self) -> None:
        self.closed = True


# judgment text -> (status, judge score on the 1-10 scale or None, reason fragment)
TABLE: list[tuple[str, str, float | None, str]] = [
    ("7", "pass", 7.0, "score 7 in [1, 10]"),
    ("Score: 9", "pass", 9.0, "score 9"),
    ("score=10", "pass", 10.0, "score 10"),
    ("8/10", "pass", 8.0, "score 8"),                        # '/10' is part of the match, not a second number
    ("score 7.5", "pass", 7.5, "score 7.5"),
    ("  Score:\n6\n", "fail", 6.0, "score 6"),
    ("I'd give it a 3", "fail", 3.0, "score 3"),
    ("1", "fail", 1.0, "score 1"),
    ("Score: 8. Final: 8/10", "pass", 8.0, "score 8"),       # the same value twice is one score
    ("Score: 11", "abstain", None, "score 11 outside [1, 10]"),
    ("0", "abstain", None, "score 0 outside [1, 10]"),
    ("-3", "abstain", None, "score -3 outside [1, 10]"),     # a minus sign is not dropped
    ("", "abstain", None, "empty judgment"),
    ("   \n", "abstain", None, "empty judgment"),
    ("excellent answer", "abstain", None, "no score found"),
    ("ten out of ten", "abstain", None, "no score found"),
    ("Score: 7, no wait, 4", "abstain", None, "ambiguous: 2 different scores (7, 4)"),
    ("3/10 because 2+2=4", "abstain", None, "ambiguous: 3 different scores"),
    ("4/5", "abstain", None, "ambiguous"),                    # not the configured scale: never rescaled by guess
]


def verify_table(**options: object) -> tuple[list, ScriptedJudge]:
    answers = {f"completion {i}": row[0] for i, row in enumerate(TABLE)}
    judge = ScriptedJudge(answers)
    problem = Problem(id="p", prompt="What is 2+2?")
    completions = [Completion(id=f"p#{i}", problem_id="p", round=2, sample_idx=i, text=f"completion {i}")
                   for i in range(len(TABLE))]
    v = JudgeVerifier(judge_sampler=judge, **options)  # type: ignore[arg-type]
    return v.verify({"p": problem}, completions), judge


def test_registered_as_label_free_model_based_verifier() -> None:
    cls = VERIFIERS.get("judge")
    assert cls is JudgeVerifier and cls.needs_model and not cls.needs_gold


@pytest.mark.parametrize("row", TABLE, ids=[repr(r[0]) for r in TABLE])
def test_parse_table(row: tuple[str, str, float | None, str]) -> None:
    text, _, score, reason = row
    j = parse_judgment(text, re.compile(DEFAULT_REGEX, re.IGNORECASE), 1.0, 10.0)
    assert j.score == score
    assert reason in j.reason


def test_verdicts_from_the_table() -> None:
    verdicts, judge = verify_table()
    assert len(verdicts) == len(TABLE)
    for v, (text, status, score, reason) in zip(verdicts, TABLE):
        assert v.status == status, (text, v)
        assert v.verifier == "judge" and v.round == 2 and v.answer is None
        assert v.details["judgment"] == text and v.details["judge_score"] == score  # raw judgment always kept
        assert reason in v.reason
        if status == "abstain":
            assert not v.passed and v.score == 0.0 and v.reason.startswith("unparseable judgment")
        else:
            assert v.passed == (score >= 7.0)
            assert v.score == pytest.approx((score - 1.0) / 9.0)  # normalised to [0, 1]
    # every judgment is greedy and bounded
    assert judge.params[0].k == 0 and judge.params[0].greedy and judge.params[0].max_new_tokens == 16


def test_unparseable_judgments_are_counted_not_guessed() -> None:
    v = JudgeVerifier(judge_sampler=ScriptedJudge({f"completion {i}": r[0] for i, r in enumerate(TABLE)}))
    problem = Problem(id="p", prompt="q")
    v.verify({"p": problem}, [Completion(id=f"p#{i}", problem_id="p", round=1, sample_idx=i, text=f"completion {i}")
                              for i in range(len(TABLE))])
    expected = {s: sum(r[1] == s for r in TABLE) for s in ("pass", "fail", "abstain")}
    assert dict(v.stats) == expected


def test_threshold_scale_and_named_group() -> None:
    verdicts, _ = verify_table(threshold=9.0)
    assert [v.passed for v in verdicts][:3] == [False, True, True]
    # a 0-100 scale with a named group: "8/10" now reads as 8 out of 100
    verdicts, _ = verify_table(score_regex=r"(?P<score>\d+)", min_score=0, max_score=100, threshold=50)
    by_text = {TABLE[i][0]: v for i, v in enumerate(verdicts)}
    assert by_text["Score: 11"].status == "fail" and by_text["Score: 11"].score == pytest.approx(0.11)
    assert by_text["8/10"].status == "abstain"  # 8 and 10: two numbers once '/10' is no longer part of the regex


def test_template_gets_prompt_and_completion_verbatim() -> None:
    judge = ScriptedJudge({"x = {1}": "7"})
    v = JudgeVerifier(judge_sampler=judge)
    v.verify({"p": Problem(id="p", prompt="Q {with braces}")},
             [Completion(id="p#0", problem_id="p", round=1, sample_idx=0, text="x = {1}")])
    assert judge.prompts == ["Problem:\nQ {with braces}\n\nAnswer:\nx = {1}\n\nRate the answer from 1 to 10. Score:"]


@pytest.mark.parametrize("bad, match", [
    ({"template": "Rate {prompt}"}, "must use \\{completion\\}"),
    ({"template": "{completion} {other}"}, "it uses"),
    ({"score_regex": "("}, "not a valid regular expression"),
    ({"min_score": 5, "max_score": 5}, "must be below"),
    ({"threshold": 11}, "must be within"),
])
def test_bad_options_fail_at_construction(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JudgeVerifier(judge_sampler=ScriptedJudge({}), **bad)


def test_needs_a_judge_model() -> None:
    with pytest.raises(ValueError, match="no judge model"):
        JudgeVerifier()


def test_closes_only_its_own_sampler() -> None:
    injected = ScriptedJudge({})
    v = JudgeVerifier(judge_sampler=injected)
    v.close()
    assert not injected.closed


def test_tiny_model_as_judge_counts_unparseable(tiny_model_dir: Path) -> None:
    """The round's current model (here the tiny arithmetic model) judges through the real transformers sampler."""
    from selfimprove.config import Config
    from selfimprove.stages.common import round_verifier

    config = Config.model_validate({"verify": {"verifier": "judge"}, "sample": {"batch_size": 64}})
    v = round_verifier(config, model_dir=tiny_model_dir)
    assert isinstance(v, JudgeVerifier) and Path(str(v.model)) == tiny_model_dir
    problems = {f"p{i}": Problem(id=f"p{i}", prompt=f"{i}+{i}=") for i in range(6)}
    completions = [Completion(id=f"p{i}#{j}", problem_id=f"p{i}", round=1, sample_idx=j, text=str(2 * i + j))
                   for i in range(6) for j in range(2)]
    try:
        verdicts = v.verify(problems, completions)
    finally:
        v.close()
    assert len(verdicts) == 12
    parsed = [parse_judgment(x.details["judgment"], v.pattern, 1, 10) for x in verdicts]
    for x, j in zip(verdicts, parsed):
        assert (x.status == "abstain") == (j.score is None)  # every unparseable judgment is an abstention
        if j.score is not None:
            assert x.passed == (j.score >= 7)
    assert v.stats["abstain"] == sum(j.score is None for j in parsed)
    assert v.stats["abstain"] >= 6, [x.details["judgment"] for x in verdicts]  # an arithmetic model is no judge
