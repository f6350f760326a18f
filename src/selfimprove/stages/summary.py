"""``summary``: accuracy across rounds, as a CSV for ``dvc plots`` and a PNG for people and MLflow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from selfimprove.config import Config
from selfimprove.io import atomic_path
from selfimprove.paths import RoundPaths, summary_dir
from selfimprove.stages.common import StageReport
from selfimprove.tracking import Tracker

log = logging.getLogger(__name__)


def load_round_metrics(config: Config, project: str | Path = ".") -> list[dict]:
    rows = []
    for key in ["r0", *config.round_keys()]:
        p = RoundPaths.for_round(config, key, project).metrics
        if p.exists():
            rows.append(json.loads(p.read_text()))
    return rows


def run_summary(config: Config, paths: RoundPaths | None = None, tracker: Tracker | None = None, project: str | Path = ".") -> StageReport:
    """Rebuild ``runs/summary/accuracy.{csv,png}`` from every round's metrics file.

    Called by every evaluate (so the plot is always current) and by ``selfimprove summary``. The files are
    derived views, not DVC outputs; ``dvc plots show`` reads the CSV (see the ``plots`` section of dvc.yaml).
    """
    if paths is not None:
        project = paths.project
    rounds = load_round_metrics(config, project)
    buckets = sorted({k.split("/", 1)[1] for r in rounds for k in r if k.startswith("accuracy/")},
                     key=lambda s: (len(s), s))
    out_dir = summary_dir(config, project)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["round," + ",".join(f"accuracy_{b}" for b in buckets) + ",accuracy,acceptance_precision"]
    for r in rounds:
        vals = [r.get(f"accuracy/{b}", "") for b in buckets] + [r.get("accuracy", ""), r.get("acceptance_precision", "")]
        lines.append(f"{int(r['round'])}," + ",".join("" if v == "" else f"{v:.4f}" for v in vals))
    with atomic_path(out_dir / "accuracy.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot(rounds, buckets, out_dir / "accuracy.png")
    if tracker is not None:
        tracker.log_artifact(out_dir / "accuracy.png", "plots")
    return StageReport(stage="summary", round=len(rounds) - 1, outputs={"csv": str(out_dir / "accuracy.csv")})


def _plot(rounds: list[dict], buckets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [int(r["round"]) for r in rounds]
    for b in buckets:
        ys = [r.get(f"accuracy/{b}") for r in rounds]
        ax.plot(xs, ys, marker="o", label=b.replace("d", "") + " digits" if b.startswith("d") else b)
    prec = [(int(r["round"]), r["acceptance_precision"]) for r in rounds if "acceptance_precision" in r]
    if prec:
        ax.plot([p[0] for p in prec], [p[1] for p in prec], "k--", marker="x", label="label precision")
    ax.set_xlabel("round")
    ax.set_ylabel("greedy accuracy (held-out)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    ax.set_title("Self-improvement: accuracy per difficulty across rounds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
