"""The per-round table: accuracy per difficulty, accepted samples, label precision, time per stage.

Built from per-round metric dicts (read back from MLflow by ``selfimprove report``, or from the DVC metrics
files), rendered with rich for people and as JSON for machines.
"""

from __future__ import annotations

from typing import Any

STAGE_TIMES = [
    ("bootstrap", "bootstrap/seconds"),
    ("propose", "propose/seconds"),
    ("sample", "sample/seconds"),
    ("verify", "verify/seconds"),
    ("correct", "correct/seconds"),
    ("validate", "validate/seconds"),
    ("finetune", "finetune/seconds"),
    ("evaluate", "evaluate/seconds"),
]


def buckets(rounds: list[dict[str, Any]]) -> list[str]:
    found = {k.split("/", 1)[1] for r in rounds for k in r["metrics"] if k.startswith("accuracy/")}
    return sorted(found, key=lambda s: (len(s), s))


def table_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per round with the columns the README and the Prefect artifact show."""
    out = []
    bs = buckets(rounds)
    for r in rounds:
        m = r["metrics"]
        row: dict[str, Any] = {"round": r["round"]}
        for b in bs:
            row[f"acc_{b}"] = m.get(f"accuracy/{b}")
        row["accuracy"] = m.get("accuracy")
        grpo = "validate/prompts" in m  # an online-RL round trains on prompts; its labels are the groups' votes
        row["accepted"] = m.get("validate/prompts") if grpo else m.get("validate/accepted")
        row["acceptance_rate"] = m.get("validate/acceptance_rate")
        row["label_precision"] = m.get("finetune/label_accuracy") if grpo else m.get("acceptance_precision")
        if "propose/proposed" in m:  # model-written problems: accepted of those written
            row["proposals"] = m.get("propose/accepted")
        states = r.get("stages") or {}
        for name, key in STAGE_TIMES:
            if name == "propose" and "propose/proposed" not in m:
                continue  # propose is off: no column
            if name == "correct" and "correct/traces" not in m:
                continue  # correct is off: no column
            if key in m:
                row[f"{name}_s"] = m[key]
            elif states.get(name) in ("fresh", "restored"):
                row[f"{name}_s"] = "c"  # no time spent: up to date, or restored from DVC's run cache
        if r.get("model_version"):
            row["model_version"] = r["model_version"]
        out.append(row)
    return out


def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if key.endswith("_s"):
        return f"{v:.0f}"
    if key in ("accepted", "round", "model_version"):
        return str(int(float(v)))
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


HEADERS = {
    "round": "round",
    "accuracy": "mean",
    "accepted": "accepted",
    "acceptance_rate": "acc.rate",
    "label_precision": "prec",
    "model_version": "model v",
    "proposals": "proposed",
    "bootstrap_s": "boot",
    "propose_s": "prop",
    "sample_s": "sample",
    "verify_s": "verify",
    "correct_s": "fix",
    "validate_s": "valid",
    "finetune_s": "tune",
    "evaluate_s": "eval",
}


def _header(c: str) -> str:
    if c in HEADERS:
        return HEADERS[c]
    if c.startswith("acc_d") and c[5:].isdigit():
        return f"{c[5:]}d"
    return c.removeprefix("acc_")


def _short(v: Any, key: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not key.endswith("_s") and key not in ("accepted", "round", "model_version"):
        return f"{float(v):.2f}"
    return _fmt(v, key)


TABLE_WIDTH = 120
#: what difficulty N means for the arithmetic set; other sets say what theirs means (ProblemSet.difficulty_legend)
DIGITS = "N-digit problems (difficulty N)"


def render(rounds: list[dict[str, Any]], title: str = "selfimprove: rounds", difficulty: str = DIGITS) -> Any:
    """A rich table: greedy accuracy per difficulty ('4d' = 4-digit problems), accepted self-labels, their
    precision against hidden gold, seconds per stage."""
    from rich.table import Table

    rows = table_rows(rounds)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    from rich import box

    cols = [c for c in cols if c not in ("acceptance_rate", "model_version")]
    times = [f"{name}_s" for name, _ in STAGE_TIMES]
    cols = [c for c in cols if c not in times] + [c for c in times if c in cols]  # stage order, not first-seen
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1))
    for c in cols:
        t.add_column(_header(c), justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*[_short(r.get(c), c) for c in cols])
    from rich.console import Group
    from rich.text import Text

    # The legend is printed under the table, not as its caption: a caption wider than the columns would make
    # rich stretch the table and cut its last column.
    return Group(t, Text(legend(difficulty), style="dim"))


def legend(difficulty: str = DIGITS) -> str:
    return LEGEND.replace(DIGITS, difficulty)


LEGEND = ("Nd: held-out greedy accuracy of the round's model on N-digit problems (difficulty N)\n"
          "accepted: self-labels kept by the filters; prec: share of them matching the hidden gold (the loop never\n"
          "sees gold); GRPO rounds: accepted = prompts trained on, prec = share of the rollout groups' majority\n"
          "labels matching gold; boot..eval: seconds per stage (c: no time spent, the stage was up to date or\n"
          "restored from DVC's run cache)")


def improvement(rounds: list[dict[str, Any]], seen: list[int], unit: str = "-digit") -> list[str]:
    """Plain-language lines on the first two difficulties beyond the labelled (bootstrap) ones: accuracy at round
    0 and at the last round, and the lowest label precision of the rounds. Says so when a difficulty was already
    solved (>= 0.95) at round 0, rather than claiming a rise."""
    if len(rounds) < 2:
        return []
    first, last = rounds[0]["metrics"], rounds[-1]["metrics"]
    beyond = sorted(int(b[1:]) for b in buckets(rounds) if b.startswith("d") and b[1:].isdigit()
                    and int(b[1:]) > max(seen or [0]))
    lines = []
    for d in beyond[:2]:
        a0, a1 = first.get(f"accuracy/d{d}"), last.get(f"accuracy/d{d}")
        if a0 is None or a1 is None:
            continue
        note = " (already >= 0.95 at round 0)" if a0 >= 0.95 else ""
        name = f"{d}{unit}" if unit == "-digit" else f"{unit} {d}"
        lines.append(f"{name} accuracy: {a0:.2f} at round 0 -> {a1:.2f} at round {rounds[-1]['round']} "
                     f"({a1 - a0:+.2f}){note}")
    precs = [r["metrics"]["acceptance_precision"] for r in rounds[1:] if "acceptance_precision" in r["metrics"]]
    if precs:
        lines.append(f"kept self-labels that match the hidden gold: {min(precs):.1%} in the worst round")
    return lines


def _cell(v: Any, key: str) -> Any:
    if v is None or isinstance(v, str):
        return "-" if v is None else v
    if key in ("round", "accepted", "model_version", "train_rows") or key.endswith("_s"):
        return int(round(float(v)))
    return round(float(v), 3)


def correction_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per round with second attempts (``correct``): on its traces, then held out (``correct_eval``)."""
    out = []
    for r in rounds:
        m = r["metrics"]
        if "correct/traces" not in m and "correct_eval/traces" not in m:
            continue
        row: dict[str, Any] = {"round": r["round"]}
        for prefix, name in (("correct", "trace"), ("correct_eval", "eval")):
            if f"{prefix}/traces" in m:
                row[f"{name} acc@1"] = _cell(m.get(f"{prefix}/acc1"), "")
                row[f"{name} acc@2"] = _cell(m.get(f"{prefix}/acc2"), "")
                row[f"{name} w->r"] = _cell(m.get(f"{prefix}/wrong_to_right"), "")
                row[f"{name} r->w"] = _cell(m.get(f"{prefix}/right_to_wrong"), "")
        if "correct/edit" in m:
            row["edit"] = _cell(m["correct/edit"], "")
        if "validate/trace_rows" in m:
            row["trace rows"] = int(m["validate/trace_rows"])
        out.append(row)
    return out


