"""Benchmark problem sets (gsm8k, math500, mbpp, humaneval) and the schema-checked jsonl set.

Loaders are tested on the fixtures in ``tests/fixtures/benchmarks`` (real rows, always present) for the exact
fields and test schemas, and on the full data (``$SELFIMPROVE_BENCHMARKS_DIR``, default
``../shared/benchmarks``) for counts and splits. Error messages are part of the contract: every one names the
file (and line) and says what to change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.io import DataError
from selfimprove.problems import PROBLEM_SETS
from selfimprove.problems.gsm8k import GSM8KProblems
from selfimprove.problems.humaneval import HumanEvalProblems
from selfimprove.problems.jsonl import BENCHMARKS_ENV, JsonlProblems
from selfimprove.problems.math500 import Math500Problems
from selfimprove.problems.mbpp import MBPPProblems, split_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
BENCH = Path(
    os.environ.get(
        "SELFIMPROVE_BENCHMARKS_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
    )
)
needs_data = pytest.mark.skipif(
    not all((BENCH / f).is_file() for f in ("gsm8k/test.jsonl", "math500/test.jsonl", "mbpp/mbpp.jsonl")),
    reason=f"benchmark data not found under {BENCH}",
)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("gsm8k", GSM8KProblems),
        ("math500", Math500Problems),
        ("mbpp", MBPPProblems),
        ("humaneval", HumanEvalProblems),
        ("jsonl", JsonlProblems),
    ],
)
def test_registered(name, cls):
    assert PROBLEM_SETS.get(name) is cls


# ------------------------------------------------------------------------------------------------- GSM8K


def test_gsm8k_fields_on_fixture():
    ps = GSM8KProblems(data_dir=str(FIXTURES / "gsm8k"))
    test = ps.load("test")
    p = test[0]
    assert p.id == "gsm8k/test/0" and p.source == "gsm8k" and p.verifier == "gsm8k"
    assert p.prompt.startswith("Question: Janet") and p.prompt.endswith("\nAnswer:")
    assert p.answer == "18"
    assert p.solution == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n#### 18"
    )  # calculator annotations <<16-3-4=9>> removed
    assert p.difficulty == 2 and p.meta == {"question": p.meta["question"], "split": "test", "index": 0}
    assert test[-1].answer == "2125"  # '#### 2,125' normalised
    assert [q.answer for q in ps.load("train")][-1] == "-7"
    assert ps.splits() == ["train", "test"]


def test_gsm8k_options():
    ps = GSM8KProblems(
        data_dir=str(FIXTURES / "gsm8k"),
        prompt_template="Q: {question}\nA: Let's think.",
        keep_calculator_annotations=True,
    )
    p = ps.load("test")[0]
    assert p.prompt.startswith("Q: Janet") and "<<16-3-4=9>>" in (p.solution or "")
    with pytest.raises(ValueError, match="prompt_template"):
        GSM8KProblems(prompt_template="{q}")
    with pytest.raises(ValidationError, match="data_dri"):
        GSM8KProblems(data_dri="x")


def test_gsm8k_default_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(BENCHMARKS_ENV, str(FIXTURES))
    assert len(GSM8KProblems().load("train")) == 4
    monkeypatch.setenv(BENCHMARKS_ENV, str(tmp_path))
    with pytest.raises(DataError) as e:
        GSM8KProblems().load("train")
    msg = str(e.value)
    assert str(tmp_path / "gsm8k" / "train.jsonl") in msg and "set problems.gsm8k.data_dir" in msg


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q"}', "no 'answer' field"),
        ('{"question": 3, "answer": "x\\n#### 3"}', "field 'question' must be a string"),
        ('{"question": "q", "answer": "no final line"}', "exactly one '#### <number>'"),
        ('{"question": "q", "answer": "a\\n#### seven"}', "is not a number"),
        ('{"question": "q", "answer": "a\\n#### 7"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_gsm8k_bad_rows_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    (tmp_path / "test.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=message) as e:
        GSM8KProblems(data_dir=str(tmp_path)).load("test")
    assert f"{tmp_path / 'test.jsonl'}:2" in str(e.value)


def test_gsm8k_unknown_split():
    with pytest.raises(DataError, match="no split 'dev'"):
        GSM8KProblems(data_dir=str(FIXTURES / "gsm8k")).load("dev")


# --------------------------------------------------------------------------------------------- MATH-500


def test_math500_fields_on_fixture():
    ps = Math500Problems(data_dir=str(FIXTURES / "math500"))
    p = ps.load("test")[0]
    assert p.id == "math500/test/precalculus/807" and p.verifier == "math_equiv" and p.source == "math500"
    assert p.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert p.difficulty == 2
    assert p.meta == {"subject": "Precalculus", "unique_id": "test/precalculus/807.json"}
    assert p.prompt.startswith("Problem:\nConvert the point") and p.prompt.endswith("\n\nSolution:")
    assert p.solution is not None and r"\boxed{\left( 3, \frac{\pi}{2} \right)}" in p.solution
    assert Math500Problems(path=str(FIXTURES / "math500" / "test.jsonl")).load("test")[0] == p


def test_math500_has_no_training_split():
    ps = Math500Problems(data_dir=str(FIXTURES / "math500"))
    with pytest.raises(DataError, match="only a 'test' split"):
        ps.training_pool(10, None, 0, 1)
    assert [q.difficulty for q in ps.eval_set(1, [1, 2, 3, 4, 5], 0)] == sorted(
        {q.difficulty for q in ps.load("test")}
    )


def test_math500_missing_file_says_what_to_set(tmp_path):
    with pytest.raises(
        DataError, match=r"MATH-500 data not found at .*test.jsonl: set problems.math500.data_dir"
    ):
        Math500Problems(data_dir=str(tmp_path)).load("test")


def test_math500_bad_level(tmp_path):
    row = json.loads((FIXTURES / "math500" / "test.jsonl").read_text().splitlines()[0])
    row["level"] = "Level 2"
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: field 'level' must be an integer, got str"):
        Math500Problems(data_dir=str(tmp_path)).load("test")


# ------------------------------------------------------------------------------------------------- MBPP


@pytest.mark.parametrize(
    ("task_id", "split"),
    [
        (1, "prompt"),
        (10, "prompt"),
        (11, "test"),
        (510, "test"),
        (511, "validation"),
        (600, "validation"),
        (601, "train"),
        (974, "train"),
        (0, None),
        (975, None),
    ],
)
def test_mbpp_split_ranges(task_id, split):
    assert split_of(task_id) == split


def test_mbpp_full_fields_on_fixture():
    ps = MBPPProblems(data_dir=str(FIXTURES / "mbpp"))
    by_split = {s: [p.meta["task_id"] for p in ps.load(s)] for s in ps.splits()}
    assert by_split == {"prompt": [1, 2], "test": [11, 16, 367], "validation": [511], "train": [601, 974]}
    p = ps.load("test")[0]
    assert p.id == "mbpp/full/11" and p.verifier == "sandboxed_tests" and p.answer is None
    assert p.prompt == (
        '"""\nWrite a python function to remove first and last occurrence of a given character from the string.\n'
        'assert remove_Occ("hello","l") == "heo"\n"""\n'
    )
    assert p.tests == {
        "format": "asserts",
        "asserts": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "challenge_asserts": [
            'assert remove_Occ("hellolloll","l") == "helollol"',
            'assert remove_Occ("","l") == ""',
        ],
        "setup": "",
        "imports": [],
    }
    assert (
        p.solution is not None and "\r" not in p.solution and p.solution.startswith("def remove_Occ(s,ch):")
    )
    assert p.meta == {"task_id": 11, "variant": "full", "split": "test", "entry_point": "remove_Occ"}
    with_setup = ps.load("test")[2]
    assert with_setup.tests is not None and with_setup.tests["setup"].startswith("root = Node(1) \nroot.left")
    assert "\r" not in with_setup.tests["setup"]


