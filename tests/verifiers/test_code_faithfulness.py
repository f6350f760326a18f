"""Faithfulness of the sandboxed code verifier: its verdict equals one plain CPython process running the task
as written (prompt + completion + tests), for every HumanEval and MBPP task and several solutions of each.

The reference runner is a ``program`` job of the same sandbox pool (one process, the test code unchanged,
plain ``assert``; pass = exit status 0 and a sentinel printed after the last test), never run on the host.
Both sides run with the sandbox's pinned ``PYTHONHASHSEED=0``, so a test that depends on the iteration order
of a set of strings has one answer, not one per process.

Solutions per task: the gold solution and perturbations of the function under test, each applied to
every ``return`` of that function (nested functions keep theirs): ``constant`` (the first integer
constant of the body + 1), ``off_by_one`` (see test_code_acceptance), ``unsorted`` (a list, tuple or str
result reversed), ``raising`` (the function raises ValueError first). A perturbation that does not apply
(no integer constant) is skipped. The default run checks the protocol sample of test_code_acceptance; the
``slow`` run checks every task of HumanEval (164), MBPP (974) and MBPP sanitized (427).
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from selfimprove.types import Problem
from selfimprove.verifiers.code import analyze_asserts, humaneval_program
from selfimprove.verifiers.sandbox import Job

from test_code_acceptance import (
    HE_SAMPLE,
    MBPP_SAMPLE,
    OFF_BY_ONE_HELPER,
    SAN_SAMPLE,
    _humaneval,
    _mbpp_full,
    _mbpp_sanitized,
    completion,
    humaneval_problem,
    mbpp_problem,
    verifier,  # noqa: F401 - the shared module fixture
)

SENTINEL = "__selfimprove_reference_passed__"

#: Disagreements between the sandbox and the reference, each explained. Keyed by (task id, solution).
EXPLAINED: dict[tuple[str, str], str] = {}

HELPERS = OFF_BY_ONE_HELPER + '''
def __unsorted(v):
    if isinstance(v, (list, tuple, str)) and len(v) > 1:
        return v[::-1]
    return v
'''


class _Returns(ast.NodeTransformer):
    def __init__(self, helper: str):
        self.helper = helper

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def visit_Return(self, node: ast.Return) -> ast.Return:
        node.value = ast.Call(ast.Name(self.helper, ast.Load()), [node.value or ast.Constant(None)], [])
        return node


def _bump_first_int(stmts: list[ast.stmt]) -> bool:
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Constant) and type(node.value) is int:
                node.value += 1
                return True
    return False


def perturb(body: list[ast.stmt], kind: str) -> list[ast.stmt] | None:
    """The perturbed statements of a function body, or None when the perturbation does not apply."""
    stmts = [ast.parse(ast.unparse(s)).body[0] for s in body]  # a deep copy
    if kind == "constant":
        return stmts if _bump_first_int(stmts) else None
    if kind == "raising":
        return [ast.parse("raise ValueError('perturbed')").body[0], *stmts]
    helper = {"off_by_one": "__off_by_one", "unsorted": "__unsorted"}[kind]
    return [_Returns(helper).visit(s) for s in stmts]


KINDS = ["gold", "constant", "off_by_one", "unsorted", "raising"]


def humaneval_solutions(row: dict) -> dict[str, str]:
    """Body-only completions (the HumanEval format) for the gold and each perturbation."""
    out = {"gold": row["canonical_solution"]}
    body = ast.parse(textwrap.dedent(row["canonical_solution"])).body
    for kind in KINDS[1:]:
        stmts = perturb(body, kind)
        if stmts is not None:
            src = HELPERS + "\n".join(ast.unparse(ast.fix_missing_locations(s)) for s in stmts)
            out[kind] = textwrap.indent(src, "    ") + "\n"
    return out


def mbpp_solutions(code: str, functions: set[str]) -> dict[str, str]:
    out = {"gold": code}
    for kind in KINDS[1:]:
        tree = ast.parse(code)
        applied = False
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in functions:
                stmts = perturb(node.body, kind)
                if stmts is not None:
                    node.body, applied = stmts, True
        if applied:
            out[kind] = HELPERS + ast.unparse(ast.fix_missing_locations(tree))
    return out


def reference_program(problem: Problem, text: str) -> str:
    """The task as written, in one plain process: prompt + completion (HumanEval) or code, then the tests."""
    t = problem.tests
    if t["format"] == "humaneval":
        program, _, _ = humaneval_program(text, t["prompt"], t["entry_point"])
        tests = f"{t['test']}\n\ncheck({t['entry_point']})\n"
    else:
        program = "\n".join(t.get("imports") or []) + "\n" + text.replace("\r\n", "\n")
        setup = (t.get("setup") or "").replace("\r\n", "\n")
        tests = setup + "\n" + "\n".join([*t["asserts"], *(t.get("challenge_asserts") or [])]) + "\n"
    return f"{program}\n\n{tests}\nprint({SENTINEL!r})\n"


def _cases(sample: bool) -> list[tuple[Problem, str, str]]:
    cases: list[tuple[Problem, str, str]] = []
    for row in _humaneval():
        if sample and int(row["task_id"].split("/")[1]) not in HE_SAMPLE:
            continue
        p = humaneval_problem(row)
        cases += [(p, kind, text) for kind, text in humaneval_solutions(row).items()]
    for variant, rows, wanted in (("full", _mbpp_full(), MBPP_SAMPLE), ("sanitized", _mbpp_sanitized(), SAN_SAMPLE)):
        for row in rows:
            if sample and row["task_id"] not in wanted:
                continue
            p = mbpp_problem(row, variant)
            remote, _ = analyze_asserts(p.tests["asserts"])
            code = row["code"].replace("\r\n", "\n")
            cases += [(p, kind, text) for kind, text in mbpp_solutions(code, set(remote)).items()]
    return cases


def differential(verifier, cases: list[tuple[Problem, str, str]]) -> list[tuple[str, str, bool, bool, str]]:
    """(task, solution, sandboxed passed, reference passed, sandbox reason) for every disagreement."""
    problems = {p.id: p for p, _, _ in cases}
    comps = [completion(p, text, kind) for p, kind, text in cases]
    futures = [verifier.pool.submit(Job.program(reference_program(p, text))) for p, _, text in cases]
    verdicts = verifier.verify(problems, comps)
    out = []
    for (p, kind, _), verdict, fut in zip(cases, verdicts, futures, strict=True):
        res = fut.result()
        ref = bool(res.candidate and res.candidate.exit_code == 0 and SENTINEL in res.output
                   and not res.wall_timeout and not res.cpu_limited)
        if verdict.passed != ref:
            out.append((p.id, kind, verdict.passed, ref, verdict.reason or ""))
    return out


@pytest.mark.parametrize("sample", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sample", "all"])
def test_sandboxed_verdict_equals_one_plain_cpython_process(verifier, sample):  # noqa: F811
    cases = _cases(sample)
    kinds = {kind for _, kind, _ in cases}
    assert kinds == set(KINDS)
    if not sample:
        assert len({p.id for p, _, _ in cases}) == 164 + 974 + 427
    disagree = [d for d in differential(verifier, cases) if (d[0], d[1]) not in EXPLAINED]
    assert disagree == [], f"{len(disagree)} of {len(cases)} verdicts differ from plain CPython: {disagree[:10]}"


# ----------------------------------------------------------------------------------- set iteration order

SET_CODE = """
def grown():
    s = set(range(256))
    for i in range(256):
        if i not in (1, 8):
            s.discard(i)
    return s  # {1, 8} in a 512-slot table: iterates 1, 8 (a new 8-slot table iterates 8, 1)

