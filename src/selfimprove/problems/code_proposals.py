"""Model-written code tasks (MBPP style): a task sentence, a reference solution and assert tests, checked by running.

The proposer answers in a fixed format::

    Task: <one sentence>
    ```python
    <the reference solution: one function>
    ```
    Tests:
    ```python
    assert <function>(...) == ...
    ```

``parse_code_proposal`` checks what needs no execution: both blocks parse, no import that makes a run
non-deterministic or reaches the machine (AZR bans ``random``, ``time``, ``os`` and the like), and the tests call the
proposed function. ``check_code_proposals`` runs the rest in the sandbox (``sandboxed_tests``' bubblewrap pool): the
reference passes its tests twice with the same verdict (deterministic), and at least one *mutant* of the reference
fails (a mutant changes one thing: a return value, a comparison, an arithmetic operator, a constant). Tests that
every mutant passes check nothing, and the task is rejected (``tests_check_nothing``).
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

from selfimprove.proposals import Parsed
from selfimprove.types import Completion, Problem

#: imports that make two runs differ or reach outside the process
BANNED_IMPORTS = frozenset({"random", "time", "datetime", "os", "sys", "subprocess", "socket", "threading",
                            "multiprocessing", "secrets", "uuid", "shutil", "pathlib", "asyncio", "signal"})
FORMAT = ("Task: <one sentence>\n```python\n<a reference solution: one function>\n```\nTests:\n```python\n"
          "assert <function>(...) == ...\n```")
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def proposal_messages(examples: list[Problem]) -> list[dict[str, str]]:
    """A chat request for one new task in the format above, with the examples written in it."""
    shown = []
    for e in examples:
        text = str(e.meta.get("text") or e.prompt).strip().strip('"').strip()
        asserts = (e.tests or {}).get("asserts") or []
        shown.append(f"Task: {text.splitlines()[0] if text else ''}\n```python\n{(e.solution or '').strip()}\n```\n"
                     f"Tests:\n```python\n" + "\n".join(asserts[:3]) + "\n```")
    user = ("Here are example Python tasks, each with a reference solution and tests:\n\n" + "\n\n".join(shown)
            + f"\n\nWrite one new task, different from these, in exactly this format:\n{FORMAT}")
    return [{"role": "system", "content": "You write new Python programming tasks with tests."},
            {"role": "user", "content": user}]


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            names.add("__import__")
    return names


def parse_code_proposal(text: str, round: int, prompt_template: str, source: str) -> Parsed:
    """The task a proposal states, with the checks that need no execution (see the module docstring)."""
    task = re.search(r"Task:\s*(.+)", text)
    blocks = _BLOCK.findall(text)
    if not task or len(blocks) < 2:
        return Parsed.reject("malformed", parsed=False)
    sentence, reference, test_code = task.group(1).strip(), blocks[0].strip(), blocks[1].strip()
    try:
        ref_tree = ast.parse(reference)
        test_tree = ast.parse(test_code)
    except SyntaxError:
        return Parsed.reject("does_not_parse", parsed=False)
    functions = [n.name for n in ref_tree.body if isinstance(n, ast.FunctionDef)]
    asserts = [ast.get_source_segment(test_code, n) or "" for n in test_tree.body if isinstance(n, ast.Assert)]
    if not functions or not asserts:
        return Parsed.reject("malformed", parsed=False)
    checks = {"parsed": True}
    banned = (_imports(ref_tree) | _imports(test_tree)) & (BANNED_IMPORTS | {"__import__"})
    checks["deterministic_imports"] = not banned
    if banned:
        return Parsed(None, None, checks, "nondeterministic_import")
    entry = functions[-1]
    called = {n.func.id for n in ast.walk(test_tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    checks["tests_reference_function"] = entry in called
    if entry not in called:
        return Parsed(None, None, checks, "tests_ignore_function")
    digest = hashlib.sha256((sentence + reference + test_code).encode()).hexdigest()[:12]
    problem = Problem(
        id=f"{source}/propose/r{round}/{digest}",
        prompt=prompt_template.format(text=sentence, example=asserts[0], tests="\n".join(asserts)),
        answer=None, solution=reference,
        tests={"format": "asserts", "asserts": asserts, "challenge_asserts": [], "setup": "", "imports": [],
               "entry_point": entry},
        verifier="sandboxed_tests", source=source,
        meta={"text": sentence, "entry_point": entry, "label_source": "execution"},
    )
    return Parsed(problem, "execution", checks, None, float(len(asserts) + reference.count("\n") + 1))


class _Mutator(ast.NodeTransformer):
    """Changes the ``target``-th mutable node of one kind, nothing else."""

    def __init__(self, kind: str, target: int):
        self.kind, self.target, self.seen = kind, target, -1

    def _hit(self) -> bool:
        self.seen += 1
        return self.seen == self.target

    def visit_Return(self, node: ast.Return) -> ast.AST:
        self.generic_visit(node)
        if self.kind == "return" and node.value is not None and self._hit():
            return ast.Return(value=ast.Constant(None))
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        flip = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
                ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
        if self.kind == "compare" and type(node.ops[0]) in flip and self._hit():
            node.ops = [flip[type(node.ops[0])](), *node.ops[1:]]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv,
                ast.Div: ast.Mult, ast.Pow: ast.Mult}
        if self.kind == "binop" and type(node.op) in swap and self._hit():
            node.op = swap[type(node.op)]()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if self.kind == "constant" and type(node.value) is int and self._hit():
            return ast.Constant(node.value + 1)
        return node


def mutants(code: str, limit: int = 6) -> list[str]:
    """Up to ``limit`` one-change variants of ``code`` that differ from it (returns, comparisons, operators,
    constants, the first occurrences first).

    >>> mutants("def f(x):\\n    return x + 1")[:2]
    ['def f(x):\\n    return None', 'def f(x):\\n    return x - 1']
    """
    base = ast.unparse(ast.parse(code))
    out: list[str] = []
    for target in range(3):
        for kind in ("return", "binop", "compare", "constant"):
            tree = _Mutator(kind, target).visit(ast.parse(code))
            text = ast.unparse(ast.fix_missing_locations(tree))
            if text != base and text not in out:
                out.append(text)
            if len(out) >= limit:
                return out
    return out


def check_code_proposals(parsed: list[Parsed], verifier_options: dict[str, Any]) -> None:
    """Run each parsed task's reference twice and its mutants in the sandbox; record ``deterministic``,
    ``reference_passes`` and ``mutant_fails`` and reject the tasks that fail one (in place)."""
    from selfimprove.verifiers.code import SandboxedTestsVerifier

    todo = [p for p in parsed if p.problem is not None and p.reason is None]
    if not todo:
        return
    verifier = SandboxedTestsVerifier(**verifier_options)
    try:
        problems, completions, plan = {}, [], []
        for i, p in enumerate(todo):
            assert p.problem is not None
            problems[p.problem.id] = p.problem
            texts = [p.problem.solution or "", p.problem.solution or "", *mutants(p.problem.solution or "")]
            for j, t in enumerate(texts):
                completions.append(Completion(id=f"{p.problem.id}#{j}", problem_id=p.problem.id, round=0,
                                              sample_idx=j, text=f"```python\n{t}\n```"))
            plan.append((i, len(texts)))
        verdicts = verifier.verify(problems, completions)
    finally:
        verifier.close()
    pos = 0
    for i, n in plan:
        p, vs = todo[i], verdicts[pos:pos + n]
        pos += n
        first, second, mutated = vs[0], vs[1], vs[2:]
        p.checks["reference_passes"] = bool(first.passed and second.passed)
        p.checks["deterministic"] = first.passed == second.passed and first.status == second.status
        p.checks["mutant_fails"] = any(not v.passed for v in mutated)
        for check, reason in (("deterministic", "nondeterministic"), ("reference_passes", "reference_fails"),
                              ("mutant_fails", "tests_check_nothing")):
            if not p.checks[check]:
                p.reason = reason
                break
