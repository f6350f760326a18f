"""The per-round table: accuracy per difficulty, accepted samples, label precision, time per stage.

Built from per-round metric dicts (read back from MLflow by ``selfimprove report``, or from the DVC metrics
files), rendered with rich for people and as JSON for machines.
"""

from __future__ import annotations

from typing import Any

STAGE_TIMES = [
    ("bootstrap", "bootstrap/seconds"),
    ("sample", "sample/seconds"),
    ("verify", "verify/seconds"),
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
        row["accepted"] = m.get("validate/accepted")
        row["acceptance_rate"] = m.get("validate/acceptance_rate")
        row["label_precision"] = m.get("acceptance_precision")
        for name, key in STAGE_TIMES:
            if key in m:
                row[f"{name}_s"] = m[key]
        if r.get("model_version"):
            row["model_version"] = r["model_version"]
        out.append(row)
    return out


def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "-"
    if key.endswith("_s"):
        return f"{v:.0f}"
    if key in ("accepted", "round", "model_version"):
        return str(int(float(v)))
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render(rounds: list[dict[str, Any]], title: str = "selfimprove: rounds") -> Any:
    from rich.table import Table

    rows = table_rows(rounds)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    t = Table(title=title, show_lines=False)
    for c in cols:
        header = c.replace("acc_d", "acc ").replace("acc_", "acc ").replace("_s", " s").replace("_", " ")
        t.add_column(header, justify="right")
    for r in rows:
        t.add_row(*[_fmt(r.get(c), c) for c in cols])
    return t


def markdown(rounds: list[dict[str, Any]]) -> str:
    rows = table_rows(rounds)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
