"""Runs side by side: which params differ between them, their headline numbers, and their plots overlaid.

Every run is a DVC experiment whose commit holds its ``params.yaml`` and ``runs/summary/metrics.json``, so runs
started from the Prefect UI (which never touch the workspace) are compared as easily as the workspace's own.
``selfimprove compare [NAME ...]`` prints the table (only the keys that differ, so it fits a 100-column
terminal); ``selfimprove plots [NAME ...]`` renders ``dvc plots diff`` of the runs into ``dvc_plots/index.html``.
Without names, both take the latest finished runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from selfimprove import experiments

#: the vega plots of dvc.yaml that overlay runs; the PNG plots are one run's pictures (MLflow, Prefect show them)
DIFF_PLOTS = ["accuracy_across_rounds", "loop_health", "second_attempts"]
#: headline numbers (runs/summary/metrics.json) shown under the params
HEADLINE = ["rounds", "accuracy", "best_round", "best_accuracy", "label_precision_min", "accepted_total"]


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (the ``-S`` form) of a nested mapping; lists, scalars and a round's entry are leaves.

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "rounds": {"r1": {"prev": "r0"}}})
    {'a.b': 1, 'a.c': [1, 2], 'd': None, 'rounds.r1': {'prev': 'r0'}}
    """
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and prefix != "rounds":  # a round reads best as one entry
            out |= flatten(v, key)
        else:
            out[key] = v
    return out


def differing(params: dict[str, dict[str, Any]]) -> list[str]:
    """The dotted keys whose values are not the same in every run (missing counts as different), sorted.

    >>> differing({"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3, "z": 0}})
    ['y', 'z']
    """
    flat = [flatten(p) for p in params.values()]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({json.dumps(f.get(k, "<absent>"), sort_keys=True) for f in flat}) > 1]


def _show(home: Path, ref: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=home, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def latest_runs(home: Path, n: int) -> list[str]:
    """The ``n`` most recent finished runs that are DVC experiments, oldest first."""
    refs = experiments.experiment_refs(home)
    done = [r for r in experiments.list_records(home) if r.status == "finished" and r.name in refs]
    return [r.name for r in done[-n:]]


def resolve(home: Path, names: list[str] | None, last: int) -> list[str]:
    names = list(names or []) or latest_runs(home, last)
    if not names:
        raise experiments.ExperimentError("no finished runs to compare yet: start one with `selfimprove run` or from "
                                          "the Prefect UI (make ui)")
    refs = experiments.experiment_refs(home)
    unknown = [n for n in names if n not in refs]
    if unknown:
        raise experiments.ExperimentError(f"no DVC experiment named {', '.join(map(repr, unknown))}; "
                                          f"`selfimprove runs` lists the runs ({len(refs)} experiments here)")
    return names


def table(home: str | Path, names: list[str] | None = None, last: int = 3) -> dict[str, Any]:
    """``{"runs": [...], "params": {key: [value per run]}, "metrics": {name: [value per run]}}``: the params
    that differ between the runs and their headline numbers."""
    home = experiments.git_root(home)
    names = resolve(home, names, last)
    refs = experiments.experiment_refs(home)
    params = {n: yaml.safe_load(_show(home, refs[n], experiments.PARAMS) or "{}") or {} for n in names}
    for p in params.values():
        p.pop("eval_rounds", None)  # a YAML merge of `rounds` (dvc.yaml's evaluate stages): the same difference twice
    keys = differing(params)
    flat = {n: flatten(p) for n, p in params.items()}
    metrics = {n: json.loads(_show(home, refs[n], "runs/summary/metrics.json") or "{}") for n in names}
    return {"runs": names,
            "params": {k: [flat[n].get(k, "-") for n in names] for k in keys},
            "metrics": {m: [metrics[n].get(m, "-") for n in names] for m in HEADLINE
                        if any(m in metrics[n] for n in names)}}


def plots(home: str | Path, names: list[str] | None = None, last: int = 3, out: str = "dvc_plots") -> Path:
    """Overlay the runs' plots with ``dvc plots diff`` (offline HTML, the project's template); returns the page.

    One line per run and field in each plot (colour: field, dash and point shape: run; ``.dvc/plots/rounds.json``).
    The workspace is among them when it holds a run (``dvc exp apply`` or a CLI run with the workspace's params)."""
    home = experiments.git_root(home)
    names = resolve(home, names, last)
    cmd = [sys.executable, "-m", "dvc", "plots", "diff", *names, "--targets", *DIFF_PLOTS, "-o", out]
    proc = subprocess.run(cmd, cwd=home, capture_output=True, text=True)
    if proc.returncode != 0:
        raise experiments.ExperimentError(f"dvc plots diff failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return home / out / "index.html"