def artifact_tables(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-round numbers as two narrow tables that fit a page: accuracy per difficulty, and the round's data
    and time (accepted labels, their precision, seconds per stage)."""
    rows = table_rows(rounds)
    acc_cols = ["round"] + [c for c in (rows[0] if rows else {}) if c.startswith("acc_")] + ["accuracy"]
    data_cols = ["round", "accepted", "acceptance_rate", "label_precision"] + [f"{n}_s" for n, _ in STAGE_TIMES]
    acc = [{_header(c): _cell(r.get(c), c) for c in acc_cols} for r in rows]
    data = [{_header(c): _cell(r.get(c), c) for c in data_cols if any(x.get(c) is not None for x in rows)} for r in rows]
    tables = [
        {"name": "accuracy", "title": "held-out greedy accuracy per difficulty (Nd = N-digit problems) and mean",
         "rows": acc},
        {"name": "data", "title": "self-labels accepted, their precision against hidden gold, seconds per stage "
         "(c = up to date or restored from DVC's run cache)", "rows": data},
    ]
    fixes = correction_rows(rounds)
    if fixes:
        tables.append({"name": "second-attempts", "title": "second attempts after feedback: acc@1 -> acc@2 and the "
                       "shares that flip, on the round's traces and held out (gold)", "rows": fixes})
    props = proposal_rows(rounds)
    if props:
        tables.append({"name": "proposals", "title": "problems the model wrote: accepted of proposed, the pass-rate "
                       "band's yield, drift (mean complexity, self-similarity), rejections by reason", "rows": props})
    return tables


def proposal_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per round that proposed problems (``propose``): what the model wrote and what became of it."""
    out = []
    for r in rounds:
        m = r["metrics"]
        if "propose/proposed" not in m:
            continue
        rejected = sorted(((k.rsplit("/", 1)[1], int(v)) for k, v in m.items() if k.startswith("propose/rejected/")),
                          key=lambda x: -x[1])
        out.append({"round": r["round"], "proposed": int(m["propose/proposed"]),
                    "accepted": int(m.get("propose/accepted", 0)),
                    "band yield": _cell(m.get("proposals/band_yield"), ""),
                    "too easy": _cell(m.get("proposals/too_easy"), "round"),
                    "too hard": _cell(m.get("proposals/too_hard"), "round"),
                    "complexity": _cell(m.get("propose/mean_complexity"), ""),
                    "self-sim.": _cell(m.get("propose/self_similarity"), ""),
                    "rejected": ", ".join(f"{k} {v}" for k, v in rejected) or "-"})
    return out


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no rounds yet_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def markdown_summary(experiment: str, loop: str, rounds: list[dict[str, Any]], lines: list[str],
                     image: str | None = None, health_image: str | None = None) -> str:
    """The Prefect artifact of a whole run: two tables that fit the page, the plain-language lines, the plot."""
    tables = artifact_tables(rounds)
    out = [f"# Run `{experiment}` (loop '{loop}')", ""]
    for t in tables:
        out += [f"**{t['title'][0].upper() + t['title'][1:]}**", "", _md_table(t["rows"]), ""]
    out += [f"- {line}" for line in lines]
    if image:
        out += ["", f"![accuracy per difficulty across rounds]({image})"]
    if health_image:
        out += ["", f"![loop health across rounds: diversity, collapse, exploration, labels]({health_image})"]
    out += ["", f"Bring it into the workspace: `dvc exp apply {experiment}`; compare runs: `dvc exp show --only-changed`."]
    return "\n".join(out) + "\n"


def markdown(rounds: list[dict[str, Any]]) -> str:
    rows = table_rows(rounds)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