def words():
    return {"apple", "banana", "cherry", "date", "elderberry"}

def nested():
    return (grown(), [frozenset(grown())])

def listify(s):
    return list(s)
"""
# Each expression compared with both orders: exactly one holds in plain CPython, and the sandbox must agree.
SET_EXPRS = ["list(grown())", "str(grown())", "next(iter(grown()))", "grown().pop()", "list(nested()[0])",
             "list(nested()[1][0])", "list(words())[0]",
             "listify((lambda s: (s.difference_update([0, *range(2, 8), *range(9, 256)]), s)[1])(set(range(256))))"]


def test_set_order_crosses_the_boundary_as_in_one_process(verifier):  # noqa: F811
    """A set returned by the candidate (or passed to it) iterates in the sender's order on the other side."""
    cases = []
    for i, expr in enumerate(SET_EXPRS):
        for want in ("[1, 8]", "[8, 1]", "'{1, 8}'", "'{8, 1}'", "1", "8", "'apple'", "'banana'", "'cherry'",
                     "'date'", "'elderberry'"):
            p = Problem(id=f"set-order/{i}/{want}", prompt="",
                        tests={"format": "asserts", "asserts": [f"assert {expr} == {want}"]})
            cases.append((p, "gold", SET_CODE))
    problems = {p.id: p for p, _, _ in cases}
    verdicts = verifier.verify(problems, [completion(p, t, k) for p, k, t in cases])
    assert sum(v.passed for v in verdicts) == len(SET_EXPRS)  # one order holds per expression
    assert all(v.details.get("faithful", True) for v in verdicts)
    assert differential(verifier, cases) == []
