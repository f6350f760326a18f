"""Loop policies, measured by running the product: ``selfimprove run`` with overrides, one DVC experiment per run.

Scenarios (each a set of ``-S`` overrides on the embedded default; ``--set`` adds more):

- ``curriculum``: ``loop.policy=curriculum`` from the 1-3 digit bootstrap, goal ``solved_up_to >= 10`` (every
  length up to 10 digits at >= 95% held-out greedy accuracy). Per round: the start model and sampled lengths the
  loop chose, ``solved_up_to``, the largest length at >= 95%, the pool-vs-held-out gap, and cumulative CPU-minutes.
- ``reward_hack``: one model voting with itself at temperature 1.5, no agreement or view filter (a loop built to
  reward-hack), under two health gates: label precision against gold >= 0.9 and the label-free proxy (vote share
  of the accepted labels) >= 0.6. Shows which gate stops it, in which round, with which values, and where it
  rolls back to.
- ``plateau``: six fixed rounds on 4 digits, target ``accuracy/d4`` (it saturates), ``loop.stop_on_plateau=2``.
  (The first try, ``loop_plateau_mean``: rounds on 4-5 digits with the mean accuracy over 1-6 digits as target;
  it never plateaued, as 6 digits kept rising without being trained on.)
- ``recipe``: no overrides but ``--set``: a recipe variant of the default loop across seeds, through the product's
  own stages (this replaces the old standalone ``bench/recipe_search.py``, which had its own trainer and labeller).

Every run happens in a clone of this repository's HEAD under ``--root`` (default ``/tmp/selfimprove-bench``), so
the project's own experiments, MLflow store and DVC cache are untouched. CPU time: each run's whole process tree
(``os.wait4``: the flow, Prefect's temporary server, DVC and git), and per round the flow process's CPU time
(``round/cpu_seconds``, logged to MLflow by the round flow). Results: ``bench/results/loop_<scenario>.json`` and
``.md``.

    .venv/bin/python bench/loop_policies.py curriculum --seeds 0 1 2 --jobs 2
    .venv/bin/python bench/loop_policies.py reward_hack --seeds 3
    .venv/bin/python bench/loop_policies.py plateau --seeds 3
    .venv/bin/python bench/loop_policies.py recipe --seeds 0 1 2 --tag single --set model.ensemble=1 --set sample.k=4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, clone, env, fmt, read_back, save_results  # noqa: E402

SCENARIOS: dict[str, list[str]] = {
    "curriculum": [
        "loop.policy=curriculum",
        "loop.max_rounds=10",
        "loop.target.metric=solved_progress",
        "loop.target.goal=10",
        "loop.stop_on_plateau=3",
        "sample.max_new_tokens=14",  # 11 difficulties evaluated: a 12-digit answer and its end token
        "evaluate.problems_per_difficulty=200",
        "evaluate.k=0",
        # at the frontier a few labels in 10^4 problems are all there is, and enough to climb on
        "validate.expectations.min_rows=10",
        "validate.expectations.acceptance_rate=[0.0001, 1.0]",
    ],
    "reward_hack": [
        "loop.policy=curriculum",
        "loop.max_rounds=4",
        "model.ensemble=1",
        "sample.greedy=false",
        "sample.k=4",
        "sample.temperature=1.5",
        "sample.views=[]",
        "validate.filters=[{function: format}, {function: decontaminate}, {function: dedup}, "
        "{function: per_problem_cap, max: 1}]",
        "loop.health=[{metric: acceptance_precision, min: 0.9}, {metric: health/proxy_agreement, min: 0.6}]",
        "evaluate.k=0",
    ],
    "plateau": [
        "rounds={r1: {prev: r0, difficulties: [4]}, r2: {prev: r1, difficulties: [4]}, r3: {prev: r2, difficulties: [4]}, "
        "r4: {prev: r3, difficulties: [4]}, r5: {prev: r4, difficulties: [4]}, r6: {prev: r5, difficulties: [4]}}",
        "loop.target.metric=accuracy/d4",
        "loop.stop_on_plateau=2",
        "loop.plateau_tolerance=0.005",
        "evaluate.k=0",
    ],
    "recipe": [],
}


def run_one(root: Path, scenario: str, seed: int, extra: list[str]) -> dict[str, Any]:
    name = f"{scenario}-s{seed}"
    proj = clone(root, name)
    args = [str(Path(sys.executable).parent / "selfimprove"), "run", "--name", name, "--apply", "never",
            "-S", f"seed={seed}"]
    for o in SCENARIOS[scenario] + extra:
        args += ["-S", o]
    log = (root / f"{name}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=proj, env=env(proj), stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log.close()
    out: dict[str, Any] = {"scenario": scenario, "seed": seed, "name": name, "overrides": SCENARIOS[scenario] + extra,
                           "exit": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "log": str(root / f"{name}.log")}
    return read_back(proj, name, out)


def markdown(scenario: str, results: list[dict[str, Any]], command: str) -> str:
    lines = [f"# Loop policy benchmark: {scenario}", "",
             f"Command: `{command}` (this repository's HEAD, cloned per run; 2-core machine, threads=1 per run).", "",
             "Overrides: " + ("; ".join(f"`{o}`" for o in SCENARIOS[scenario]) or "none but the command's --set"), ""]
    for r in results:
        lines += [f"## seed {r['seed']} ({r['name']})", "",
                  f"exit {r['exit']}; wall {r['wall_s'] / 60:.1f} min; CPU of the whole process tree "
                  f"{r['cpu_s'] / 60:.1f} min. Stopped: "
                  + (r.get("stopped") or ("no (ran every round)" if r["exit"] == 0 else "the run failed")), ""]
        if not r.get("rounds"):
            lines += [f"no rounds read back: {r.get('error')}", ""]
            continue
        lines += ["| round | from | sampled | solved_up_to | largest at >=95% | label precision | proxy | pool gap "
                  "| round CPU s | cum. CPU min | accuracy per length |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["rounds"]:
            accs = " ".join(f"{d}:{a:.2f}" for d, a in x["accuracy"].items())
            lines.append(f"| {x['round']} | {x['prev'] or ''} | {x['sampled']} | {fmt(x['solved_up_to'])} | "
                         f"{x['max_at_95']} | {fmt(x['label_precision'])} | {fmt(x['proxy_agreement'])} | "
                         f"{fmt(x['pool_gap'])} | {x['cpu_s']} | {x['cum_cpu_min']} | {accs} |")
        lines.append("")
        if r.get("health"):
            from selfimprove.health import describe_failure

            lines += ["Health gate failures:", ""] + [f"- {describe_failure(f)}" for f in r["health"]["failures"]] + [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (one thread each)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="one more -S override")
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-bench"))
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--reparse", action="store_true", help="rebuild the results files from the runs under --root")
    a = ap.parse_args()
    stem = f"loop_{a.scenario}{('_' + a.tag) if a.tag else ''}"
    if a.reparse:  # read the finished runs under --root again (the timings come from the earlier results file)
        old = json.loads((RESULTS / f"{stem}.json").read_text())
        command = old["command"]
        results = [read_back(a.root / r["name"], r["name"], {k: v for k, v in r.items() if k not in ("rounds",)})
                   for r in old["results"]]
    else:
        command = "python bench/loop_policies.py " + " ".join(sys.argv[1:])
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda s: run_one(a.root, a.scenario, s, a.extra), a.seeds))
    save_results(stem, {"command": command, "results": results}, markdown(a.scenario, results, command))


if __name__ == "__main__":
    main()
