"""Runs side by side (selfimprove compare / plots) and the long-form curves the plots draw."""

from __future__ import annotations

import errno
import sqlite3

from selfimprove.compare import differing, flatten
from selfimprove.errors import explain, mount_point
from selfimprove.stages.summary import curves_csv


def test_only_the_params_that_differ_and_a_round_as_one_entry() -> None:
    a = {"seed": 3, "finetune": {"train": {"lr": 0.001, "steps": 130}}, "rounds": {"r1": {"prev": "r0"}}}
    b = {"seed": 3, "finetune": {"train": {"lr": 0.01, "steps": 130}},
         "rounds": {"r1": {"prev": "r0"}, "r2": {"prev": "r1", "difficulties": [4]}}}
    assert differing({"a": a, "b": b}) == ["finetune.train.lr", "rounds.r2"]
    assert flatten(b)["rounds.r2"] == {"prev": "r1", "difficulties": [4]}
    assert differing({"a": a, "same": a}) == []


def test_curves_leave_out_what_a_round_does_not_have() -> None:
    rounds = [{"round": 0, "accuracy/d1": 1.0, "accuracy": 1.0},
              {"round": 1, "accuracy/d1": 0.5, "accuracy": 0.5, "acceptance_precision": 0.9}]
    text = curves_csv(rounds, [("accuracy/d1", "1 digits"), ("acceptance_precision", "label precision")])
    assert text.splitlines() == ["round,series,value", "0,1 digits,1.0000", "1,1 digits,0.5000",
                                 "1,label precision,0.9000"]


def test_a_full_disk_without_a_file_names_the_filesystems_a_run_writes_to(tmp_path) -> None:
    msg = explain(OSError(errno.ENOSPC, "No space left on device"), {"MLflow": str(tmp_path / "mlruns.db")})
    assert "named no file" in msg and f"df -h {mount_point(tmp_path)}" in msg, msg


def test_a_sqlite_io_error_names_the_mlflow_store(tmp_path) -> None:
    err = sqlite3.OperationalError("disk I/O error")
    msg = explain(err, {"MLflow": str(tmp_path / "mlruns.db")})
    assert "mlruns.db" in msg and "ulimit -f" in msg and "disk I/O error" in msg, msg


def test_a_file_too_large_names_the_limit() -> None:
    msg = explain(OSError(errno.EFBIG, "File too large", "/data/x.bin"))
    assert "/data/x.bin" in msg and "ulimit -f" in msg, msg
