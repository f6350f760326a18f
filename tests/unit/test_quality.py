"""The Great Expectations gate: real GX validations on a good and on a bad training set."""

from __future__ import annotations

import pandas as pd
import pytest

from selfimprove.config import ExpectationsConfig
from selfimprove.quality import TRAIN_COLUMNS, DataQualityError, check_round_data


def train_frame(rows: list[dict]) -> pd.DataFrame:
    base = {"origin": "self", "round": 1, "weight": 1.0, "difficulty": 4, "label": "x", "agreement": 1.0, "messages": None}
    df = pd.DataFrame([base | r for r in rows])[TRAIN_COLUMNS]
    df["prompt_normalized"] = [" ".join(p.split()) for p in df["prompt"]]
    return df


def frames(train: pd.DataFrame, accepted: int = 3, parsed: list[float] | None = None, accepted_flags: list[float] | None = None):
    return {
        "train": train,
        "accepted": pd.DataFrame({"id": [f"a{i}" for i in range(accepted)]}),
        "samples": pd.DataFrame({"parsed": parsed or [1.0, 1.0, 0.0, 1.0]}),
        "problems": pd.DataFrame({"accepted": accepted_flags or [1.0, 0.0, 1.0]}),
    }


GOOD = [
    {"id": "r1/p1#0", "prompt": "12+34=", "completion": "460", "problem_id": "p1"},
    {"id": "r1/p2#0", "prompt": "99+1=", "completion": "001", "problem_id": "p2"},
    {"id": "real/p3", "prompt": "1+1=", "completion": "20", "problem_id": "p3", "origin": "real", "round": 0},
]
CFG = ExpectationsConfig(min_rows=1, min_parse_rate=0.5, acceptance_rate=(0.1, 1.0))


def test_good_dataset_passes() -> None:
    report = check_round_data(frames(train_frame(GOOD)), CFG, eval_prompts=["5+5="])
    assert report.success
    assert "expectations passed" in report.summary()
    assert set(report.suites) == {"train", "accepted", "samples", "problems"}


def test_bad_dataset_stops_the_round_with_a_readable_report() -> None:
    bad = GOOD + [
        {"id": "r1/p1#0", "prompt": "5+5=", "completion": "", "problem_id": "p9"},  # dup id, eval prompt, empty
        {"id": "r1/p4#0", "prompt": "7+7=", "completion": "41", "problem_id": "p4", "origin": "teacher"},
    ]
    with pytest.raises(DataQualityError) as e:
        check_round_data(frames(train_frame(bad), accepted=0, parsed=[0.0, 0.0, 1.0], accepted_flags=[0.0, 0.0]), CFG,
                         eval_prompts=["5+5="], name="validate@r1")
    msg = str(e.value)
    for fragment in [
        "validate@r1: dataset failed validation",
        "expect_column_values_to_be_unique on column 'id'",
        "expect_column_value_lengths_to_be_between on column 'completion'",
        "expect_column_values_to_not_be_in_set on column 'prompt_normalized'",
        "expect_column_values_to_be_in_set on column 'origin'",
        "[accepted] expect_table_row_count_to_be_between",
        "[samples] expect_column_mean_to_be_between on column 'parsed'",
        "[problems] expect_column_mean_to_be_between on column 'accepted'",
        "'prompt': '5+5='",  # example rows are shown
    ]:
        assert fragment in msg, msg
    assert e.value.report["success"] is False
    assert len(e.value.report["failures"]) == 7


def test_missing_column_is_a_failure_not_a_crash() -> None:
    df = train_frame(GOOD).drop(columns=["weight"])
    report = check_round_data(frames(df), CFG, eval_prompts=[], raise_on_failure=False)
    assert not report.success
    assert any(f["expectation"] == "expect_table_columns_to_match_set" for f in report.failures)