def test_mbpp_sanitized_fields_on_fixture():
    ps = MBPPProblems(variant="sanitized", data_dir=str(FIXTURES / "mbpp"))
    by_split = {s: [p.meta["task_id"] for p in ps.load(s)] for s in ps.splits()}
    assert by_split == {"prompt": [2], "test": [11, 82], "validation": [554], "train": [602]}
    p = ps.load("test")[1]
    assert p.id == "mbpp/sanitized/82" and p.tests is not None and p.tests["imports"] == ["import math"]
    assert p.tests["challenge_asserts"] == [] and p.tests["setup"] == ""
    assert p.meta["source_file"] and p.meta["entry_point"] == "volume_sphere"


def test_mbpp_wrong_file_for_variant(tmp_path):
    (tmp_path / "sanitized-mbpp.json").write_text((FIXTURES / "mbpp" / "mbpp.jsonl").read_text())
    with pytest.raises(DataError, match="malformed JSON|JSON array"):
        MBPPProblems(variant="sanitized", data_dir=str(tmp_path)).load("test")
    with pytest.raises(DataError, match="set problems.mbpp.data_dir"):
        MBPPProblems(data_dir=str(tmp_path)).load("test")


# -------------------------------------------------------------------------------------------- HumanEval


def test_humaneval_fields_on_fixture():
    ps = HumanEvalProblems(data_dir=str(FIXTURES / "humaneval"))
    rows = [
        json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").read_text().splitlines()
    ]
    problems = ps.load("test")
    assert [p.id for p in problems] == [f"humaneval/{r['task_id'].split('/')[1]}" for r in rows]
    assert [p.id for p in problems][:2] == ["humaneval/0", "humaneval/1"]
    for p, row in zip(problems, rows, strict=True):
        assert p.prompt == row["prompt"] and p.answer is None and p.verifier == "sandboxed_tests"
        assert p.tests == {
            "format": "humaneval",
            "prompt": row["prompt"],
            "test": row["test"],
            "entry_point": row["entry_point"],
        }
        assert p.solution == row["prompt"] + row["canonical_solution"]
        assert p.meta == {"task_id": row["task_id"], "entry_point": row["entry_point"]}
    with pytest.raises(DataError, match="only a 'test' split"):
        ps.load("train")


