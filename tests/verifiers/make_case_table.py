"""Build ``case_table.jsonl``: the verifiers' regression table of required verdicts.

Run from the repository root (reads ``../shared/benchmarks`` or ``$SELFIMPROVE_BENCHMARKS_DIR``)::

    python tests/verifiers/make_case_table.py            # rewrite tests/verifiers/case_table.jsonl
    python tests/verifiers/make_case_table.py --check    # exit 1 if the committed table is stale

Every row is a ``selfimprove grade`` record with ``expect`` (the verdict a careful human grader gives) and
``note`` (the case's class), so the table also runs as ``selfimprove grade tests/verifiers/case_table.jsonl``.

What is in it, all deterministic:

- **MATH-500 golds**: all 500 rendered bare and boxed at the end of a short derivation; every 5th also in an
  answer sentence, and in the Minerva format (all ``pass``), plus an equivalent of another shape where one
  is certain (``\\dfrac``, ``a/b``, ``\\sqrt n``, a letter choice without ``\\text{}``...); near misses where
  the construction is certain to change the value (``fail``): a dropped or added sign, an extra radical
  (``G\\sqrt{2}``: the coefficient equals the gold), a missing factor, a hedge between the gold and another
  value, a rounded decimal of a non-terminating value, a digit changed.
- **GSM8K golds** (every 22nd of the 1319 test problems): ``####``, the answer phrase with and without
  ``$``, ``\\boxed{}``, a bare number, a concluding sentence, the Minerva format, thousands commas and
  digit groups (``pass``); off by one, a hedge, an expression containing the gold, an extra radical, a
  dropped sign, a decimal near the gold (``fail``).
- **Bare shapes** graders met in MATH-style output (``\\dfrac``, ``\\sqrt3``, ``\\textbf{}``, matrices,
  unions, equations, triples, scientific notation, currency, factored polynomials, trig identities), with
  near misses.
- **Policy rules**, each with its default and switched (per-record ``options``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import other_shape as _alt  # noqa: E402 - one copy, shared with bench/verifier_speed.py

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", ROOT.parent / "shared" / "benchmarks"))
OUT = Path(__file__).with_name("case_table.jsonl")

DERIVATION = "We work through the problem step by step and check the result."


def _perturb(answer: str) -> str | None:
    m = re.search(r"\d", answer)
    if m is None:
        return None
    return answer[: m.start()] + str((int(m.group()) + 1) % 10) + answer[m.end() :]


def _num(g: str) -> Fraction | None:
    """The value of a gold that is an integer, a decimal or \\frac{a}{b} (None otherwise)."""
    s = g.strip()
    neg = s.startswith("-")
    s = s.lstrip("-")
    if re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", s):
        v = Fraction(s)
    elif m := re.fullmatch(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}|\\frac(\d)(\d)", s):
        a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        v = Fraction(int(a), int(b))
    else:
        return None
    return -v if neg else v


def _terminates(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _adder(out: list[dict], verifier: str, prefix: str):
    """``add(kind, i, gold, completion, expect, note)`` appending one record ``<prefix>-<i>-<kind>`` to ``out``."""

    def add(kind: str, i: int, gold: str, completion: str, expect: str, note: str) -> None:
        out.append({"id": f"{prefix}-{i}-{kind}", "verifier": verifier, "gold": gold, "completion": completion,
                    "expect": expect, "note": note})

    return add


def math_cases(rows: list[dict]) -> list[dict]:
    out: list[dict] = []
    add = _adder(out, "math_equiv", "math500")

    for i, row in enumerate(rows):
        g = row["answer"]
        add("bare", i, g, g, "pass", "surface: bare")  # every gold, bare and boxed
        add("boxed", i, g, f"{DERIVATION} So the answer is $\\boxed{{{g}}}$.", "pass", "surface: boxed")
        if i % 5:
            continue
        add("sentence", i, g, f"{DERIVATION}\nThe answer is ${g}$.", "pass", "surface: answer sentence")
        add("minerva", i, g, f"{DERIVATION}\nFinal Answer: The final answer is ${g}$. I hope it is correct.",
            "pass", "surface: Minerva")
        alt = _alt(g)
        if alt is not None:
            add("alt", i, g, f"$\\boxed{{{alt}}}$", "pass", "surface: equivalent of another shape")
        v = _num(g)
        sq = re.fullmatch(r"(-?)(\d*)\\sqrt\{?(\d+)\}?", g)
        if v is not None and v != 0:
            flipped = g[1:] if g.startswith("-") else f"-{g}"
            add("sign", i, g, f"{DERIVATION} So the answer is $\\boxed{{{flipped}}}$.", "fail", "near miss: sign")
            add("radical", i, g, f"\\boxed{{{g}\\sqrt{{2}}}}", "fail", "near miss: extra radical")
            add("radical-bare", i, g, f"{g}\\sqrt{{3}}", "fail", "near miss: extra radical, bare")
            other = _perturb(g)
            if other is not None and _num(other) != v:
                add("hedge", i, g, f"The answer is ${g}$ or ${other}$.", "fail", "near miss: hedge")
            if not _terminates(v):
                add("rounded", i, g, f"\\boxed{{{float(v):.2f}}}", "fail", "near miss: rounded")
                add("approx", i, g, f"The answer is ${g} \\approx {float(v):.2f}$.", "pass",
                    "surface: exact then approximation")
            if v.denominator == 1 and abs(v) >= 4 and v % 2 == 0:
                add("factor", i, g, f"\\boxed{{{v / 2}}}", "fail", "near miss: missing factor")
        elif sq is not None:
            flipped = g[1:] if g.startswith("-") else f"-{g}"
            add("sign", i, g, f"$\\boxed{{{flipped}}}$", "fail", "near miss: sign")
            if sq.group(2) and int(sq.group(2)) > 1:
                add("factor", i, g, f"$\\boxed{{{sq.group(1)}\\sqrt{{{sq.group(3)}}}}}$", "fail",
                    "near miss: missing factor")
                add("coefficient", i, g, f"$\\boxed{{{sq.group(1)}{sq.group(2)}}}$", "fail",
                    "near miss: coefficient only")
            add("rounded", i, g, f"\\boxed{{{float((-1 if sq.group(1) else 1) * int(sq.group(2) or 1) * int(sq.group(3)) ** 0.5):.3f}}}",
                "fail", "near miss: rounded")
        else:
            other = _perturb(g)
            if other is not None:
                add("digit", i, g, f"$\\boxed{{{other}}}$", "fail", "near miss: a digit changed")
    return out


def gsm8k_cases(rows: list[dict]) -> list[dict]:
    out: list[dict] = []
    add = _adder(out, "gsm8k", "gsm8k")

    for i, row in enumerate(rows):
        if i % 22:
            continue
        g = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        n = int(g)
        body = row["answer"].rsplit("####", 1)[0].strip()
        add("solution", i, g, row["answer"], "pass", "surface: gold solution with ####")
        add("phrase", i, g, f"{body}\nThe answer is {g}.", "pass", "surface: answer phrase")
        add("dollar", i, g, f"The answer is ${n:,}.", "pass", "surface: currency and thousands comma")
        add("boxed", i, g, f"{body}\nSo the answer is $\\boxed{{{g}}}$.", "pass", "surface: boxed")
        add("bare", i, g, g, "pass", "surface: bare")
        add("conclusion", i, g, f"{body}\nTherefore, the result is {g} in total.", "pass",
            "surface: concluding sentence")
        add("minerva", i, g, f"{body}\nFinal Answer: The final answer is ${g}$. I hope it is correct.", "pass",
            "surface: Minerva")
        if n >= 1000:
            add("groups", i, g, f"The answer is {n:,}".replace(",", " ") + ".", "pass", "policy: digit_groups")
        add("off-by-one", i, g, f"{body}\n#### {n + 1}", "fail", "near miss: off by one")
        add("hedge", i, g, f"{body}\nThe answer is {g} or {n + 1}.", "fail", "near miss: hedge")
        add("expression", i, g, f"The answer is 2x + {g}.", "fail", "near miss: expression holding the gold")
        add("expression-last", i, g, f"{body}\nSo we get y - {g}", "fail", "near miss: expression holding the gold")
        add("radical", i, g, f"\\boxed{{{g}\\sqrt{{2}}}}", "fail", "near miss: extra radical")
        if n != 0:
            add("sign", i, g, f"The answer is -{g}.", "fail", "near miss: sign")
        add("decimal", i, g, f"The answer is {g}.4 dollars.", "fail", "near miss: rounded to the gold")
    return out


def policy_cases() -> list[dict]:
    """Each rule of the declared policy with its default and switched (``options``)."""
    rows: list[tuple[str, str, str, str, str, dict | None]] = [
        # (verifier, gold, completion, expect, note, options)
        ("math_equiv", "1, 3", r"\boxed{3, 1}", "pass", "unordered_lists (default)", None),
        ("math_equiv", "1, 3", r"\boxed{3, 1}", "fail", "unordered_lists: false", {"unordered_lists": False}),
        ("math_equiv", "-2, 5", r"$x = 5$ or $x = -2$", "pass", "unordered_lists: 'or' lists solutions", None),
        ("math_equiv", "(1, 3)", r"\boxed{(3, 1)}", "fail", "tuples stay ordered", None),
        ("math_equiv", r"\frac{5}{2}", r"\boxed{2\frac{1}{2}}", "pass", "mixed_numbers (default)", None),
        ("math_equiv", r"\frac{5}{2}", r"\boxed{2\frac{1}{2}}", "fail", "mixed_numbers: false", {"mixed_numbers": False}),
        ("math_equiv", r"\frac{5}{2}", "2 1/2", "pass", "mixed_numbers, plain text", None),
        ("gsm8k", "2.5", "The answer is 2 1/2 cups.", "pass", "mixed_numbers (default)", None),
        ("gsm8k", "2.5", "The answer is 2 1/2 cups.", "fail", "mixed_numbers: false", {"mixed_numbers": False}),
        ("math_equiv", "2x - y = 3", r"\boxed{4x - 2y = 6}", "pass", "equation_multiples (default)", None),
        ("math_equiv", "2x - y = 3", r"\boxed{4x - 2y = 6}", "fail", "equation_multiples: false", {"equation_multiples": False}),
        ("math_equiv", "2x - y = 3", r"\boxed{y = 2x - 3}", "pass", "equation_multiples: rearranged", None),
        ("math_equiv", "2x - y = 3", r"\boxed{2x - y = 6}", "fail", "equation_multiples: not a multiple", None),
        ("gsm8k", "1000000", "The answer is 1 million dollars.", "pass", "number_words (default)", None),
        ("gsm8k", "1000000", "The answer is 1 million dollars.", "fail", "number_words: false", {"number_words": False}),
        ("gsm8k", "1", "The answer is 1 million dollars.", "fail", "number_words: false, not 1", {"number_words": False}),
        ("gsm8k", "1", "The answer is 1 000 000.", "fail", "digit_groups: false, not 1", {"digit_groups": False}),
        ("gsm8k", "2", "The answer is 2 1/2 cups.", "fail", "mixed_numbers: false, not 2", {"mixed_numbers": False}),
        ("gsm8k", "2500000000", "The answer is 2.5 billion.", "pass", "number_words: decimal scale", None),
        ("gsm8k", "12", "The answer is twelve.", "pass", "number_words: small words", None),
        ("math_equiv", "1000000", r"\boxed{1 \text{ million}}", "pass", "number_words (default)", None),
        ("math_equiv", "1000000", r"\boxed{1 \text{ million}}", "fail", "number_words: false", {"number_words": False}),
        ("gsm8k", "1000000", "The answer is 1 000 000.", "pass", "digit_groups (default)", None),
        ("gsm8k", "1000000", "The answer is 1\u2009000\u2009000.", "pass", "digit_groups: thin spaces", None),
        ("gsm8k", "1000000", "The answer is 1 000 000.", "fail", "digit_groups: false", {"digit_groups": False}),
        ("math_equiv", "1000000", r"\boxed{1\,000\,000}", "pass", "digit_groups (default)", None),
        ("math_equiv", "1000000", r"\boxed{1\,000\,000}", "fail", "digit_groups: false", {"digit_groups": False}),
        ("gsm8k", "50", "The answer is 50%.", "pass", "percent: label (default)", None),
        ("gsm8k", "0.5", "The answer is 50%.", "fail", "percent: label, not the fraction", None),
        ("gsm8k", "0.5", "The answer is 50%.", "pass", "percent: fraction", {"percent": "fraction"}),
        ("gsm8k", "50", "The answer is 50%.", "fail", "percent: fraction", {"percent": "fraction"}),
        ("gsm8k", "0.5", "The answer is 50%.", "pass", "percent: either", {"percent": "either"}),
        ("gsm8k", "50", "The answer is 50%.", "fail", "percent: strict", {"percent": "strict"}),
        ("math_equiv", "50", r"\boxed{50\%}", "pass", "percent: label (default)", None),
        ("math_equiv", "0.5", r"\boxed{50\%}", "fail", "percent: label, not the fraction", None),
        ("math_equiv", "0.5", r"\boxed{50\%}", "pass", "percent: fraction", {"percent": "fraction"}),
        ("math_equiv", r"10\%", r"\boxed{0.1}", "fail", "percent: label, not the fraction", None),
        ("math_equiv", r"10\%", r"\boxed{0.1}", "pass", "percent: either", {"percent": "either"}),
        ("math_equiv", "50", r"\boxed{50\%}", "fail", "percent: strict", {"percent": "strict"}),
        ("gsm8k", "3.5", "The answer is 3,5.", "fail", "decimal_comma: false (default)", None),
        ("gsm8k", "3", "The answer is 3,5.", "fail", "decimal_comma: false, not 3", None),
        ("gsm8k", "3.5", "The answer is 3,5.", "pass", "decimal_comma: true", {"decimal_comma": True}),
        ("math_equiv", "3.5", r"\boxed{3,5}", "fail", "decimal_comma: false (default)", None),
        ("math_equiv", "3.5", r"\boxed{3,5}", "pass", "decimal_comma: true", {"decimal_comma": True}),
        ("math_equiv", "3, 5", r"\boxed{3,5}", "pass", "decimal_comma: a list gold keeps its comma", {"decimal_comma": True}),
        ("math_equiv", r"\frac{1}{3}", r"\boxed{\frac{1}{3} \approx 0.33}", "pass", "approximation: exact value", None),
        ("math_equiv", "0.33", r"\boxed{\frac{1}{3} \approx 0.33}", "fail", "approximation: exact value", None),
        ("math_equiv", "11", r"$x \approx 11$", "pass", "approximation: only the approximation given", None),
        ("gsm8k", "1/3", "The answer is 1/3 ≈ 0.33.", "pass", "approximation: exact value", None),
        ("math_equiv", "5", r"\boxed{5} or \boxed{6}", "fail", "hedge", None),
        ("math_equiv", "5", r"The answer is $5$ or $5.0$.", "pass", "hedge of equal values", None),
        ("gsm8k", "5", "The answer is 5 or 6.", "fail", "hedge", None),
        ("math_equiv", "5", r"\boxed{5\sqrt{2}}", "fail", "expression: coefficient equals gold", None),
        ("math_equiv", "2", r"x^2 + 2", "fail", "expression: bare, trailing number equals gold", None),
        ("gsm8k", "18", r"\boxed{2x+18}", "fail", "expression: boxed", None),
    ]
    out = []
    for k, (verifier, gold, completion, expect, note, options) in enumerate(rows):
        row = {"id": f"policy-{k}", "verifier": verifier, "gold": gold, "completion": completion,
               "expect": expect, "note": f"policy: {note}"}
        if options is not None:
            row["options"] = {"policy": options}
        out.append(row)
    return out


# Bare final answers of the shapes graders met in MATH-style output: (gold, completion, expect, note).
SHAPES = [
    (r"\frac{3}{4}", r"\dfrac{3}{4}", "pass", "dfrac"),
    (r"\frac{3}{4}", r"\tfrac34", "pass", "tfrac without braces"),
    (r"2\sqrt{3}", r"2\sqrt3", "pass", "sqrt without braces"),
    (r"\text{Evelyn}", r"\textbf{Evelyn}", "pass", "textbf"),
    ("12", r"\text{12}", "pass", "number in text"),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{bmatrix} 1 \\ -2 \end{bmatrix}", "pass", "bmatrix for pmatrix"),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{bmatrix} -2 \\ 1 \end{bmatrix}", "fail", "matrix entries swapped"),
    (r"(-\infty, 0] \cup [2, \infty)", r"(-\infty,0]\cup[2,\infty)", "pass", "union of intervals"),
    (r"(-\infty, 0] \cup [2, \infty)", r"(-\infty,0)\cup[2,\infty)", "fail", "interval end open"),
    ("y = -2x + 3", "y=3-2x", "pass", "equation"),
    ("(6, 31, -1)", "(6,31,-1)", "pass", "ordered triple"),
    ("(6, 31, -1)", "(31,6,-1)", "fail", "ordered triple reordered"),
    ("-2, 5", "5, -2", "pass", "several solutions"),
    ("-2, 5", "5", "fail", "one of two solutions"),
    (r"3.2 \times 10^{4}", "32000", "pass", "scientific notation"),
    ("32000", r"3.2 \times 10^{4}", "pass", "scientific notation answer"),
    ("32000", r"3.2 \times 10^{5}", "fail", "scientific notation, wrong exponent"),
    ("18.90", r"\$18.90", "pass", "currency"),
    ("11111", r"\$11,\!111", "pass", "currency with \\!"),
    ("(x+1)(x-3)", "x^2-2x-3", "pass", "factored polynomial"),
    ("x^2-2x-3", "(x-3)(x+1)", "pass", "factored polynomial answer"),
    ("x^2-2x-3", "(x-3)(x-1)", "fail", "wrong factor"),
    (r"\sin^2 x", r"1 - \cos^2 x", "pass", "trig identity"),
    (r"\sin^2 x", r"1 + \cos^2 x", "fail", "trig near miss"),
    ("5", "x = 5", "pass", "named value"),
    ("8", r"2^3", "pass", "power"),
    (r"\sqrt{2}", r"\sqrt{2} \approx 1.414", "pass", "exact then approximation"),
    (r"\sqrt{2}", "1.414", "fail", "approximation only"),
]


def shape_cases() -> list[dict]:
    return [
        {"id": f"shape-{k}", "verifier": "math_equiv", "gold": gold, "completion": completion, "expect": expect,
         "note": f"bare shape: {note}"}
        for k, (gold, completion, expect, note) in enumerate(SHAPES)
    ]


def build() -> list[dict]:
    math = [json.loads(x) for x in (BENCH / "math500" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    gsm = [json.loads(x) for x in (BENCH / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    return math_cases(math) + gsm8k_cases(gsm) + shape_cases() + policy_cases()


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10))} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
