"""Orchestration overhead: the default loop through ``selfimprove run`` vs its bare stage functions, side by side.

Two clones of this repository's HEAD under ``--root``, started together (one core each on this 2-core machine):

- **flow**: ``selfimprove run --apply never`` (Prefect flow and temporary server, one DVC experiment, a freshness
  check and a ``dvc commit`` per stage, MLflow runs, registry versions, artifacts); its wall time, from process
  start to exit, and the CPU time of its process tree;
- **bare**: the same stage functions (``run_bootstrap``, ``run_evaluate`` for r0, then ``run_sample``,
  ``run_verify``, ``run_validate``, ``run_finetune``, ``run_evaluate`` per round, ``run_summary``) called in one
  Python process on the same ``params.yaml`` with a null tracker (no Prefect, no DVC, no MLflow); each stage's
  wall time.

Overhead = flow wall / sum of the bare stages' wall. Both runs produce the same models (same seed and code), so the
work inside the stages is the same; what differs is what the product adds around them, plus the Python start-up
and imports of the flow process. Results: ``bench/results/overhead.json`` and ``.md``.

    .venv/bin/python bench/overhead.py
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import clone, env, head_commit, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

BARE = r'''
import json, sys, time
from selfimprove.params import load_config
from selfimprove.paths import RoundPaths
from selfimprove.stages import (run_bootstrap, run_evaluate, run_finetune, run_sample, run_summary, run_validate,
                                run_verify)
from selfimprove.tracker import NullTracker

t_start = time.perf_counter()
config = load_config("params.yaml")
t = NullTracker()
times = []
def timed(name, fn, key):
    t0 = time.perf_counter()
    fn(config, RoundPaths.for_round(config, key, "."), t)
    times.append({"stage": name, "round": key, "seconds": round(time.perf_counter() - t0, 2)})
timed("bootstrap", run_bootstrap, "r0")
timed("evaluate", run_evaluate, "r0")
for key in config.rounds:
    for name, fn in (("sample", run_sample), ("verify", run_verify), ("validate", run_validate),
                     ("finetune", run_finetune), ("evaluate", run_evaluate)):
        timed(name, fn, key)
timed("summary", run_summary, "r0")
print(json.dumps({"stages": times, "process_s": round(time.perf_counter() - t_start, 2)}))
'''


def run_flow(root: Path) -> dict[str, Any]:
    proj = clone(root, "flow")
    # the sequential runner: the bare stages run one after another too, so the ratio is what orchestration adds
    args = [str(Path(sys.executable).parent / "selfimprove"), "run", "--name", "overhead", "--apply", "never",
            "-S", "execution.runner=sequential"]
    t0 = time.perf_counter()
    with (root / "flow.log").open("w") as log:
        proc = subprocess.Popen(args, cwd=proj, env=env(proj), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def run_bare(root: Path) -> dict[str, Any]:
    proj = clone(root, "bare")
    t0 = time.perf_counter()
    with (root / "bare.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", BARE], cwd=proj, env=env(proj), stdout=subprocess.PIPE,
                                stderr=log, text=True)
        out, _ = proc.communicate()
    data = json.loads(out.strip().splitlines()[-1])
    return data | {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                   "stage_sum_s": round(sum(s["seconds"] for s in data["stages"]), 1)}


def markdown(r: dict[str, Any]) -> str:
    f, b = r["flow"], r["bare"]
    lines = ["# Orchestration overhead: `selfimprove run` vs the bare stage functions", "",
             f"Command: `{r['command']}` (HEAD {r['commit']}, cloned twice; the two runs side by side on this 2-core "
             "machine, threads=1 each).", "",
             "| run | wall s | notes |", "|---|---:|---|",
             f"| `selfimprove run` (Prefect + DVC + MLflow) | {f['wall_s']} | exit {f['exit']}; process tree CPU "
             f"{f['cpu_s']} s |",
             f"| bare stage functions, sum of stage wall times | {b['stage_sum_s']} | one process; its whole run "
             f"{b['process_s']} s (imports and config included) |", "",
             f"**Overhead: {f['wall_s'] / b['stage_sum_s']:.2f}x** (flow wall / sum of bare stages).", "",
             "| stage | round | bare s |", "|---|---|---:|"]
    lines += [f"| {s['stage']} | {s['round']} | {s['seconds']} |" for s in b["stages"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-overhead"))
    a = ap.parse_args()
    a.root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        flow, bare = pool.submit(run_flow, a.root), pool.submit(run_bare, a.root)
        result = {"flow": flow.result(), "bare": bare.result()}
    result["command"] = "python bench/overhead.py " + " ".join(sys.argv[1:])
    result["commit"] = head_commit()
    result["overhead"] = round(result["flow"]["wall_s"] / result["bare"]["stage_sum_s"], 3)
    save_results("overhead", result, markdown(result))


if __name__ == "__main__":
    main()
