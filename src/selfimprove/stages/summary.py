"""``summary``: the loop across rounds, from every round's metrics file (``runs/metrics/rN.json``).

Writes ``runs/summary/accuracy.csv`` (``dvc plots show``), ``accuracy.png`` (for people, MLflow and the Prefect
artifact), ``health.csv`` and ``health.png`` (the ``health/*`` metrics of ``selfimprove.health`` across rounds:
diversity, collapse, exploration, accepted labels per difficulty, proxy vs precision) and ``metrics.json`` (the headline numbers ``dvc exp show`` lists: the last round's accuracy per
difficulty, its label precision, the best round). A DVC stage of its own (``dvc.yaml: summary``), run after the
last round; nothing in it depends on time, so the same rounds give the same bytes.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from pathlib import Path

from selfimprove.config import Config
from selfimprove.correction import FLIP_KEYS
from selfimprove.io import atomic_path, write_json
from selfimprove.paths import RoundPaths, metrics_dir, summary_dir
from selfimprove.stages.common import StageReport
from selfimprove.tracker import Tracker

log = logging.getLogger(__name__)


def load_round_metrics(config: Config, project: str | Path = ".") -> list[dict]:
    """The metrics files of round 0 and every round in params, in round order (missing ones skipped)."""
    rows = []
    for key in ["r0", *config.round_keys()]:
        p = RoundPaths.for_round(config, key, project).metrics
        if p.exists():
            rows.append(json.loads(p.read_text()))
    return rows


def headline(rounds: list[dict], target: str = "accuracy") -> dict[str, Any]:
    """The numbers ``dvc exp show`` compares runs by: the last round's, plus the best round by ``target``
    (``loop.target.metric``)."""
    if not rounds:
        return {}
    last = rounds[-1]
    out: dict[str, Any] = {"rounds": len(rounds) - 1, "last_round": int(last["round"])}
    for k, v in last.items():
        if k == "accuracy" or (k.startswith("accuracy/") and k.count("/") == 1):
            out[k.replace("/", "_")] = v
    if "acceptance_precision" in last:
        out["label_precision"] = last["acceptance_precision"]
    precs = [r["acceptance_precision"] for r in rounds if "acceptance_precision" in r]
    if precs:
        out["label_precision_min"] = min(precs)
    best = max(rounds, key=lambda r: (r.get(target, float("-inf")), -int(r["round"])))
    out["best_round"] = int(best["round"])
    out["best_accuracy"] = best.get("accuracy")
    if target != "accuracy":
        out[f"best_{target.replace('/', '_')}"] = best.get(target)
    if "solved_up_to" in last:
        out["solved_up_to"] = last["solved_up_to"]
        out["solved_up_to_max"] = max(r.get("solved_up_to", 0) for r in rounds)
    out["accepted_total"] = int(last.get("validate/accepted_total", 0))
    out["round_accuracy"] = {f"r{int(r['round'])}": r["accuracy"] for r in rounds if "accuracy" in r}
    return {k: v for k, v in out.items() if v is not None}


def run_summary(config: Config, paths: RoundPaths, tracker: Tracker | None = None) -> StageReport:
    """Rebuild ``runs/summary/`` from the metrics files of the rounds in params."""
    project = paths.project
    rounds = load_round_metrics(config, project)
    if not rounds:
        raise FileNotFoundError(f"{metrics_dir(config, project)}: no round metrics yet; run evaluate first")
    buckets = sorted({k.split("/", 1)[1] for r in rounds for k in r if k.startswith("accuracy/") and k.count("/") == 1},
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
    health_cols = health_columns(rounds)
    with atomic_path(out_dir / "health.csv") as tmp:
        tmp.write_text(health_csv(rounds, health_cols))
    acc_series = [(f"accuracy/{b}", _series_name(b)) for b in buckets] + [("accuracy", "mean"),
                                                                         ("acceptance_precision", "label precision")]
    with atomic_path(out_dir / "accuracy_curves.csv") as tmp:
        tmp.write_text(curves_csv(rounds, acc_series))
    with atomic_path(out_dir / "health_curves.csv") as tmp:  # the shares (0-1) on one scale; counts: health.png
        tmp.write_text(curves_csv(rounds, [(c, c.removeprefix("health/").removeprefix("finetune/")) for c in health_cols
                                           if c not in NOT_SHARES and not c.startswith("health/accepted/")
                                           and c not in CORRECT_HEALTH]))
    with atomic_path(out_dir / "correct_curves.csv") as tmp:  # second attempts: a plot of their own (header only
        # when the run had none); "trace" = the round's own traces, "eval" = held out
        tmp.write_text(curves_csv(rounds, [(c, c.replace("correct_eval/", "eval ").replace("correct/", "trace "))
                                           for c in health_cols if c in CORRECT_HEALTH
                                           and not c.endswith(("/delta", "/edit"))]))  # 8 series: one colour each
    _plot_health(rounds, health_cols, out_dir / "health.png")
    head = headline(rounds, config.loop.target.metric)
    write_json(out_dir / "metrics.json", head)
    if tracker is not None:
        tracker.log_artifact(out_dir / "accuracy.png", "plots")
        tracker.log_artifact(out_dir / "health.png", "plots")
    log.info("summary: %d round(s); last round accuracy %s; plot %s", len(rounds),
             f"{head.get('accuracy', float('nan')):.3f}", out_dir / "accuracy.png")
    return StageReport(stage="summary", round=int(rounds[-1]["round"]),
                       metrics={f"summary/{k}": float(v) for k, v in head.items() if not isinstance(v, dict)},
                       outputs={"csv": str(out_dir / "accuracy.csv"), "png": str(out_dir / "accuracy.png"),
                                "health_csv": str(out_dir / "health.csv"), "health_png": str(out_dir / "health.png"),
                                "curves": str(out_dir / "accuracy_curves.csv"),
                                "metrics": str(out_dir / "metrics.json")})


#: health metrics that are not shares in [0, 1] (counts, nats, tokens): health.png draws them in panels of their own
NOT_SHARES = ("health/distinct_answers", "health/answer_entropy", "health/mean_length", "acceptance_precision")


def _series_name(bucket: str) -> str:
    """``d4`` -> ``4 digits`` (arithmetic's difficulty); other buckets as they are."""
    return f"{bucket[1:]} digits" if bucket[:1] == "d" and bucket[1:].isdigit() else bucket


def curves_csv(rounds: list[dict], series: list[tuple[str, str]]) -> str:
    """``round,series,value``, one row per round and metric the round has (none where it has none, so round 0's
    label precision is absent, not 0): the long form ``dvc plots`` draws one line per series and run from, whatever
    difficulties or metrics a problem set has (``.dvc/plots/rounds.json``).

    >>> print(curves_csv([{"round": 0, "accuracy": 0.5}, {"round": 1, "accuracy": 0.75, "acceptance_precision": 1.0}],
    ...                  [("accuracy", "mean"), ("acceptance_precision", "label precision")]), end="")
    round,series,value
    0,mean,0.5000
    1,mean,0.7500
    1,label precision,1.0000
    """
    lines = ["round,series,value"]
    for r in rounds:
        for key, name in series:
            if r.get(key) is not None:
                lines.append(f"{int(r['round'])},{name},{float(r[key]):.4f}")
    return "\n".join(lines) + "\n"


def health_columns(rounds: list[dict]) -> list[str]:
    """The ``health/*`` metrics any round has, in a fixed order (then ``acceptance_precision``)."""
    keys = {k for r in rounds for k in r if k.startswith("health/")}
    fixed = [f"health/{k}" for k in ("distinct_answers", "answer_entropy", "distinct_2", "repetition_rate",
                                      "mean_length", "stop_rate", "pass_at_1", "pass_at_k", "exploration",
                                      "proxy_agreement", "pool_accuracy", "heldout_accuracy", "pool_gap")]
    accepted = sorted((k for k in keys if k.startswith("health/accepted/")), key=lambda k: (len(k), k))
    rl = [k for k in GRPO_HEALTH if any(k in r for r in rounds)]  # online RL rounds: label and reward accuracy
    fix = [k for k in CORRECT_HEALTH if any(k in r for r in rounds)]  # second attempts: acc@1, acc@2, flips
    return [k for k in fixed if k in keys] + accepted + rl + fix + ["acceptance_precision"]


#: What second attempts record (selfimprove.correction): on the round's traces, then held out (evaluate, gold).
CORRECT_HEALTH = tuple(f"{p}/{k}" for p in ("correct", "correct_eval") for k in FLIP_KEYS)
#: What a GRPO round records about its rewards against gold (selfimprove.trainers.grpo), in health.csv and the plot.
GRPO_HEALTH = ("finetune/label_accuracy", "finetune/reward_accuracy", "finetune/gold_reward")


def health_csv(rounds: list[dict], cols: list[str]) -> str:
    """One row per round: ``round,<health metrics...>,acceptance_precision`` (empty where a round has none)."""
    names = [c.removeprefix("health/").removeprefix("finetune/").replace("/", "_") for c in cols]
    lines = ["round," + ",".join(names)]
    for r in rounds:
        vals = [r.get(c, "") for c in cols]
        lines.append(f"{int(r['round'])}," + ",".join("" if v == "" else f"{float(v):.4f}" for v in vals))
    return "\n".join(lines) + "\n"


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
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version string: same rounds, same bytes
    plt.close(fig)


def _plot_health(rounds: list[dict], cols: list[str], path: Path) -> None:
    """Four panels across rounds: diversity, collapse, exploration, and the accepted tail with label quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [int(r["round"]) for r in rounds]
    panels = [
        ("answer diversity", ["health/distinct_answers", "health/answer_entropy"]),
        ("collapse", ["health/distinct_2", "health/repetition_rate", "health/stop_rate"]),
        ("exploration and generalisation", ["health/pass_at_1", "health/pass_at_k", "health/exploration",
                                            "health/pool_accuracy", "health/heldout_accuracy", "health/pool_gap"]),
        ("labels", ["health/proxy_agreement", "acceptance_precision", *GRPO_HEALTH]),
    ]
    fix = [k for k in CORRECT_HEALTH if k in cols and not k.endswith("/edit")]
    if fix:  # second attempts: acc@1, acc@2 and the flip shares (traces, then held out)
        panels.append(("second attempts (correct)", fix))
    fig, axes = plt.subplots(2, 3 if fix else 2, figsize=(15 if fix else 10, 6.4), dpi=100)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = [(x, r[k]) for x, r in zip(xs, rounds, strict=True) if k in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=k.removeprefix("health/").replace("finetune/", "rollouts "))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs)
        ax.set_xlim(min(xs) - 0.3, max(xs) + 0.3)
        if title != "answer diversity":  # shares; the pool gap may be negative
            low = min([0.0] + [float(r[k]) for r in rounds for k in keys if k in r])
            ax.set_ylim(min(-0.02, low - 0.05), 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    tail = [k for k in cols if k.startswith("health/accepted/")]
    if tail:
        twin = axes.flat[3].twinx()
        for k in tail:
            pts = [(x, r[k]) for x, r in zip(xs, rounds, strict=True) if k in r]
            twin.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=":", marker=".",
                      label="accepted " + k.rsplit("/", 1)[1])
        twin.set_ylabel("accepted labels", fontsize=8)
        twin.legend(fontsize=6, loc="lower right")
    fig.suptitle("Loop health across rounds (runs/summary/health.csv)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