# ----------------------------------------------------------------------------------------- full data


@needs_data
def test_counts_and_splits_on_the_full_data():
    counts = {
        "gsm8k": {s: len(GSM8KProblems(data_dir=str(BENCH / "gsm8k")).load(s)) for s in ("train", "test")},
        "math500": len(Math500Problems(data_dir=str(BENCH / "math500")).load("test")),
        "mbpp": {
            s: len(MBPPProblems(data_dir=str(BENCH / "mbpp")).load(s))
            for s in ("prompt", "test", "validation", "train")
        },
        "mbpp_sanitized": {
            s: len(MBPPProblems(variant="sanitized", data_dir=str(BENCH / "mbpp")).load(s))
            for s in ("prompt", "test", "validation", "train")
        },
        "humaneval": len(HumanEvalProblems(data_dir=str(BENCH / "humaneval")).load("test")),
    }
    assert counts == {
        "gsm8k": {"train": 7473, "test": 1319},
        "math500": 500,
        "mbpp": {"prompt": 10, "test": 500, "validation": 90, "train": 374},
        "mbpp_sanitized": {"prompt": 7, "test": 257, "validation": 43, "train": 120},
        "humaneval": 164,
    }


@needs_data
def test_full_data_invariants():
    math500 = Math500Problems(data_dir=str(BENCH / "math500")).load("test")
    assert {p.difficulty for p in math500} == {1, 2, 3, 4, 5}
    assert len({p.id for p in math500}) == 500
    for variant in ("full", "sanitized"):
        ps = MBPPProblems(variant=variant, data_dir=str(BENCH / "mbpp"))
        problems = [p for s in ps.splits() for p in ps.load(s)]
        assert all("entry_point" in p.meta for p in problems)  # derivable for every task of both variants
        assert all(p.solution and "\r" not in p.solution for p in problems)
    gsm8k = GSM8KProblems(data_dir=str(BENCH / "gsm8k"))
    train_ids = {p.id for p in gsm8k.training_pool(0, None, 0, 1)}
    assert train_ids.isdisjoint(p.id for p in gsm8k.eval_set(None, None, 0))
    assert all(p.solution and "<<" not in p.solution for p in gsm8k.load("test"))


