"""Acceptance on real data: every reference solution passes, every mutant fails.

Data: ``../shared/benchmarks`` (``SELFIMPROVE_BENCHMARKS_DIR`` overrides): HumanEval (164 tasks: prompt +
canonical solution), MBPP full (974 tasks: reference code, ``test_list`` + ``challenge_test_list``,
``test_setup_code``) and MBPP sanitized (427 tasks: reference code, ``test_list``, ``test_imports``).

Mutants: (1) HumanEval body ``return None``; (2) "result off by one", applied to every ``return`` of the
function under test (not of nested helpers): ints + 1, floats + max(1, 1 %), bools negated, sequences one element
shorter (or one longer when empty), dicts one extra key, anything else (``None`` included) becomes 1.
Floats move by max(1, 1 %): MBPP-sanitized 82/85 compare sphere volumes in the thousands with
``math.isclose(rel_tol=0.001)``, which a plain + 1 stays inside.
It changes every output the function can produce, so surviving it would mean a test that does not look
at the result.

The default run checks a fixed sample that includes every task needing a protocol feature (``SPECIAL``);
``-m slow`` checks everything (about 3.5k jobs, ~20 s on two free cores).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from selfimprove.types import Completion, Problem
from selfimprove.verifiers.code import SandboxedTestsVerifier, analyze_asserts

BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", Path(__file__).resolve().parents[3] / "shared" / "benchmarks"))
HAVE_BWRAP = bool(shutil.which("bwrap") or os.path.exists("/usr/bin/bwrap"))
TEST_UID = 64979 if os.geteuid() == 0 else None

#: Reference solutions that fail, with the reason. Empty: all 164 + 974 + 427 references pass.
EXPECTED_FAILURES: dict[str, str] = {}

#: Tasks that exercise a specific part of the protocol (kept in the default sample; see docs/verifiers.md).
SPECIAL = {
    "HumanEval/32": "check() feeds the candidate's root to the prompt helper poly(): helpers come from the prompt",
    "HumanEval/33": "check() calls sort_third (the entry point) for the expected side: as in the original harness "
                    "that name means the candidate, so 3 of its 7 asserts compare the candidate with itself",
    "HumanEval/38": "inputs are built with the prompt's encode_cyclic; a completion cannot redefine it for the tests",
    "HumanEval/50": "inputs are built with the prompt's encode_shift",
    "HumanEval/2": "float results compared with a tolerance, abs(candidate(x) - y) < 1e-6",
    "HumanEval/53": "100 random cases in a loop: one assert line, many executions",
    "mbpp/126": "the function under test is named `sum`, shadowing the builtin",
    "mbpp/367": "test_setup_code builds trees from the candidate's Node class: setup runs in the candidate process",
    "mbpp/927": "test_setup_code builds trees from the candidate's Node class",
    "mbpp/533": "passes the builtin type `int` as an argument",
    "mbpp/596": "the expected side calls sys.getsizeof without importing sys (evaluated by the tester, not the candidate)",
    "mbpp/601": "arguments are instances of the candidate's class Pair, built in the candidate process",
    "mbpp/341": "returns a set-derived tuple; challenge tests present",
    "mbpp-sanitized/737": "asserts the truth value of a re.Match object (asked of the candidate as a plain bool)",
    "mbpp-sanitized/82": "test_imports: math.isclose on the expected side",
}

HE_SAMPLE = [0, 2, 10, 12, 32, 33, 38, 50, 53, 62, 95, 107, 111, 120, 129, 137, 145, 151, 154, 163]
MBPP_SAMPLE = [11, 16, 57, 126, 160, 212, 341, 367, 452, 533, 596, 601, 602, 737, 794, 805, 874, 900, 927, 974]
SAN_SAMPLE = [2, 16, 57, 82, 160, 412, 737, 770, 800, 809]

OFF_BY_ONE_HELPER = '''def __off_by_one(v):
    if type(v) is bool:
        return not v
    if type(v) is int:
        return v + 1
    if type(v) is float:
        return v + max(1.0, abs(v) / 100)
    if isinstance(v, (list, tuple, str)):
        return v[:-1] if len(v) else v + type(v)("0")
    if isinstance(v, dict):
        return {**v, "__extra__": 1}
    return 1
'''


class _WrapReturns(ast.NodeTransformer):
    """Wrap the function's own returns; nested functions, lambdas and classes keep theirs."""

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def visit_Return(self, node: ast.Return) -> ast.Return:
        node.value = ast.Call(ast.Name("__off_by_one", ast.Load()), [node.value or ast.Constant(None)], [])
        return node


