"""Sequential vs Ray: the default loop through ``selfimprove run`` with ``execution.runner=sequential`` and ``ray``.

Each run in its own clone of this repository's HEAD under ``--root`` (its own DVC cache, so nothing is restored
from another run), one after another so that each has the machine to itself (the ratio is about using the cores,
so the two must not share them); ``--repeats N`` alternates the order (seq, ray, ray, seq, ...). For each run:
wall time from process start to exit, CPU time of the process tree that was reaped (Ray's workers included when
they are children of the run's process), each stage's wall time (the flow's "done in Ns" log lines), and the
run's ``dvc.lock``: equal lock files mean the two runners wrote byte-identical datasets, models and metrics.
Results: ``bench/results/fanout.json`` and ``.md``.

    .venv/bin/python bench/fanout.py [--repeats 1] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import clone, env, head_commit, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DONE = re.compile(r"(\w+(?:@r\d+)?): done in (\d+)s")


def _busy_cpu_s() -> float:
    """CPU seconds this machine spent busy (all processes: Ray's workers are not children the run reaps)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(root: Path, runner: str, i: int, extra: list[str]) -> dict[str, Any]:
    name = f"{runner}-{i}"
    proj = clone(root, name)
    args = [str(Path(sys.executable).parent / "selfimprove"), "run", "--name", name, "--apply", "never",
            "-S", f"execution.runner={runner}"]
    for o in extra:
        args += ["-S", o]
    log_path = root / f"{name}.log"
    busy0 = _busy_cpu_s()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=proj, env=env(proj), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    stages = {m.group(1): int(m.group(2)) for m in DONE.finditer(text)}
    out = {"runner": runner, "name": name, "exit": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "machine_cpu_s": round(_busy_cpu_s() - busy0, 1),
           "stages": stages, "log": str(log_path)}
    record = proj / ".selfimprove" / "runs" / f"{name}.json"
    rev = json.loads(record.read_text()).get("experiment_rev") if record.exists() else None
    if rev:
        lock = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=proj, capture_output=True, text=True).stdout
        out["lock_sha256"] = hashlib.sha256(lock.encode()).hexdigest()
        metrics = subprocess.run(["git", "show", f"{rev}:runs/summary/metrics.json"], cwd=proj, capture_output=True,
                                 text=True).stdout
        out["summary"] = json.loads(metrics) if metrics.strip() else None
    return out


def markdown(r: dict[str, Any]) -> str:
    runs = r["runs"]
    seq = [x for x in runs if x["runner"] == "sequential"]
    ray = [x for x in runs if x["runner"] == "ray"]
    same = len({x.get("lock_sha256") for x in runs}) == 1 and all(x.get("lock_sha256") for x in runs)
    stages = list(dict.fromkeys(k for x in runs for k in x["stages"]))
    lines = ["# Sequential vs Ray: the default loop, `selfimprove run`", "",
             f"Command: `{r['command']}` (HEAD {r['commit']}, one clone per run, runs one after another on this "
             f"{r['cpus']}-core machine; threads=1 per unit).", "",
             "| run | exit | wall s | busy CPU s, whole machine | CPU s of the reaped process tree | dvc.lock sha256 |",
             "|---|---|---:|---:|---:|---|"]
    lines += [f"| {x['name']} | {x['exit']} | {x['wall_s']} | {x.get('machine_cpu_s', '')} | {x['cpu_s']} | "
              f"{str(x.get('lock_sha256'))[:12]} |" for x in runs]
    lines += ["", "The reaped tree's CPU leaves out Ray's workers (children of Ray's own processes, not of the run); "
              "the machine's busy CPU counts everything, other users of this shared machine included."]
    if seq and ray:
        ms = sum(x["wall_s"] for x in seq) / len(seq)
        mr = sum(x["wall_s"] for x in ray) / len(ray)
        lines += ["", f"**Wall time ray / sequential: {mr / ms:.2f}x** ({mr:.0f} s vs {ms:.0f} s, mean of "
                  f"{len(ray)} and {len(seq)} run(s)). Same bytes (every run's dvc.lock identical): "
                  f"**{'yes' if same else 'NO'}**."]
    lines += ["", "Stage wall seconds (the flow's own log):", "",
              "| stage | " + " | ".join(x["name"] for x in runs) + " |", "|---|" + "---:|" * len(runs)]
    lines += [f"| {s} | " + " | ".join(str(x["stages"].get(s, "")) for x in runs) + " |" for s in stages]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-fanout"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("-S", "--set", dest="extra", action="append", default=[])
    a = ap.parse_args()
    a.root.mkdir(parents=True, exist_ok=True)
    order = []
    for i in range(a.repeats):
        order += [("sequential", i), ("ray", i)] if i % 2 == 0 else [("ray", i), ("sequential", i)]
    runs = []
    for runner, i in order:
        runs.append(run(a.root, runner, i, a.extra))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "summary"}), flush=True)
    result = {"runs": runs, "command": "python bench/fanout.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
              "commit": head_commit()}
    save_results("fanout", result, markdown(result))


if __name__ == "__main__":
    main()