# ------------------------------------------------------------------------------------------------ jsonl


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_single_file_is_one_split(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "1+1=", "answer": "2", "difficulty": 1},
            {"id": 7, "prompt": "2+2=", "answer": 4, "meta": {"k": 1}, "verifier": "gsm8k"},
        ],
    )
    ps = JsonlProblems(path=str(f))
    a, b = ps.load("train")
    assert (a.id, a.answer, a.verifier, a.source, a.difficulty) == ("a", "2", "exact_match", "jsonl", 1)
    assert (b.id, b.answer, b.verifier, b.meta) == ("7", "4", "gsm8k", {"k": 1})
    assert ps.splits() == ["train"]
    with pytest.raises(DataError, match="no split 'test'"):
        ps.load("test")
    assert (
        JsonlProblems(path=str(f), split="test", verifier="math_equiv", name="mine").load("test")[0].source
        == "mine"
    )


def test_jsonl_split_field_and_mapping(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "x", "answer": "1", "split": "train"},
            {"id": "b", "prompt": "y", "answer": "2", "split": "test"},
            {"id": "c", "prompt": "z", "answer": "3", "split": "train", "difficulty": 2},
        ],
    )
    ps = JsonlProblems(path=str(f), split_field="split")
    assert [p.id for p in ps.load("train")] == ["a", "c"] and [p.id for p in ps.load("test")] == ["b"]
    assert [p.id for p in ps.training_pool(0, [2], 0, 1)] == ["c"]
    tr = _write(tmp_path / "tr.jsonl", [{"id": "a", "prompt": "x", "answer": "1"}])
    te = _write(tmp_path / "te.jsonl", [{"id": "b", "prompt": "y", "answer": "2"}])
    for mapped in (
        JsonlProblems(splits={"train": str(tr), "test": str(te)}),
        JsonlProblems(path={"test": str(te)}),
    ):
        assert mapped.load("test")[0].id == "b"
    # the shape the typed config dumps (problems.jsonl: path / splits / split_field)
    dumped = JsonlProblems(path=None, splits={"train": str(tr), "test": str(te)}, split_field=None)
    assert sorted(dumped.splits()) == ["test", "train"]


def test_jsonl_duplicate_ids_across_files_are_rejected(tmp_path):
    tr = _write(tmp_path / "tr.jsonl", [{"id": "a", "prompt": "x", "answer": "1"}])
    te = _write(
        tmp_path / "te.jsonl",
        [{"id": "z", "prompt": "y", "answer": "2"}, {"id": "a", "prompt": "x", "answer": "1"}],
    )
    with pytest.raises(DataError) as e:
        JsonlProblems(path={"train": str(tr), "test": str(te)}).load("train")
    assert f"{te}:2: duplicate id 'a' (first at {tr}:1)" in str(e.value)


def test_jsonl_unlabelled_pool(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
    with pytest.raises(DataError, match="require_answer: false"):
        JsonlProblems(path=str(f)).load("train")
    assert JsonlProblems(path=str(f), require_answer=False).load("train")[0].answer is None


# (row, fragment of the error) -- each error must also name file:line 2 (line 1 is a good row).
BAD_JSONL_ROWS = [
    ({"prompt": "x", "answer": "1"}, "no 'id' field"),
    ({"id": "", "prompt": "x", "answer": "1"}, "field 'id' is empty"),
    ({"id": True, "prompt": "x", "answer": "1"}, "field 'id' must be a string or an integer, got bool"),
    ({"id": "b", "answer": "1"}, "no 'prompt' field"),
    ({"id": "b", "prompt": "  ", "answer": "1"}, "field 'prompt' is empty"),
    ({"id": "b", "prompt": "x"}, "has no 'answer'"),
    ({"id": "b", "prompt": "x", "answer": ["1"]}, "field 'answer' must be a string or number, got list"),
    ({"id": "b", "prompt": "x", "answer": True}, "field 'answer' must be a string or number, got bool"),
    ({"id": "b", "prompt": "x", "answr": "1"}, "unknown field 'answr'; did you mean 'answer'?"),
    (
        {"id": "b", "prompt": "x", "answer": "1", "difficulty": "hard"},
        "field 'difficulty' must be an integer",
    ),
    ({"id": "b", "prompt": "x", "answer": "1", "difficulty": 1.5}, "field 'difficulty' must be an integer"),
    ({"id": "b", "prompt": "x", "answer": "1", "tests": ["assert f()"]}, "field 'tests' must be an object"),
    ({"id": "b", "prompt": "x", "answer": "1", "meta": "m"}, "field 'meta' must be an object"),
    (
        {"id": "b", "prompt": "x", "answer": "1", "verifier": "gsm8"},
        "unknown verifier 'gsm8'; did you mean 'gsm8k'?",
    ),
    ({"id": "a", "prompt": "x", "answer": "1"}, "duplicate id 'a'"),
    ("[1]", "expected a JSON object"),
    ('{"id": "b", "prompt": "x", "answer": NaN}', "non-finite number"),
    ('{"id": "b", "id": "c", "prompt": "x", "answer": "1"}', "duplicate key 'id'"),
    ('{"id": "b", "prompt": "x", "answer": "1"', "malformed JSON"),
]


@pytest.mark.parametrize(("row", "message"), BAD_JSONL_ROWS)
def test_jsonl_bad_rows_name_file_line_and_field(tmp_path, row, message):
    f = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "answer": "1"}, row])
    with pytest.raises(DataError) as e:
        JsonlProblems(path=str(f)).load("train")
    assert str(e.value).startswith(f"{f}:2: ") and message in str(e.value)