def off_by_one_body(body: str) -> str:
    """HumanEval: mutate an indented function body (the helper is defined inside the function)."""
    tree = _WrapReturns().visit(ast.parse(textwrap.dedent(body)))
    return textwrap.indent(OFF_BY_ONE_HELPER + ast.unparse(ast.fix_missing_locations(tree)), "    ") + "\n"


def off_by_one_module(code: str, functions: set[str]) -> str:
    """MBPP: mutate the top-level functions the tests call."""
    tree = ast.parse(code)
    hits = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            node.body = [_WrapReturns().visit(stmt) for stmt in node.body]
            hits += 1
    assert hits, f"no function of {sorted(functions)} in the reference"
    return OFF_BY_ONE_HELPER + ast.unparse(ast.fix_missing_locations(tree))


# --------------------------------------------------------------------------------------------- data


def _humaneval() -> list[dict]:
    with open(BENCH / "humaneval" / "HumanEval.jsonl") as f:
        return [json.loads(line) for line in f]


def _mbpp_full() -> list[dict]:
    with open(BENCH / "mbpp" / "mbpp.jsonl") as f:
        return [json.loads(line) for line in f]


def _mbpp_sanitized() -> list[dict]:
    with open(BENCH / "mbpp" / "sanitized-mbpp.json") as f:
        return json.load(f)


def humaneval_problem(row: dict) -> Problem:
    return Problem(id=row["task_id"], prompt=row["prompt"],
                   tests={"format": "humaneval", "prompt": row["prompt"], "test": row["test"],
                          "entry_point": row["entry_point"]})


def mbpp_problem(row: dict, variant: str) -> Problem:
    pid = f"mbpp/{row['task_id']}" if variant == "full" else f"mbpp-sanitized/{row['task_id']}"
    return Problem(id=pid, prompt=row.get("text") or row.get("prompt", ""),
                   tests={"format": "asserts", "asserts": row["test_list"],
                          "challenge_asserts": row.get("challenge_test_list") or [],
                          "setup": row.get("test_setup_code") or "", "imports": row.get("test_imports") or []})


def completion(problem: Problem, text: str, tag: str) -> Completion:
    return Completion(id=f"{problem.id}#{tag}", problem_id=problem.id, round=0, sample_idx=0, text=text)


@pytest.fixture(scope="module")
def verifier():
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    if not (BENCH / "humaneval" / "HumanEval.jsonl").exists():
        pytest.skip(f"benchmark data not found under {BENCH}")
    v = SandboxedTestsVerifier(workers=2, sandbox_uid=TEST_UID)
    yield v
    v.close()


def _check(verifier, problems: list[Problem], comps: list[Completion], expect_pass: bool) -> None:
    verdicts = verifier.verify({p.id: p for p in problems}, comps)
    wrong = [(v.problem_id, v.status, v.reason) for v in verdicts
             if v.passed != expect_pass and v.problem_id not in EXPECTED_FAILURES]
    assert not wrong, f"{len(wrong)} of {len(verdicts)} verdicts wrong: {wrong[:10]}"
    if expect_pass:
        unexpected_fixes = [v.problem_id for v in verdicts if v.passed and v.problem_id in EXPECTED_FAILURES]
        assert not unexpected_fixes, f"now passing, remove from EXPECTED_FAILURES: {unexpected_fixes}"
        assert all(v.status == "pass" for v in verdicts if v.problem_id not in EXPECTED_FAILURES)


# --------------------------------------------------------------------------------------------- HumanEval


def _he_rows(sample: bool) -> list[dict]:
    rows = _humaneval()
    return [r for r in rows if int(r["task_id"].split("/")[1]) in HE_SAMPLE] if sample else rows


