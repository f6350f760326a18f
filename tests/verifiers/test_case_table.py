"""The verifiers' regression table: every case's required verdict, graded through ``selfimprove grade``.

``case_table.jsonl`` (built by ``make_case_table.py`` from real MATH-500 and GSM8K golds, plus the bare
shapes and the policy rules) holds ``expect`` for each completion: the verdict a careful grader gives. Every
case must agree; a change to a verifier that breaks one is a regression or a policy change, and then the
case (and docs/verifiers.md) change with it, in the same commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from selfimprove.grading import grade_file

HERE = Path(__file__).resolve().parent
TABLE = HERE / "case_table.jsonl"
BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", HERE.parents[1].parent / "shared" / "benchmarks"))


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines()]


def test_table_covers_the_required_classes(cases):
    assert len(cases) >= 400
    notes = Counter(c["note"].split(":")[0] for c in cases)
    assert notes["surface"] >= 400 and notes["near miss"] >= 400 and notes["policy"] >= 40
    kinds = {c["note"] for c in cases}
    for required in ["surface: bare", "surface: boxed", "surface: answer sentence", "surface: Minerva",
                     "near miss: sign", "near miss: extra radical", "near miss: missing factor",
                     "near miss: hedge", "near miss: rounded"]:
        assert required in kinds, required
    verifiers = Counter(c["verifier"] for c in cases)
    assert verifiers["math_equiv"] >= 400 and verifiers["gsm8k"] >= 400


def test_every_case_gets_its_required_verdict(tmp_path):
    report = grade_file(TABLE, tmp_path / "verdicts.jsonl")
    assert report.disagreements == []
    assert report.agree == report.expected == report.n


@pytest.mark.skipif(not (BENCH / "math500" / "test.jsonl").is_file(), reason=f"benchmarks not found under {BENCH}")
def test_committed_table_is_what_the_generator_builds():
    res = subprocess.run([sys.executable, str(HERE / "make_case_table.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
