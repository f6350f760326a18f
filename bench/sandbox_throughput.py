"""Sandboxed runs per second: the bwrap fork-server pool against a plain subprocess and a fresh bwrap per run.

What: runs the same workloads through each runner, interleaved round by round so load from other work on
the machine hits every runner alike, and reports the median runs/s (with min and max) sequentially and
with 2 in parallel:

* ``trivial``: a program defining ``add`` and printing three results (the workload of notes/reliability.md);
* ``humaneval``: the 164 HumanEval canonical solutions with their tests. The subprocess and fresh-bwrap
  runners execute ``prompt + solution + test + check(entry_point)`` and read the exit code (the classic,
  forgeable harness); ``pool-program`` does the same inside the pool; ``pool-verifier`` runs the real
  ``sandboxed_tests`` protocol (separate candidate and tester processes, verdict from the tester's report).

Why side by side: the machine is shared, so absolute numbers drift; the ratios within one run do not.

How: ``.venv/bin/python bench/sandbox_throughput.py [--rounds 3]`` writes
``bench/results/sandbox_throughput.json`` and ``.md``. Needs bubblewrap; run as root it drops to uid 65534.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from selfimprove.io import atomic_path, write_json
from selfimprove.types import Completion, Problem
from selfimprove.verifiers.code import build_program, prepare_tests
from selfimprove.verifiers.sandbox import Job, Limits, SandboxConfig, SandboxPool, bwrap_argv, check_isolation
from selfimprove.verifiers.sandbox.pool import sandbox_env

logger = logging.getLogger("bench.sandbox_throughput")

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("SELFIMPROVE_BENCHMARKS_DIR", ROOT.parent / "shared" / "benchmarks"))
PYTHON = "/usr/bin/python3"
TRIVIAL = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nprint(add(3, 4))\nprint(add(5, 6))\n"
TRIVIAL_OUT = b"3\n7\n11\n"
LIMITS = Limits(cpu_s=5, wall_s=20, memory_mb=1024)


def _bounded(argv: list[str], user: tuple[int, int] | None, limit: int = 1 << 20) -> tuple[int, bytes]:
    """Run a trusted program, reading at most ``limit`` bytes of stdout (stderr discarded)."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user[0], group=user[1], extra_groups=[])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd="/", env=sandbox_env(), **kwargs)
    assert proc.stdout is not None
    out = proc.stdout.read(limit)
    proc.stdout.close()
    return proc.wait(timeout=60), out


class Runners:
    """The runners under test; each ``run_*`` takes a batch and a parallelism and returns successes."""

    def __init__(self) -> None:
        self.config = SandboxConfig()
        self.bwrap = check_isolation(self.config)
        self.run_as = self.config.run_as()
        self.pools: dict[int, SandboxPool] = {}

    def pool(self, workers: int) -> SandboxPool:
        if workers not in self.pools:
            self.pools[workers] = SandboxPool(workers, limits=LIMITS)
        return self.pools[workers]

    def close(self) -> None:
        for p in self.pools.values():
            p.close()

    def _threads(self, fn: Callable[[Any], bool], items: Sequence[Any], parallel: int) -> int:
        with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
            return sum(ex.map(fn, items))

    def subprocess(self, programs: Sequence[tuple[str, bytes | None]], parallel: int) -> int:
        def one(item: tuple[str, bytes | None]) -> bool:
            rc, out = _bounded([PYTHON, "-s", "-S", "-B", "-c", item[0]], None)
            return rc == 0 and (item[1] is None or out == item[1])

        return self._threads(one, programs, parallel)

    def fresh_bwrap(self, programs: Sequence[tuple[str, bytes | None]], parallel: int) -> int:
        def one(item: tuple[str, bytes | None]) -> bool:
            argv = bwrap_argv(self.config, self.bwrap, [PYTHON, "-s", "-S", "-B", "-c", item[0]])
            rc, out = _bounded(argv, self.run_as)
            return rc == 0 and (item[1] is None or out == item[1])

        return self._threads(one, programs, parallel)

    def pool_program(self, programs: Sequence[tuple[str, bytes | None]], parallel: int) -> int:
        results = self.pool(parallel).map([Job.program(code) for code, _ in programs])
        return sum(r.outcome == "ok" and (want is None or r.output.encode() == want)
                   for r, (_, want) in zip(results, programs, strict=True))

    def pool_verifier(self, jobs: Sequence[Job], parallel: int) -> int:
        return sum(bool(r.report and r.report.get("loaded") and r.report.get("calls")
                        and not any(t["failed"] for t in r.report["tests"]) and not r.report.get("check_error"))
                   for r in self.pool(parallel).map(jobs))


