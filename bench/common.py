"""What the benchmarks share: where results go, the commit they measured, a fresh clone per run, the environment a
run gets, reading a finished run back, number formatting, and answers of another surface shape. Benchmarks import
this module and the product's public API only (never tests/ or private names)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def clone(root: Path, name: str) -> Path:
    dest = root / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def save_results(stem: str, data: dict[str, Any], md: str) -> None:
    """``bench/results/<stem>.json`` (the raw data) and ``<stem>.md`` (the summary), and the summary on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


def env(proj: Path | None = None) -> dict[str, str]:
    """The environment of a run in a clone: this venv's binaries and, given the clone, the clone's own code first
    (the venv's package is an editable install of this checkout: without it a run would import the checkout's
    working tree, edits made while a benchmark runs included)."""
    out = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out.pop("PREFECT_API_URL", None)
    if proj is not None:
        out["PYTHONPATH"] = os.pathsep.join([str(Path(proj).resolve() / "src"), str(Path(proj).resolve())]
                                            + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else []))
    return out


def read_back(proj: Path, name: str, out: dict[str, Any]) -> dict[str, Any]:
    """What a finished run left: its record, its params (the decisions) and per-round metrics."""
    record_path = proj / ".selfimprove" / "runs" / f"{name}.json"
    if not record_path.exists():
        return out
    record = json.loads(record_path.read_text())
    out["stopped"] = record.get("stopped")
    out["health"] = record.get("health")
    rev = record.get("experiment_rev")
    if not rev:
        out["error"] = record.get("error")
        return out
    from selfimprove.params import config_from_text

    params = subprocess.run(["git", "show", f"{rev}:params.yaml"], cwd=proj, capture_output=True, text=True).stdout
    cfg = config_from_text(params, f"{rev}:params.yaml")
    report = json.loads(subprocess.run([str(Path(sys.executable).parent / "selfimprove"), "report", "--name", name,
                                        "--json"], cwd=proj, env=env(proj), capture_output=True, text=True).stdout)
    cum = 0.0
    rounds = []
    for r in report["rounds"]:
        m = r["metrics"]
        key = f"r{r['round']}"
        if key != "r0" and key not in cfg.rounds:  # a round that failed and left the run's params
            continue
        metrics_file = subprocess.run(["git", "show", f"{rev}:runs/metrics/{key}.json"], cwd=proj,
                                      capture_output=True, text=True).stdout
        m = json.loads(metrics_file) | {k: v for k, v in m.items() if k.startswith("round/")} if metrics_file else m
        cum += m.get("round/cpu_seconds", 0.0)
        acc = {int(k[len("accuracy/d"):]): v for k, v in m.items()
               if k.startswith("accuracy/d") and k.count("/") == 1}
        rc = cfg.rounds.get(key)
        rounds.append({
            "round": key, "prev": rc.prev if rc else None, "sampled": rc.difficulties if rc else cfg.bootstrap.difficulties,
            "why": rc.why if rc else "bootstrap", "solved_up_to": m.get("solved_up_to"),
            "max_at_95": max([d for d, a in acc.items() if a >= 0.95], default=0),
            "accuracy": {d: round(a, 3) for d, a in sorted(acc.items())},
            "label_precision": m.get("acceptance_precision"), "proxy_agreement": m.get("health/proxy_agreement"),
            "pool_gap": m.get("health/pool_gap"), "cpu_s": round(m.get("round/cpu_seconds", 0.0), 1),
            "cum_cpu_min": round(cum / 60, 2),
        })
    out["rounds"] = rounds
    return out


def fmt(v: Any, nd: int = 2) -> str:
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def other_shape(g: str) -> str | None:
    """An equivalent of another surface shape, only where it is certain."""
    if m := re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", g):
        return f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if "\\frac" in g and "\\dfrac" not in g:
        return g.replace("\\frac", "\\dfrac")
    if m := re.fullmatch(r"\\sqrt\{(\d+)\}", g):
        return f"\\sqrt {m.group(1)}" if len(m.group(1)) == 1 else f"\\sqrt{{{m.group(1)}}}^{{1}}"
    if m := re.fullmatch(r"(\d+)\\sqrt\{?(\d+)\}?", g):
        return f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}"
    if m := re.fullmatch(r"\\text\{\(([A-E])\)\}", g):
        return m.group(1)
    if m := re.fullmatch(r"(\d+)\^\\circ", g):
        return f"{m.group(1)} degrees"
    if re.fullmatch(r"-?\d+", g):
        return f"{g}.0"
    if re.fullmatch(r"\(.*\)", g) and ", " in g:
        return g.replace(", ", ",")
    return None


def run_variant(root: Path, variant: str, seed: int, overrides: list[str], keys: Sequence[str],
                extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """``selfimprove run`` of one variant and seed in its own clone of HEAD (its log beside it), then each round's
    held-out accuracy per difficulty, mean, the metrics named in ``keys`` and ``extra(metrics)``, read back from
    MLflow (``selfimprove report --json``); minutes of wall time, and the log's tail when the run failed."""
    name = f"{variant}-s{seed}"
    proj = clone(root, name)
    bin_ = Path(sys.executable).parent / "selfimprove"
    args = [str(bin_), "run", "--name", name, "--apply", "never", "-S", f"seed={seed}",
            *[x for o in overrides for x in ("-S", o)]]
    t0 = time.perf_counter()
    with (root / f"{name}.log").open("w") as log:
        proc = subprocess.run(args, cwd=proj, env=env(proj), stdout=log, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {"variant": variant, "seed": seed, "exit": proc.returncode,
                           "wall_min": round((time.perf_counter() - t0) / 60, 2), "rounds": []}
    rep = subprocess.run([str(bin_), "report", "--name", name, "--json"], cwd=proj, env=env(proj),
                         capture_output=True, text=True)
    for r in (json.loads(rep.stdout)["rounds"] if rep.stdout.strip() else []):
        m = r["metrics"]
        out["rounds"].append({"round": r["round"],
                              "accuracy": {k.split("/")[1]: round(v, 3) for k, v in sorted(m.items())
                                           if k.startswith("accuracy/d") and k.count("/") == 1},
                              "mean": m.get("accuracy"), **(extra(m) if extra else {}),
                              **{k: m[k] for k in keys if k in m}})
    if proc.returncode != 0:
        out["log_tail"] = (root / f"{name}.log").read_text()[-1500:]
    print(json.dumps(out)[:600], flush=True)
    return out
