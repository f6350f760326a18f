"""The per-round table and the closing summary lines."""

from __future__ import annotations

from rich.console import Console

from selfimprove.report import TABLE_WIDTH, improvement, markdown, render, table_rows


def rounds() -> list[dict]:
    return [
        {"round": 0, "metrics": {"accuracy/d3": 1.0, "accuracy/d4": 0.46, "accuracy/d5": 0.15, "accuracy/d6": 0.0,
                                 "accuracy": 0.4, "bootstrap/seconds": 180.2, "evaluate/seconds": 3.1}},
        {"round": 1, "metrics": {"accuracy/d3": 1.0, "accuracy/d4": 0.97, "accuracy/d5": 0.41, "accuracy/d6": 0.01,
                                 "accuracy": 0.6, "validate/accepted": 1500.0, "acceptance_precision": 0.998,
                                 "sample/seconds": 14.0, "verify/seconds": 0.2, "validate/seconds": 3.0,
                                 "finetune/seconds": 34.0, "evaluate/seconds": 3.0}, "model_version": "2"},
    ]


def test_table_columns_keep_stage_order_and_fit_the_width() -> None:
    console = Console(width=TABLE_WIDTH, record=True)
    console.print(render(rounds(), title="t"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "round" in line)
    assert header.split() == ["round", "3d", "4d", "5d", "6d", "mean", "accepted", "prec", "boot", "sample", "verify",
                              "valid", "tune", "eval"]  # nothing cut, stage times in pipeline order
    assert "1500" in text and "1.00" in text and "…" not in text
    assert table_rows(rounds())[1]["model_version"] == "2"
    assert markdown(rounds()).splitlines()[0].startswith("| round | acc_d3 | acc_d4")


def test_improvement_names_the_first_unseen_difficulties_honestly() -> None:
    lines = improvement(rounds(), seen=[1, 2, 3])
    assert lines[0] == "4-digit accuracy: 0.46 at round 0 -> 0.97 at round 1 (+0.51)"
    assert lines[1] == "5-digit accuracy: 0.15 at round 0 -> 0.41 at round 1 (+0.26)"
    assert "99.8% in the worst round" in lines[2]
    solved = rounds()
    solved[0]["metrics"]["accuracy/d4"] = 0.99
    assert improvement(solved, seen=[1, 2, 3])[0].endswith("(already >= 0.95 at round 0)")
    assert improvement(rounds()[:1], seen=[1, 2, 3]) == []