def test_jsonl_bad_split_field_value(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "answer": "1", "split": 3}])
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'split' \(problems.jsonl.split_field\)"):
        JsonlProblems(path=str(f), split_field="split").load("train")


def test_jsonl_configuration_errors(tmp_path):
    with pytest.raises(DataError, match="file not found; set problems.jsonl.path"):
        JsonlProblems(path=str(tmp_path / "missing.jsonl")).load("train")
    with pytest.raises(ValueError, match="split_field applies to a single file"):
        JsonlProblems(splits={"train": "a.jsonl"}, split_field="split")
    with pytest.raises(ValueError, match="not both"):
        JsonlProblems(path="a.jsonl", splits={"train": "a.jsonl"})
    with pytest.raises(ValueError, match="not neither"):
        JsonlProblems()
    with pytest.raises(DataError, match="set problems.jsonl.splits"):
        JsonlProblems(splits={"test": str(tmp_path / "missing.jsonl")}).load("test")
    with pytest.raises(DataError, match="unknown verifier"):
        JsonlProblems(path="a.jsonl", verifier="nope")
    with pytest.raises(ValidationError, match="split_fild"):
        JsonlProblems(path="a.jsonl", split_fild="split")


@needs_data
@pytest.mark.slow
def test_gold_code_solutions_pass_the_sandboxed_verifier():
    """The ``tests`` schema is what the code verifier consumes: every gold solution passes (~10 s, bwrap)."""
    from selfimprove.types import Completion
    from selfimprove.verifiers import make_verifier

    problems = [
        p
        for v in ("full", "sanitized")
        for s in ("prompt", "test", "validation", "train")
        for p in MBPPProblems(variant=v, data_dir=str(BENCH / "mbpp")).load(s)
    ]
    problems += HumanEvalProblems(data_dir=str(BENCH / "humaneval")).load("test")
    completions = [
        Completion(id=f"{p.id}#0", problem_id=p.id, round=0, sample_idx=0, text=p.solution or "")
        for p in problems
    ]
    verifier = make_verifier("sandboxed_tests")
    try:
        verdicts = verifier.verify({p.id: p for p in problems}, completions)
    finally:
        verifier.close()
    assert len(verdicts) == 1565 and [v.problem_id for v in verdicts if not v.passed] == []


def test_train_and_eval_splits_from_params(tmp_path):
    """``problems.train_split`` / ``problems.eval_split`` choose the splits rounds sample and evaluate reads."""
    from selfimprove.params import load_config
    from selfimprove.stages.common import eval_problems, problem_set

    f = _write(
        tmp_path / "p.jsonl",
        [{"id": i, "prompt": i, "answer": "1", "split": s}
         for i, s in [("a", "train"), ("b", "dev"), ("c", "test"), ("d", "extra")]],
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        f"problems:\n  name: jsonl\n  jsonl:\n    path: {f}\n    split_field: split\n"
        "  train_split: extra\n  eval_split: dev\n"
    )
    cfg = load_config(params)
    ps = problem_set(cfg)
    assert [p.id for p in eval_problems(cfg, ps)] == ["b"]
    assert [p.id for p in ps.training_pool(0, None, 0, 1, split=cfg.problems.train_split)] == ["d"]
    cfg = load_config(params, ["problems.eval_split=test"])
    assert [p.id for p in eval_problems(cfg, problem_set(cfg))] == ["c"]
