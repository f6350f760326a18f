"""Answer verifiers' verdicts per second: ``math_equiv`` and ``gsm8k`` on real golds, bare and boxed, cold
and warm, and what a pathological answer costs.

What: builds completions from the real MATH-500 (500) and GSM8K test (1319) gold answers, each written bare
(the whole completion is the answer), boxed (a short derivation then ``\\boxed{gold}``) and boxed in another
equivalent shape (``other``, for the golds that have one: ``\\dfrac``, ``a/b``, ``72.0``, ``1080`` for
``1,080``..., so that no comparison can short-cut on equal strings and math-verify runs for every math
answer), graded against
their gold with the product's verifiers (``MathEquivVerifier.verify``, ``GSM8KVerifier.verify``, the code
the ``verify`` stage runs), the parent's comparison cache off. ``cold``: a new verifier (math_equiv starts
its worker process and imports sympy/math-verify inside the timed region); ``warm``: a verifier whose worker
is already running, on answers it has not seen; ``repeat``: the same verifier on the same answers again
(math-verify's own parse caches in the worker are warm). Rounds interleave the variants so load from other work on the
machine hits each alike; the report gives the median of the rounds, with min and max.

Pathological inputs: a 50,000-character expression and a ``\\frac`` nested 300 deep, boxed, placed in the
middle of a batch of 20 ordinary completions, with ``timeout_s`` = 2 s: the bench records the wall time of
the whole batch and each verdict's status, and checks that the batch finished and the ordinary verdicts
after the pathological one are still right.

How: ``.venv/bin/python bench/verifier_speed.py [--rounds 3]`` writes ``bench/results/verifier_speed.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from selfimprove.io import write_json
from selfimprove.types import Completion, Problem
from selfimprove.verifiers.gsm8k import GSM8KVerifier
from selfimprove.verifiers.math_equiv import MathEquivVerifier

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", ROOT.parent / "shared" / "benchmarks"))
OUT = ROOT / "bench" / "results"


def _problems() -> dict[str, list[Problem]]:
    math = [json.loads(x) for x in (BENCH / "math500" / "test.jsonl").read_text().splitlines()]
    gsm = [json.loads(x) for x in (BENCH / "gsm8k" / "test.jsonl").read_text().splitlines()]
    return {
        "math_equiv": [Problem(id=f"m{i}", prompt="", answer=r["answer"]) for i, r in enumerate(math)],
        "gsm8k": [Problem(id=f"g{i}", prompt="", answer=r["answer"].rsplit("####", 1)[1].strip())
                  for i, r in enumerate(gsm)],
    }


def _other_shape(gold: str) -> str | None:
    """An equivalent answer of another surface form, so the comparison cannot short-cut on equal strings."""
    from common import other_shape

    if "," in gold and gold.replace(",", "").isdigit():
        return gold.replace(",", "")
    return other_shape(gold)


def _completions(problems: list[Problem], form: str) -> list[Completion]:
    def text(p: Problem) -> str:
        gold = p.answer or ""
        if form == "bare":
            return gold
        if form == "other":
            return f"So the answer is $\\boxed{{{_other_shape(gold)}}}$."
        return f"We compute step by step and check the result.\nSo the answer is $\\boxed{{{gold}}}$."

    if form == "other":
        problems = [p for p in problems if _other_shape(p.answer or "") is not None]
    return [Completion(id=f"{p.id}#{form}", problem_id=p.id, round=0, sample_idx=0, text=text(p))
            for p in problems]


def _make(name: str, **options):
    return MathEquivVerifier(**options) if name == "math_equiv" else GSM8KVerifier(**options)


def _timed(verifier, problems: list[Problem], comps: list[Completion]) -> tuple[float, int]:
    t0 = time.perf_counter()
    verdicts = verifier.verify({p.id: p for p in problems if p.id in {c.problem_id for c in comps}}, comps)
    return time.perf_counter() - t0, sum(v.passed for v in verdicts)


def run(rounds: int) -> dict:
    data = _problems()
    results: dict[str, dict] = {}
    for r in range(rounds):
        for name, problems in data.items():
            for form in ("bare", "boxed", "other"):
                comps = _completions(problems, form)
                opts = {"cache_size": 0} if name == "math_equiv" else {}
                cold = _make(name, **opts)
                secs_cold, passed = _timed(cold, problems, comps)
                cold.close()
                warm = _make(name, **opts)
                warm.equivalent("x + 1", "1 + x")  # math_equiv: start the worker outside the timed region
                secs_warm, passed_warm = _timed(warm, problems, comps)
                secs_repeat, passed_repeat = _timed(warm, problems, comps)
                warm.close()
                for mode, secs, ok in (("cold", secs_cold, passed), ("warm", secs_warm, passed_warm),
                                       ("repeat", secs_repeat, passed_repeat)):
                    key = f"{name} {form} {mode}"
                    entry = results.setdefault(key, {"n": len(comps), "passed": ok, "rates": []})
                    entry["rates"].append(len(comps) / secs)
                print(f"round {r + 1}: {name} {form}: cold {len(comps) / secs_cold:.0f}/s, "
                      f"warm {len(comps) / secs_warm:.0f}/s, repeat {len(comps) / secs_repeat:.0f}/s, "
                      f"passed {passed}/{len(comps)}", flush=True)
    for entry in results.values():
        rates = entry.pop("rates")
        entry.update(median=statistics.median(rates), min=min(rates), max=max(rates))
    return results


def pathological() -> dict:
    problems = [Problem(id=f"p{i}", prompt="", answer=str(i)) for i in range(21)]
    texts = [rf"\boxed{{\frac{{{2 * i}}}{{2}}}}" for i in range(21)]
    out = {}
    for label, bad in (("50k-char expression", r"\boxed{" + "+".join(["x"] * 25_000) + "}"),
                       ("frac nested 300 deep", r"\boxed{" + r"\frac{1}{" * 300 + "2" + "}" * 300 + "}")):
        batch = texts[:10] + [bad] + texts[11:]
        comps = [Completion(id=f"p{i}#0", problem_id=f"p{i}", round=0, sample_idx=0, text=t)
                 for i, t in enumerate(batch)]
        with MathEquivVerifier(timeout_s=2.0, cache_size=0) as v:
            v.equivalent("1", "1")  # start the worker outside the timed region
            t0 = time.perf_counter()
            verdicts = v.verify({p.id: p for p in problems}, comps)
            wall = time.perf_counter() - t0
        bad_verdict = verdicts[10]
        others_ok = all(vd.passed for i, vd in enumerate(verdicts) if i != 10)
        out[label] = {"chars": len(bad), "batch_wall_s": round(wall, 2), "status": bad_verdict.status,
                      "verdict_cost_s": round(bad_verdict.cost_s, 2), "other_20_verdicts_right": others_ok,
                      "timeout_s": 2.0}
        print(f"{label}: {bad_verdict.status} in {bad_verdict.cost_s:.2f} s; batch of 21 in {wall:.2f} s; "
              f"other verdicts right: {others_ok}", flush=True)
    return out


def render(report: dict) -> str:
    lines = [
        "# Answer verifier speed",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Median of {report['rounds']} interleaved "
        "rounds (min-max); every round grades every gold once per form.",
        "",
        "| verifier | answers | mode | n | passed | verdicts/s (median) | min-max |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for key, e in report["throughput"].items():
        name, form, mode = key.split()
        lines.append(f"| {name} | {form} | {mode} | {e['n']} | {e['passed']} | {e['median']:.0f} | "
                     f"{e['min']:.0f}-{e['max']:.0f} |")
    lines += ["", "Pathological answers in a batch of 21 (math_equiv, `timeout_s` = 2 s):", "",
              "| input | characters | status | its verdict's cost (s) | batch wall (s) | the other 20 right |",
              "|---|---:|---|---:|---:|---|"]
    for label, e in report["pathological"].items():
        lines.append(f"| {label} | {e['chars']} | {e['status']} | {e['verdict_cost_s']} | {e['batch_wall_s']} | "
                     f"{e['other_20_verdicts_right']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": f"python bench/verifier_speed.py --rounds {args.rounds}",
        "rounds": args.rounds,
        "throughput": run(args.rounds),
        "pathological": pathological(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "verifier_speed.json", report)
    (OUT / "verifier_speed.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    sys.exit(main())
