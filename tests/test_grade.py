"""``selfimprove grade``: the pure ``grade_file`` and its Typer command, on records and on loop samples.

Covers routing by verifier name, one ``verify`` call per verifier (batch verifiers see every record at once),
verdict order, the summary, atomic output, and errors that name the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from selfimprove.cli_grade import grade_app
from selfimprove.grading import default_out, grade_file
from selfimprove.io import DataError, read_jsonl, write_jsonl
from selfimprove.problems.gsm8k import GSM8KProblems
from selfimprove.types import Completion, Verdict
from selfimprove.verifiers import VERIFIERS, Verifier

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
runner = CliRunner()


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


RECORDS = [
    {"id": "g1", "verifier": "gsm8k", "gold": 18, "completion": "9 * 2 = 18 dollars.\n#### 18"},
    {"id": "g2", "verifier": "gsm8k", "gold": "1,080", "completion": "The answer is $1,070."},
    {"id": "m1", "verifier": "math_equiv", "gold": r"\frac{1}{2}", "completion": r"So $\boxed{0.5}$."},
    {"id": "m2", "verifier": "math_equiv", "gold": "3", "completion": "I could not finish"},
    {"id": "e1", "verifier": "exact_match", "gold": "yes", "completion": " yes\n"},
    {"id": "g3", "gold": "7", "completion": "#### 7"},  # no verifier: the --verifier default applies
]


def test_records_graded_in_order_with_summary(tmp_path):
    src = _write(tmp_path / "outputs.jsonl", RECORDS)
    report = grade_file(src, verifier="gsm8k")
    out = default_out(src)
    assert report.out == str(out) and out.name == "outputs.verdicts.jsonl"
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["g1", "g2", "m1", "m2", "e1", "g3"]
    assert [(r["verifier"], r["passed"], r["status"], r["answer"]) for r in rows] == [
        ("gsm8k", True, "pass", "18"),
        ("gsm8k", False, "fail", "1070"),
        ("math_equiv", True, "pass", "0.5"),
        ("math_equiv", False, "no_answer", None),
        ("exact_match", True, "pass", "yes"),
        ("gsm8k", True, "pass", "7"),
    ]
    for r in rows:  # every row is a Verdict plus its id
        Verdict.model_validate({k: v for k, v in r.items() if k != "id"})
        assert set(r) >= {"id", "verifier", "passed", "score", "status", "answer", "reason"}
    summary = json.loads(Path(report.summary_path).read_text())
    assert summary["n"] == 6 and summary["passed"] == 4 and summary["format"] == "records"
    assert summary["by_verifier"]["gsm8k"] == {
        "n": 3,
        "passed": 2,
        "status": {"pass": 2, "fail": 1},
        "accuracy": 2 / 3,
        "expected": 0,
        "agree": 0,
    }
    assert summary["by_verifier"]["math_equiv"]["status"] == {"pass": 1, "no_answer": 1}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


class _CountingVerifier(Verifier):
    """A batch verifier stand-in: records how it was called, passes completions that contain the gold."""

    name: ClassVar[str] = "counting"
    calls: ClassVar[list[list[str]]] = []

    def verify(self, problems, completions):
        type(self).calls.append([c.id for c in completions])
        return [
            Verdict(
                sample_id=c.id,
                problem_id=c.problem_id,
                round=c.round,
                verifier=self.name,
                passed=(problems[c.problem_id].answer or "") in c.text,
                score=1.0,
                status="pass",
            )
            for c in completions
        ]


@pytest.fixture
def counting(monkeypatch):
    _CountingVerifier.calls = []
    monkeypatch.setitem(VERIFIERS._entries, "counting", _CountingVerifier)
    return _CountingVerifier


def test_each_verifier_gets_all_its_records_in_one_call(tmp_path, counting):
    rows = []
    for i in range(5):
        rows.append({"id": f"c{i}", "verifier": "counting", "gold": str(i), "completion": f"answer {i}"})
        rows.append({"id": f"x{i}", "verifier": "exact_match", "gold": str(i), "completion": str(i)})
    report = grade_file(_write(tmp_path / "in.jsonl", rows), tmp_path / "v.jsonl")
    assert counting.calls == [[f"c{i}" for i in range(5)]]
    assert [r["id"] for r in read_jsonl(tmp_path / "v.jsonl")] == [r["id"] for r in rows]
    assert report.by_verifier["counting"].n == 5 and report.by_verifier["exact_match"].passed == 5


def test_code_records_carry_tests_to_the_verifier(tmp_path, counting):
    tests = {
        "format": "asserts",
        "asserts": ["assert f() == 1"],
        "challenge_asserts": [],
        "setup": "",
        "imports": [],
    }
    src = _write(
        tmp_path / "in.jsonl",
        [{"id": "k", "verifier": "counting", "tests": tests, "completion": "def f(): ..."}],
    )
    report = grade_file(src)
    assert report.n == 1 and counting.calls == [["k"]]


def test_samples_file_with_sibling_problems(tmp_path):
    problems = GSM8KProblems(data_dir=str(FIXTURES / "gsm8k")).load("test")
    write_jsonl(tmp_path / "problems.jsonl", problems)
    completions = []
    for p in problems:
        for k, text in enumerate([p.solution or "", "#### 0"]):
            completions.append(
                Completion(id=f"{p.id}#{k}", problem_id=p.id, round=1, sample_idx=k, text=text)
            )
    write_jsonl(tmp_path / "samples.jsonl", completions)
    report = grade_file(tmp_path / "samples.jsonl")
    assert report.format == "samples" and (report.n, report.passed) == (8, 4)
    rows = read_jsonl(tmp_path / "samples.verdicts.jsonl")
    assert [r["id"] for r in rows] == [c.id for c in completions] and {r["round"] for r in rows} == {1}
    # --verifier overrides the problems' own verifier
    strict = grade_file(tmp_path / "samples.jsonl", tmp_path / "strict.jsonl", verifier="exact_match")
    assert strict.passed == 0 and set(strict.by_verifier) == {"exact_match"}


# (input rows, fragment of the error, line named) -- every error stops before any verifier runs.
BAD_INPUTS = [
    (['{"completion": "x", "verifier": "gsm8k", "gold": 1', "{}"], "malformed JSON", 1),
    ([{"completion": "x", "gold": 1}], "no verifier: add a 'verifier' key", 1),
    (
        [{"completion": "x", "gold": 1, "verifier": "gsm8"}],
        "unknown verifier 'gsm8'; did you mean 'gsm8k'?",
        1,
    ),
    ([RECORDS[0], {"completion": "x", "verifier": "gsm8k"}], "add 'gold' (an answer) or 'tests'", 2),
    ([{"completion": 3, "verifier": "gsm8k", "gold": 1}], "'completion' must be a string", 1),
    (
        [{"completion": "x", "verifier": "gsm8k", "gold": [1]}],
        "'gold' must be a string or a finite number",
        1,
    ),
    ([{"completion": "x", "verifier": "gsm8k", "glod": 1}], "unknown key 'glod'; did you mean 'gold'?", 1),
    (
        [{"completion": "x", "verifier": "gsm8k", "gold": 1, "tests": "assert 1"}],
        "'tests' must be an object",
        1,
    ),
    ([RECORDS[0], RECORDS[0]], "duplicate id 'g1'", 2),
    (
        [
            {
                "id": "a",
                "completion": "x",
                "verifier": "gsm8k",
                "problem": {"id": "p", "prompt": "q", "answer": "1"},
            },
            {
                "id": "b",
                "completion": "x",
                "verifier": "gsm8k",
                "problem": {"id": "p", "prompt": "q", "answer": "2"},
            },
        ],
        "problem 'p' differs",
        2,
    ),
    (
        [{"completion": "x", "verifier": "gsm8k", "problem": {"id": "p", "prompt": "q", "anser": "1"}}],
        "invalid problem",
        1,
    ),
]


@pytest.mark.parametrize(("rows", "message", "line"), BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, counting, rows, message, line):
    src = _write(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError) as e:
        grade_file(src)
    assert str(e.value).startswith(f"{src}:{line}: ") and message in str(e.value)
    assert counting.calls == [] and not default_out(src).exists()


def test_samples_without_problems_file(tmp_path):
    c = Completion(id="p#0", problem_id="p", round=0, sample_idx=0, text="x")
    write_jsonl(tmp_path / "samples.jsonl", [c])
    with pytest.raises(DataError, match="problems.jsonl is missing: pass --problems"):
        grade_file(tmp_path / "samples.jsonl")
    with pytest.raises(DataError, match="would overwrite the input"):
        grade_file(tmp_path / "samples.jsonl", tmp_path / "samples.jsonl")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_json_summary(tmp_path):
    src = _write(tmp_path / "outputs.jsonl", [r for r in RECORDS if r.get("verifier") != "math_equiv"])
    result = runner.invoke(
        grade_app, [str(src), "--verifier", "gsm8k", "--json", "-o", str(tmp_path / "v.jsonl")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["passed"], summary["out"]) == (4, 3, str(tmp_path / "v.jsonl"))
    assert len(read_jsonl(tmp_path / "v.jsonl")) == 4


def test_cli_table_and_verifier_options(tmp_path):
    src = _write(tmp_path / "outputs.jsonl", [{"id": "a", "gold": "7", "completion": "so 7"}])
    ok = runner.invoke(grade_app, [str(src), "-v", "gsm8k"])
    assert ok.exit_code == 0 and "gsm8k" in ok.stdout and "1.000" in ok.stdout
    strict = runner.invoke(grade_app, [str(src), "-v", "gsm8k", "-S", "gsm8k.fallback=none", "--json"])
    assert strict.exit_code == 0 and json.loads(strict.stdout)["by_verifier"]["gsm8k"]["status"] == {
        "no_answer": 1
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-v", "gsm8"], "did you mean 'gsm8k'?"),
        (["-v", "gsm8k", "-S", "gsm8k.fallbak=none"], "fallbak"),
        (["-v", "gsm8k", "-S", "fallback"], "VERIFIER.OPTION=VALUE"),
    ],
)
def test_cli_errors_exit_nonzero_with_a_message(tmp_path, args, message):
    src = _write(tmp_path / "outputs.jsonl", [{"id": "a", "gold": "7", "completion": "so 7"}])
    result = runner.invoke(grade_app, [str(src), *args])
    assert result.exit_code != 0 and message in result.output


def test_cli_bad_line_is_named(tmp_path):
    src = _write(tmp_path / "outputs.jsonl", [RECORDS[0], "{not json"])
    result = runner.invoke(grade_app, [str(src)])
    assert result.exit_code == 1
    assert f"{src}:2: malformed JSON" in result.stderr.replace("\n", "")


def test_expected_verdicts_and_per_record_options(tmp_path):
    """A table of required verdicts: agreement counted, disagreements listed with file and line; a record's
    own options (a grading policy) laid over the command line's."""
    rows = [
        {"id": "a", "verifier": "gsm8k", "gold": "50", "completion": "The answer is 50%.", "expect": "pass"},
        {"id": "b", "verifier": "gsm8k", "gold": "0.5", "completion": "The answer is 50%.", "expect": "pass",
         "options": {"policy": {"percent": "fraction"}}, "note": "a percentage as its fraction, declared"},
        {"id": "c", "verifier": "gsm8k", "gold": "0.5", "completion": "The answer is 50%.", "expect": True},
        {"id": "d", "verifier": "gsm8k", "gold": "5", "completion": "The answer is 5 or 6.", "expect": False},
    ]
    src = _write(tmp_path / "table.jsonl", rows)
    report = grade_file(src)
    out = read_jsonl(default_out(src))
    assert [(r["status"], r["agrees"]) for r in out] == [("pass", True), ("pass", True), ("fail", False),
                                                         ("fail", True)]
    assert "percent=fraction" in out[1]["reason"] and "percent=label" in out[2]["reason"]
    assert "hedged" in out[3]["reason"]
    assert (report.expected, report.agree) == (4, 3)
    assert report.disagreements == [
        {"id": "c", "where": f"{src}:3", "expect": "pass", "status": "fail", "reason": out[2]["reason"]}
    ]
    # options from the command line apply to every record; the record's own win key by key
    report = grade_file(src, verifier_options={"gsm8k": {"policy": {"percent": "either"}}})
    assert report.agree == 4


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"completion": "1", "gold": "1", "verifier": "gsm8k", "expect": "maybe"}, "'expect' must be"),
        ({"completion": "1", "gold": "1", "verifier": "gsm8k", "options": [1]}, "'options' must be an object"),
        ({"completion": "1", "gold": "1", "verifier": "gsm8k", "options": {"policy": {"percnt": "x"}}},
         "table.jsonl:1: invalid gsm8k options: policy.percnt"),
    ],
)
def test_bad_expect_and_options_are_named(tmp_path, row, message):
    src = _write(tmp_path / "table.jsonl", [row])
    with pytest.raises(DataError, match=message):
        grade_file(src)


def test_cli_nested_option_and_agreement_line(tmp_path):
    src = _write(
        tmp_path / "t.jsonl",
        [{"verifier": "gsm8k", "gold": "0.5", "completion": "The answer is 50%.", "expect": "pass"}],
    )
    res = runner.invoke(grade_app, [str(src), "-S", "gsm8k.policy.percent=fraction"])
    assert res.exit_code == 0, res.output
    assert "agreement with 'expect': 1/1" in " ".join(res.output.split())
    res = runner.invoke(grade_app, [str(src)])
    flat = "".join(res.output.split())  # rich wraps long lines at the terminal width, inside long paths too
    assert "agreementwith'expect':0/1" in flat and "t.jsonl:1id=line1:expectedpass,gotfail" in flat
