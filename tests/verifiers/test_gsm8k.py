"""GSM8K verifier: every gold solution of the real data graded correct, perturbed answers graded wrong, and a
table of the answer formats models actually write (markers, currency, commas, signs, decimals, units).

The real data is read from ``$SELFIMPROVE_BENCHMARKS_DIR`` (default ``../shared/benchmarks`` beside the
repository); tests that need it are skipped with the path in the reason when it is absent.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpers import cpu_seconds
from selfimprove.problems.gsm8k import GSM8KProblems
from selfimprove.types import Completion, Problem
from selfimprove.verifiers import VERIFIERS, make_verifier
from selfimprove.verifiers.gsm8k import GSM8KVerifier, canonical, find_answer

BENCH = Path(
    os.environ.get(
        "SELFIMPROVE_BENCHMARKS_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
    )
)
needs_gsm8k = pytest.mark.skipif(
    not (BENCH / "gsm8k" / "test.jsonl").is_file(), reason=f"GSM8K data not found under {BENCH}"
)


@pytest.fixture(scope="module")
def v() -> GSM8KVerifier:
    return GSM8KVerifier()


def _completion(text: str, pid: str = "p") -> Completion:
    return Completion(id=f"{pid}#0", problem_id=pid, round=0, sample_idx=0, text=text)


def test_registered():
    assert VERIFIERS.get("gsm8k") is GSM8KVerifier
    assert isinstance(make_verifier("gsm8k", fallback="none"), GSM8KVerifier)


@needs_gsm8k
def test_every_gold_solution_is_correct_and_a_perturbed_answer_is_wrong(v):
    ps = GSM8KProblems(data_dir=str(BENCH / "gsm8k"))
    problems = ps.load("train") + ps.load("test")
    assert len(problems) == 8792
    correct = wrong_final = wrong_restated = 0
    for p in problems:
        assert p.solution is not None and p.answer is not None
        if v.check(p, _completion(p.solution, p.id)).status == "pass":
            correct += 1
        body = p.solution.rpartition("####")[0]
        off_by_one = canonical(Fraction(p.answer) + 1)
        # The gold solution with another final answer, and the gold solution followed by a changed mind:
        # the last marker decides in both.
        if v.check(p, _completion(f"{body}#### {off_by_one}", p.id)).status == "fail":
            wrong_final += 1
        if v.check(p, _completion(f"{p.solution}\nWait, the answer is {off_by_one}.", p.id)).status == "fail":
            wrong_restated += 1
    assert (correct, wrong_final, wrong_restated) == (8792, 8792, 8792)


@needs_gsm8k
def test_raw_gold_answer_field_grades_against_its_own_final_number(v):
    """The unmodified ``answer`` field (calculator annotations, ``1,080``-style commas) also passes."""
    import json

    n = 0
    for split in ("train", "test"):
        with open(BENCH / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                gold = row["answer"].rsplit("####", 1)[1].strip()
                assert v.equivalent(v.extract(row["answer"]) or "", gold), row["answer"][-80:]
                n += 1
    assert n == 8792


# (completion, extracted answer) -- formats seen in real model output; None = no answer.
EXTRACT_TABLE = [
    ("#### 72", "72"),
    (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
        "72",
    ),
    (r"The total is $\boxed{72}$.", "72"),
    (r"\[\boxed{72}\]", "72"),
    (r"\fbox{72}", "72"),
    ("The answer is 72.", "72"),
    ("The answer is: 72", "72"),
    ("**Answer:** 72", "72"),
    ("Answer: $72", "72"),
    ("The final answer is $1,080.", "1080"),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    (r"The answer is \(\boxed{18}\).", "18"),
    ("It costs $1,080 in total.", "1080"),
    (r"\boxed{\$1,080}", "1080"),
    ("The answer is 72.00", "72"),
    ("The answer is 72.50.", "72.5"),
    ("The answer is -5.", "-5"),
    ("The answer is \u22125", "-5"),  # Unicode minus
    ("The answer is -$5", "-5"),
    ("The answer is 45%.", "45%"),  # the % is kept: the policy decides how it compares
    ("The answer is 18 dollars.", "18"),
    ("The answer is 3 hours and 20 minutes", "3"),
    ("The answer is .5", "0.5"),
    ("The answer is 3/4", "0.75"),
    (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{\dfrac{1}{3}}", "1/3"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{18 \text{ apples}}", "18"),
    # the last marker wins
    ("The answer is 5. Wait, I made an error: the answer is 7.", "7"),
    ("#### 5\nActually, the answer is 6.", "6"),
    (r"\boxed{3} ... on reflection \boxed{4}", "4"),
    # a marker that no number follows does not count: the earlier one decides
    ("#### 6\nThe answer is not obvious.", "6"),
    (r"So \boxed{18}. The answer is clear.", "18"),
    # model keeps generating a new question after answering: the answer marker still wins
    ("The answer is 18.\n\nQuestion: Tom has 5 apples and buys 3 more.", "18"),
    # no marker: the last number
    ("She has 3 apples and buys 4 more, so 7", "7"),
    ("9 * 2 = 18 dollars", "18"),
    ("Total = 1,234,567.", "1234567"),
    # nothing
    ("", None),
    ("I don't know.", None),
    ("x2 and y3 are variables", None),
    (r"\boxed{}", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_TABLE)
def test_extract_formats(v, text, expected):
    assert v.extract(text) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "equal"),
    [
        ("72", "72", True),
        ("72.00", "72", True),
        ("1080", "1,080", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("0.5", "1/2", True),
        ("72.5", "72", False),
        ("72", "#### 72", True),  # a whole gold solution is accepted as the reference
        ("72", "She sold 48+24 = <<48+24=72>>72 clips.\n#### 72", True),
        ("71", "She sold 48+24 = <<48+24=72>>72 clips.\n#### 72", False),
        ("abc", "72", False),
    ],
)
def test_equivalent_is_exact_numeric(v, answer, reference, equal):
    assert v.equivalent(answer, reference) is equal


@pytest.mark.parametrize(
    ("text", "status", "answer"),
    [
        ("#### 72", "pass", "72"),
        ("#### 73", "fail", "73"),
        ("no idea", "no_answer", None),
        ("She has 72", "pass", "72"),
    ],
)
def test_check_statuses(v, text, status, answer):
    p = Problem(id="p", prompt="q", answer="72")
    verdict = v.check(p, _completion(text))
    assert (verdict.status, verdict.answer, verdict.passed, verdict.label) == (
        status,
        answer,
        status == "pass",
        "72",
    )


def test_fallback_none_requires_a_marker():
    strict = GSM8KVerifier(fallback="none")
    assert strict.extract("She has 72") is None
    assert strict.extract("She has 72. #### 72") == "72"
    assert find_answer("so 72", fallback="none") is None


def test_unknown_option_is_rejected():
    with pytest.raises(ValidationError, match="fallbak"):
        GSM8KVerifier(fallbak="none")


@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda n: "The answer is" + " " * n + "x", 200_000),
        (lambda n: "answer: " * n, 50_000),
        (lambda n: "1," * n, 200_000),
        (lambda n: "-" * n + "5", 200_000),
        (lambda n: r"\boxed{" * n, 30_000),
        (lambda n: "#### " * n + "7", 50_000),
    ],
    ids=["spaces", "markers", "commas", "minuses", "open-boxes", "hashes"],
)
def test_adversarial_inputs_take_linear_time(v, make, n):
    """Ten times the input costs about ten times the work (a quadratic extractor would cost 100 times): the
    ratio of two sizes measured here, never a number of seconds, which depends on the machine and its load."""
    small, large = make(n // 10), make(n)
    t_small, t_large = cpu_seconds(v.extract, small), cpu_seconds(v.extract, large)
    ratio = t_large / max(t_small, 1e-9)
    assert ratio < 40, f"10x the input took {ratio:.0f}x the CPU time ({t_small:.4f} s, then {t_large:.4f} s)"


def test_policy_from_params_reaches_the_round_verifier(tmp_path):
    """``verify.gsm8k.policy.*`` in params.yaml (or a -S override) is what the verify stage grades with; a
    misspelt rule is an error naming the key."""
    from selfimprove.params import load_config
    from selfimprove.stages.common import round_verifier

    params = tmp_path / "params.yaml"
    params.write_text("verify:\n  verifier: gsm8k\n  gsm8k:\n    policy:\n      percent: fraction\n")
    v = round_verifier(load_config(params))
    assert isinstance(v, GSM8KVerifier) and v.config.policy.percent == "fraction"
    verdict = v.check(Problem(id="p", prompt="", answer="0.5"), _completion("The answer is 50%."))
    assert verdict.passed and "percent=fraction" in verdict.reason
    v = round_verifier(load_config(params, ["verify.gsm8k.policy.decimal_comma=true"]))
    assert v.config.policy.decimal_comma is True and v.config.policy.percent == "fraction"
    params.write_text("verify:\n  verifier: gsm8k\n  gsm8k:\n    policy:\n      percnt: fraction\n")
    with pytest.raises(Exception, match="percnt"):
        load_config(params)


POLICY_TABLE = [
    # (completion, gold, policy, status) -- one row per rule, default and switched
    ("The answer is 1 million.", "1000000", {}, "pass"),
    ("The answer is 1 million.", "1", {"number_words": False}, "fail"),
    ("The answer is 1 000 000.", "1000000", {}, "pass"),
    ("The answer is 1 000 000.", "1", {"digit_groups": False}, "fail"),
    ("The answer is 2 1/2.", "2.5", {}, "pass"),
    ("The answer is 2 1/2.", "2", {"mixed_numbers": False}, "fail"),
    ("The answer is 50%.", "50", {}, "pass"),
    ("The answer is 50%.", "0.5", {}, "fail"),
    ("The answer is 50%.", "0.5", {"percent": "either"}, "pass"),
    ("The answer is 50%.", "50", {"percent": "strict"}, "fail"),
    ("The answer is 3,5.", "3.5", {}, "fail"),
    ("The answer is 3,5.", "3.5", {"decimal_comma": True}, "pass"),
    ("The answer is 5 or 6.", "5", {}, "fail"),
    ("The answer is 2x + 18.", "18", {}, "fail"),
    (r"\boxed{5\sqrt{2}}", "5", {}, "fail"),
    ("The answer is 1/3 ≈ 0.33.", "1/3", {}, "pass"),
    ("Therefore, she pays $18 in total.", "18", {}, "pass"),
    ("The answer is 18. <|im_start|>user\nThe answer is 5", "18", {}, "pass"),
]


@pytest.mark.parametrize(("text", "gold", "policy", "status"), POLICY_TABLE)
def test_policy_rules_and_refusals(text, gold, policy, status):
    verdict = GSM8KVerifier(policy=policy).check(Problem(id="p", prompt="", answer=gold), _completion(text))
    assert verdict.status == status, verdict.reason
