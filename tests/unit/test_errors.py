"""Errors that name what failed: a full disk names the path being written (nothing half-written is left), a
corrupt model names the file after checking its manifest, and the CLI prints one sentence without a traceback."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfimprove.checkpoint import resolve
from selfimprove.errors import explain
from selfimprove.io import DataError, DiskFullError, write_jsonl, write_manifest


def no_space(*_a: object, **_k: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_file_and_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "runs" / "r1" / "sample" / "samples.jsonl"
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError) as info:
        write_jsonl(target, [{"a": 1}])
    msg = explain(info.value)
    assert f"disk full while writing {target}" in msg and "df -h" in msg, msg
    assert not list(target.parent.iterdir()), "the temporary file is removed"


def test_full_disk_reported_by_a_library_inside_its_own_error_type() -> None:
    class SafetensorError(Exception):  # what safetensors raises, with the OS message inside
        pass

    err = SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                          "message: \"No space left on device\" })")
    assert "disk full" in explain(err)


def test_corrupt_model_is_named_before_loading(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_manifest(model, producer="finetune@r1")
    assert resolve(model) == str(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        resolve(model)
    msg = str(info.value)
    assert "corrupt model" in msg and "model.safetensors" in msg and "manifest.json" in msg, msg
    assert "finetune@r1" in msg, "the error says which stage to run again"


def test_cli_prints_one_sentence_for_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    """`selfimprove summary` with the disk full under runs/summary: exit 1, the path, no traceback."""
    from helpers import ROOT, MINI_OVERRIDES
    from selfimprove.cli import app
    from selfimprove.params import apply_overrides_to_file
    from selfimprove.io import write_json

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides_to_file(tmp_path / "params.yaml", MINI_OVERRIDES)
    write_json(tmp_path / "runs" / "metrics" / "r0.json", {"round": 0, "accuracy": 0.5, "accuracy/d1": 0.5})
    monkeypatch.setattr(os, "fsync", no_space)
    result = CliRunner().invoke(app, ["summary", "--project", str(tmp_path)])
    assert result.exit_code == 1, (result.output, result.exception)
    text = " ".join(result.output.split())
    assert "disk full while writing" in text and "runs/summary" in text, (text, repr(result.exception))
    assert "Traceback" not in result.output