def humaneval_workloads() -> tuple[list[tuple[str, bytes | None]], list[Job]]:
    with open(BENCH / "humaneval" / "HumanEval.jsonl") as f:
        rows = [json.loads(line) for line in f]
    classic = [(r["prompt"] + r["canonical_solution"] + "\n" + r["test"] + f"\ncheck({r['entry_point']})\n", None)
               for r in rows]
    jobs = []
    for r in rows:
        problem = Problem(id=r["task_id"], prompt=r["prompt"], tests={
            "format": "humaneval", "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]})
        prep = prepare_tests(problem)
        comp = Completion(id=r["task_id"], problem_id=r["task_id"], round=0, sample_idx=0, text=r["canonical_solution"])
        sources, _code, _how = build_program(prep, comp.text)
        jobs.append(Job.tests(sources, prep.spec))
    return classic, jobs


def run_benchmark(rounds: int = 3, n_trivial_pool: int = 400, n_trivial_slow: int = 60) -> dict[str, Any]:
    """Measure every (workload, runner, parallelism) once per round, interleaved; return the summary."""
    runners = Runners()
    classic, verifier_jobs = humaneval_workloads()
    trivial = [(TRIVIAL, TRIVIAL_OUT)]
    cases: list[tuple[str, str, Callable[[int], int], int]] = [
        ("trivial", "subprocess", lambda p: runners.subprocess(trivial * n_trivial_slow, p), n_trivial_slow),
        ("trivial", "fresh-bwrap", lambda p: runners.fresh_bwrap(trivial * n_trivial_slow, p), n_trivial_slow),
        ("trivial", "pool", lambda p: runners.pool_program(trivial * n_trivial_pool, p), n_trivial_pool),
        ("humaneval", "subprocess", lambda p: runners.subprocess(classic, p), len(classic)),
        ("humaneval", "fresh-bwrap", lambda p: runners.fresh_bwrap(classic, p), len(classic)),
        ("humaneval", "pool-program", lambda p: runners.pool_program(classic, p), len(classic)),
        ("humaneval", "pool-verifier", lambda p: runners.pool_verifier(verifier_jobs, p), len(verifier_jobs)),
    ]
    t0 = time.monotonic()
    cold = SandboxPool(2, limits=LIMITS)
    cold_start_s = time.monotonic() - t0
    first = time.monotonic()
    cold.run(Job.program(TRIVIAL))
    first_result_s = time.monotonic() - first
    cold.close()

    for parallel in (1, 2):  # pools are started (and warmed) outside the timed rounds
        runners.pool_program(trivial * 20, parallel)
    samples: dict[tuple[str, str, int], list[float]] = {}
    failures: dict[tuple[str, str, int], int] = {}
    load_before = os.getloadavg()
    try:
        for r in range(rounds):
            for parallel in (1, 2):
                for workload, runner, fn, n in cases:
                    t = time.monotonic()
                    ok = fn(parallel)
                    rate = n / (time.monotonic() - t)
                    key = (workload, runner, parallel)
                    samples.setdefault(key, []).append(rate)
                    failures[key] = failures.get(key, 0) + (n - ok)
                    logger.info("round %d %-9s %-13s x%d: %7.1f runs/s (%d/%d ok)", r + 1, workload, runner,
                                parallel, rate, ok, n)
    finally:
        runners.close()
    load_after = os.getloadavg()

    results = []
    for (workload, runner, parallel), rates in samples.items():
        base = statistics.median(samples[(workload, "subprocess", parallel)])
        results.append({
            "workload": workload, "runner": runner, "parallel": parallel,
            "runs_per_s": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1),
            "ms_per_run": round(1000 / statistics.median(rates) * parallel, 2),
            "vs_subprocess": round(statistics.median(rates) / base, 2),
            "failed_runs": failures[(workload, runner, parallel)],
        })
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, check=False, timeout=10).stdout.decode().strip()
    except OSError:
        commit = ""
    with os.popen("bwrap --version") as f:
        bwrap_version = f.read().strip()
    return {
        "benchmark": "sandbox_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "host_python": sys.version.split()[0],
                    "sandbox_python": PYTHON, "bwrap": bwrap_version, "loadavg_before": load_before,
                    "loadavg_after": load_after, "euid": os.geteuid()},
        "rounds": rounds,
        "sizes": {"trivial_pool": n_trivial_pool, "trivial_per_run": n_trivial_slow, "humaneval": len(classic)},
        "pool_cold_start_s": round(cold_start_s, 3),
        "pool_first_result_s": round(first_result_s, 4),
        "target": {"trivial_pool_parallel2_runs_per_s": 150},
        "results": sorted(results, key=lambda x: (x["workload"], x["parallel"], x["runner"])),
    }


def to_markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [
        "# Sandbox throughput",
        "",
        (f"{summary['created']}, commit {summary['commit']}, {m['cpus']} CPUs, {m['bwrap']}, sandbox Python "
         f"{m['sandbox_python']}; load average {m['loadavg_before'][0]:.1f} before, "
         f"{m['loadavg_after'][0]:.1f} after (shared machine). Median of {summary['rounds']} interleaved rounds "
         f"(min-max). Pool cold start {summary['pool_cold_start_s']} s for 2 sandboxes, first result "
         f"{summary['pool_first_result_s'] * 1000:.0f} ms later."),
        "",
        "| workload | runner | parallel | runs/s | min-max | ms/run | vs subprocess | failed runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        lines.append(f"| {r['workload']} | {r['runner']} | {r['parallel']} | {r['runs_per_s']} | {r['min']}-{r['max']} "
                     f"| {r['ms_per_run']} | {r['vs_subprocess']}x | {r['failed_runs']} |")
    lines += [
        "",
        ("Runners: `subprocess` = `/usr/bin/python3 -c` per run, no isolation; `fresh-bwrap` = one bubblewrap "
         "sandbox per run with the pool's flags; `pool` / `pool-program` = the fork-server pool running the "
         "program; `pool-verifier` = the `sandboxed_tests` protocol (candidate and tester processes, verdict "
         "from the tester's report). HumanEval rows for the first three runners execute "
         "`prompt + solution + test + check(entry_point)` and read the exit code."),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trivial-pool", type=int, default=400, help="trivial runs per round for the pool")
    parser.add_argument("--trivial-per-run", type=int, default=60, help="trivial runs per round for per-run runners")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = run_benchmark(args.rounds, args.trivial_pool, args.trivial_per_run)
    write_json(args.out / "sandbox_throughput.json", summary)
    with atomic_path(args.out / "sandbox_throughput.md") as tmp:
        tmp.write_text(to_markdown(summary))
    logger.info("%s", to_markdown(summary))


if __name__ == "__main__":
    main()
