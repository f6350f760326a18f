"""Tests for the synthetic addition problem set: determinism, formats, difficulty, and no eval/train leak."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfimprove.problems import PROBLEM_SETS
from selfimprove.problems.arithmetic import ArithmeticProblems, operand_range


@pytest.fixture(scope="module")
def ps():
    return ArithmeticProblems()


def test_registered():
    assert PROBLEM_SETS.get("arithmetic") is ArithmeticProblems


def test_default_format_reversed_fixed_width(ps):
    p = ps.make_problem(123, 456, 3, "train")
    assert p.prompt == "321+654=" and p.answer == "9750"
    assert p.meta == {
        "a": 123,
        "b": 456,
        "sum": 579,
        "answer_regex": "[0-9]{3}[01]",
        "max_new_tokens": 4,
        "min_new_tokens": 4,
    }
    carry = ps.make_problem(999, 1, 3, "train")  # not a 3-digit operand pair, but the formatter does not care
    assert carry.answer == "0001"
    assert ps.make_problem(5, 7, 1, "train").answer == "21"
    assert ps.parse_answer("9750", 3) == 579 and ps.parse_answer("975", 3) is None
    assert ps.parse_answer("9752", 3) is None  # carry digit can only be 0 or 1


@pytest.mark.parametrize(
    "opts,prompt,answer,regex",
    [
        ({"answer_width": "natural"}, "321+654=", "975", "[0-9]{3}1?"),
        ({"reverse": False}, "123+456=", "0579", "[01][0-9]{3}"),
        ({"reverse": False, "answer_width": "natural"}, "123+456=", "579", "1?[0-9]{3}"),
    ],
)
def test_format_options(opts, prompt, answer, regex):
    p = ArithmeticProblems(**opts).make_problem(123, 456, 3, "train")
    assert (p.prompt, p.answer, p.meta["answer_regex"]) == (prompt, answer, regex)
    assert re.fullmatch(regex, answer)


@pytest.mark.parametrize("opts", [{}, {"answer_width": "natural"}, {"reverse": False}])
def test_every_gold_answer_matches_its_regex(opts):
    ps = ArithmeticProblems(**opts)
    for p in ps.labelled(200, [1, 2, 3, 4, 6], seed=1):
        assert re.fullmatch(p.meta["answer_regex"], p.answer), p
        assert p.solution == p.answer
        assert ps.parse_answer(p.answer, p.difficulty) == p.meta["a"] + p.meta["b"]


def test_difficulty_is_operand_digits(ps):
    for p in ps.training_pool(300, [1, 2, 5, 9], seed=0, round=1) + ps.eval_set(50, [1, 2, 5, 9], seed=0):
        lo, hi = operand_range(p.difficulty)
        assert lo <= p.meta["a"] <= hi and lo <= p.meta["b"] <= hi
        assert len(p.answer) == p.difficulty + 1  # fixed width
        assert len(p.prompt) == 2 * p.difficulty + 2


def test_deterministic(ps):
    assert ps.training_pool(100, [3, 4], 7, 2) == ArithmeticProblems().training_pool(100, [3, 4], 7, 2)
    assert ps.eval_set(100, [3, 4], 0) == ArithmeticProblems().eval_set(100, [3, 4], 0)
    assert ps.labelled(50, [1, 3], 5) == ArithmeticProblems().labelled(50, [1, 3], 5)
    assert ps.training_pool(100, [3], 7, 2) != ps.training_pool(100, [3], 7, 3)  # fresh problems per round
    assert ps.training_pool(100, [3], 7, 2) != ps.training_pool(100, [3], 8, 2)


def test_pool_sizes_and_unique_ids(ps):
    pool = ps.training_pool(1001, [3, 4, 5], seed=0, round=0)
    assert [sum(p.difficulty == d for p in pool) for d in (3, 4, 5)] == [334, 334, 333]
    assert len({p.id for p in pool}) == len(pool)
    lab = ps.labelled(500, [1, 2], seed=0)
    assert len(lab) == 1000 and len({p.id for p in lab}) == 1000  # 1-digit problems repeat with /rep<k> ids


def test_small_space_eval_set(ps):
    one = ps.eval_set(1000, [1], seed=0)
    all_pairs = [(a, b) for a in range(10) for b in range(10)]
    expected = {pair for pair in all_pairs if ps.is_eval_pair(*pair)}
    assert {(p.meta["a"], p.meta["b"]) for p in one} == expected
    assert 0 < len(one) < 100
    assert len(ps.eval_set(None, [2], seed=0)) == sum(
        ps.is_eval_pair(a, b) for a in range(10, 100) for b in range(10, 100)
    )
    # Training at 1 digit never returns more distinct problems than the partition has.
    assert len(ps.training_pool(500, [1], seed=0, round=0)) == 100 - len(one)


def test_partition_is_symmetric_and_near_fraction(ps):
    pairs = [(a, b) for a in range(100, 400) for b in range(500, 560)]
    share = sum(ps.is_eval_pair(a, b) for a, b in pairs) / len(pairs)
    assert 0.08 < share < 0.12
    assert all(ps.is_eval_pair(a, b) == ps.is_eval_pair(b, a) for a, b in pairs[:2000])


def test_swap_operands_view(ps):
    p = ps.make_problem(123, 456, 3, "train")
    v = ps.swap_operands(p)
    assert v.prompt == "654+321=" and v.answer == p.answer and v.id.endswith("/swap")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    rnd=st.integers(0, 50),
    digits=st.integers(1, 7),
    frac=st.sampled_from([0.05, 0.1, 0.5]),
)
def test_no_eval_problem_in_training(seed, rnd, digits, frac):
    ps = ArithmeticProblems(eval_fraction=frac)
    evals = {(p.meta["a"], p.meta["b"]) for p in ps.eval_set(300, [digits], seed=seed)}
    train = ps.training_pool(300, [digits], seed=seed, round=rnd) + ps.labelled(
        100, [digits], seed=seed + rnd
    )
    for p in train:
        a, b = p.meta["a"], p.meta["b"]
        assert not ps.is_eval_pair(a, b)
        assert (a, b) not in evals and (b, a) not in evals
        assert ps.swap_operands(p).meta["a"] == b and not ps.is_eval_pair(b, a)
    assert all(ps.is_eval_pair(a, b) for a, b in evals)


def test_load_splits(ps):
    small = ArithmeticProblems(default_difficulties=[2, 3], default_per_difficulty=20)
    assert len(small.load("test")) == 40 and len(small.load("train")) == 40
    with pytest.raises(ValueError, match="splits"):
        small.load("validation")


def test_bad_options():
    with pytest.raises(ValueError):
        ArithmeticProblems(answer_width="wide")
    with pytest.raises(ValueError):
        ArithmeticProblems(eval_fraction=0)
    with pytest.raises(ValueError):
        operand_range(0)


@settings(max_examples=50, deadline=None)
@given(digits=st.integers(2, 7), data=st.data())
def test_prefix_view_checks_the_low_digits(digits, data):
    """The truncated problem's gold answer is the full gold answer's first L-1 characters (reversed format), so
    the gold answer is always consistent with it, and an answer with a wrong low digit never is."""
    ps = ArithmeticProblems()
    lo, hi = operand_range(digits)
    a, b = data.draw(st.integers(lo, hi)), data.draw(st.integers(lo, hi))
    p = ps.make_problem(a, b, digits, "train")
    (v,) = ps.views(p, ["prefix"])
    ra, rb = p.prompt[:-1].split("+")
    assert v.prompt == f"{ra[:digits - 1]}+{rb[:digits - 1]}=" and v.difficulty == digits - 1
    assert v.meta["view_of"] == p.id and v.meta["view"] == "prefix" and v.id == f"{p.id}/prefix"
    assert re.fullmatch(v.meta["answer_regex"], v.answer) and v.meta["max_new_tokens"] == len(v.answer) == digits
    assert p.answer[: digits - 1] == v.answer[: digits - 1]
    assert ps.view_consistent(p, p.answer, v, v.answer)
    i = data.draw(st.integers(0, digits - 2))
    wrong = p.answer[:i] + str((int(p.answer[i]) + 1) % 10) + p.answer[i + 1:]
    assert not ps.view_consistent(p, wrong, v, v.answer)
    # the high digit and the carry are not covered by the prefix: the check cannot reject them
    high = p.answer[: digits - 1] + str((int(p.answer[digits - 1]) + 1) % 10) + p.answer[digits:]
    assert ps.view_consistent(p, high, v, v.answer)


def test_views_swap_groups_with_the_original_and_unknown_kinds_are_named(ps):
    p = ps.make_problem(123, 456, 3, "train")
    (s,) = ps.views(p, ["swap"])
    assert s.prompt == "654+321=" and s.meta["group"] == p.id and s.meta["view"] == "swap"
    assert ps.view_consistent(p, p.answer, s, s.answer) and not ps.view_consistent(p, p.answer, s, "0000")
    assert ps.views(ps.make_problem(3, 4, 1, "train"), ["prefix"]) == []  # nothing to truncate at L = 1
    with pytest.raises(ValueError, match=r"offers the views \['prefix', 'swap'\], not \['mirror'\]"):
        ps.views(p, ["prefix", "mirror"])
    with pytest.raises(ValueError, match="needs reverse: true"):
        ArithmeticProblems(reverse=False).views(ps.make_problem(12, 34, 2, "train"), ["prefix"])