@pytest.mark.parametrize("sample", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sample", "all"])
def test_humaneval_canonical_solutions_pass(verifier, sample):
    rows = _he_rows(sample)
    problems = [humaneval_problem(r) for r in rows]
    comps = [completion(p, r["canonical_solution"], "canonical") for p, r in zip(problems, rows)]
    _check(verifier, problems, comps, expect_pass=True)
    assert len(comps) == (len(HE_SAMPLE) if sample else 164)


@pytest.mark.parametrize("sample", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sample", "all"])
def test_humaneval_mutants_fail(verifier, sample):
    rows = _he_rows(sample)
    problems = [humaneval_problem(r) for r in rows]
    comps = [completion(p, "    return None\n", "none") for p in problems]
    comps += [completion(p, off_by_one_body(r["canonical_solution"]), "off-by-one") for p, r in zip(problems, rows)]
    _check(verifier, problems, comps, expect_pass=False)


def test_humaneval_full_function_format_passes(verifier):
    """The other common model format: the whole function re-emitted in a fenced block."""
    rows = _he_rows(True)
    problems = [humaneval_problem(r) for r in rows]
    comps = [completion(p, f"Here is my solution.\n```python\n{r['prompt']}{r['canonical_solution']}```\n", "fenced")
             for p, r in zip(problems, rows)]
    _check(verifier, problems, comps, expect_pass=True)


# --------------------------------------------------------------------------------------------- MBPP


def _mbpp_rows(variant: str, sample: bool) -> list[dict]:
    rows = _mbpp_full() if variant == "full" else _mbpp_sanitized()
    wanted = MBPP_SAMPLE if variant == "full" else SAN_SAMPLE
    return [r for r in rows if r["task_id"] in wanted] if sample else rows


@pytest.mark.parametrize("variant", ["full", "sanitized"])
@pytest.mark.parametrize("sample", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sample", "all"])
def test_mbpp_reference_solutions_pass(verifier, variant, sample):
    rows = _mbpp_rows(variant, sample)
    problems = [mbpp_problem(r, variant) for r in rows]
    comps = [completion(p, r["code"], "reference") for p, r in zip(problems, rows)]
    _check(verifier, problems, comps, expect_pass=True)
    if not sample:
        assert len(comps) == (974 if variant == "full" else 427)


@pytest.mark.parametrize("variant", ["full", "sanitized"])
@pytest.mark.parametrize("sample", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sample", "all"])
def test_mbpp_mutants_fail(verifier, variant, sample):
    rows = _mbpp_rows(variant, sample)
    problems = [mbpp_problem(r, variant) for r in rows]
    comps = []
    for p, r in zip(problems, rows):
        remote, _ = analyze_asserts(p.tests["asserts"])
        comps.append(completion(p, off_by_one_module(r["code"].replace("\r\n", "\n"), set(remote)), "off-by-one"))
    _check(verifier, problems, comps, expect_pass=False)


def test_mbpp_few_shot_format_passes(verifier):
    """MBPP's few-shot format: the model writes ``[BEGIN]\\n '<code>' \\n[DONE]`` (code inside quotes)."""
    rows = _mbpp_rows("full", True)
    problems = [mbpp_problem(r, "full") for r in rows]
    comps = [completion(p, f"[BEGIN]\n '{r['code']}' \n[DONE]\n", "few-shot") for p, r in zip(problems, rows)]
    _check(verifier, problems, comps, expect_pass=True)


def test_special_tasks_are_in_the_default_sample():
    he = {f"HumanEval/{i}" for i in HE_SAMPLE}
    full = {f"mbpp/{i}" for i in MBPP_SAMPLE}
    san = {f"mbpp-sanitized/{i}" for i in SAN_SAMPLE}
    assert set(SPECIAL) <= he | full | san


# --------------------------------------------------------------------------------------------- with the problem sets


def test_problem_set_loaders_feed_the_verifier(verifier):
    """The problem sets of this package produce tests in the schema the verifier reads."""
    problems_mod = pytest.importorskip("selfimprove.problems")
    he = problems_mod.PROBLEM_SETS.get("humaneval")(path=str(BENCH / "humaneval" / "HumanEval.jsonl"))
    mbpp = problems_mod.PROBLEM_SETS.get("mbpp")(path=str(BENCH / "mbpp" / "mbpp.jsonl"))
    chosen = [p for p in he.load("test") if p.meta.get("task_id") in {"HumanEval/33", "HumanEval/38"}]
    chosen += [p for split in mbpp.splits() for p in mbpp.load(split) if p.meta.get("task_id") in {126, 367, 601}]
    assert len(chosen) == 5
    assert all(p.verifier == "sandboxed_tests" for p in chosen)
    comps = [completion(p, p.solution or "", "solution") for p in chosen]
    _check(verifier, chosen, comps, expect_pass=True)
