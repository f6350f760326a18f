"""Model-written code tasks are checked in the sandbox: the reference passes twice, a mutant fails, tests call it."""

from __future__ import annotations

import os
import shutil

import pytest

from selfimprove.problems.code_proposals import check_code_proposals, mutants, parse_code_proposal

HAVE_BWRAP = bool(shutil.which("bwrap") or os.path.exists("/usr/bin/bwrap"))
TEMPLATE = '"""\n{text}\n{example}\n"""\n'


def proposal(code: str, tests: str, task: str = "Write a function to add one to every element of a list.") -> str:
    return f"Sure, here is a new task.\nTask: {task}\n```python\n{code}\n```\nTests:\n```python\n{tests}\n```\n"


GOOD = proposal("def add_one(xs):\n    return [x + 1 for x in xs]",
                "assert add_one([1, 2]) == [2, 3]\nassert add_one([]) == []")
CHECKS_NOTHING = proposal("def add_one(xs):\n    return [x + 1 for x in xs]",
                          "assert add_one([1, 2]) == add_one([1, 2])\nassert isinstance(add_one([]), list) or True")
WRONG_REFERENCE = proposal("def add_one(xs):\n    return [x + 2 for x in xs]", "assert add_one([1, 2]) == [2, 3]")
RANDOM = proposal("import random\ndef pick(xs):\n    return random.choice(xs)", "assert pick([1]) == 1")
IGNORES = proposal("def add_one(xs):\n    return [x + 1 for x in xs]", "assert sorted([2, 1]) == [1, 2]")


def test_mutants_change_one_thing_each() -> None:
    ms = mutants("def f(x, y):\n    if x > y:\n        return x - y\n    return y * 2")
    assert ms and all(m != "def f(x, y):\n    if x > y:\n        return x - y\n    return y * 2" for m in ms)
    assert any("return None" in m for m in ms) and any("x <= y" in m for m in ms) and any("x + y" in m for m in ms)


def test_what_needs_no_execution_is_refused_before_the_sandbox() -> None:
    assert parse_code_proposal("Task: nothing here", 1, TEMPLATE, "mbpp").reason == "malformed"
    assert parse_code_proposal(RANDOM, 1, TEMPLATE, "mbpp").reason == "nondeterministic_import"
    assert parse_code_proposal(IGNORES, 1, TEMPLATE, "mbpp").reason == "tests_ignore_function"
    good = parse_code_proposal(GOOD, 1, TEMPLATE, "mbpp")
    assert good.reason is None and good.problem.tests["entry_point"] == "add_one"
    assert good.problem.solution.startswith("def add_one") and good.label_source == "execution"


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed (apt-get install bubblewrap)")
def test_the_sandbox_rejects_tests_that_check_nothing_and_wrong_references() -> None:
    parsed = [parse_code_proposal(t, 1, TEMPLATE, "mbpp") for t in (GOOD, CHECKS_NOTHING, WRONG_REFERENCE)]
    check_code_proposals(parsed, {"workers": 1})
    good, nothing, wrong = parsed
    assert good.reason is None and good.checks == {"parsed": True, "deterministic_imports": True,
                                                   "tests_reference_function": True, "reference_passes": True,
                                                   "deterministic": True, "mutant_fails": True}
    assert nothing.reason == "tests_check_nothing" and nothing.checks["reference_passes"]
    assert not nothing.checks["mutant_fails"]
    assert wrong.reason == "reference_fails"
