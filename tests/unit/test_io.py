"""Atomic writes, manifests and the strict JSONL reader: nothing partial is ever read as complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.io import (
    DataError,
    iter_jsonl,
    read_verified_jsonl,
    staged_output,
    verify_manifest,
    write_jsonl,
    write_manifest,
)
from selfimprove.types import Completion


def test_write_and_read_back(tmp_path: Path) -> None:
    rows = [Completion(id=f"p{i}#0", problem_id=f"p{i}", round=1, sample_idx=0, text=str(i)) for i in range(5)]
    assert write_jsonl(tmp_path / "s.jsonl", rows) == 5
    write_manifest(tmp_path, producer="test")
    back = read_verified_jsonl(tmp_path / "s.jsonl", Completion)
    assert back == rows


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'{"a": 1}\n{"a": 2', "last line is truncated"),
        (b'{"a": NaN}\n', "non-finite"),
        (b'{"a": 1, "a": 2}\n', "duplicate key"),
        (b'\xef\xbb\xbf{"a": 1}\n', "byte-order mark"),
        (b'{"a": "\\ud800"}\n', "lone surrogate"),
        (b'{"a": 1}{"b": 2}\n', "malformed JSON"),
        (b'{"a": "\xff"}\n', "invalid UTF-8"),
        (b'{"a": 1}\nnot json\n', ":2: malformed JSON"),
    ],
)
def test_strict_reader_names_file_and_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        list(iter_jsonl(p))
    assert fragment in str(e.value)
    assert "bad.jsonl:" in str(e.value)


def test_schema_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"id": "x", "problem_id": "p", "round": "one", "sample_idx": 0, "text": ""}) + "\n")
    with pytest.raises(DataError, match=r"s.jsonl:1: invalid Completion: round: "):
        list(iter_jsonl(p, Completion))
    p.write_text(json.dumps({"id": "x", "problem_id": "p", "round": 1, "sample_idx": 0, "text": "", "txt": 1}) + "\n")
    with pytest.raises(DataError, match="txt: Extra inputs are not permitted"):
        list(iter_jsonl(p, Completion))


def test_manifest_catches_truncation_that_looks_valid(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"i": i} for i in range(100)])
    write_manifest(tmp_path, producer="test")
    lines = (tmp_path / "d.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "d.jsonl").write_text("".join(lines[:80]))  # a crash at a line boundary: still valid JSONL
    with pytest.raises(DataError, match="truncated|does not match"):
        read_verified_jsonl(tmp_path / "d.jsonl")


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"i": 1}])
    with pytest.raises(DataError, match="no manifest.json; the output is incomplete"):
        verify_manifest(tmp_path)


def test_staged_output_keeps_old_version_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with staged_output(final) as d:
        write_jsonl(d / "x.jsonl", [{"v": 1}])
        write_manifest(d, producer="v1")
    with pytest.raises(RuntimeError), staged_output(final) as d:
        write_jsonl(d / "x.jsonl", [{"v": 2}])
        raise RuntimeError("killed mid-stage")
    assert read_verified_jsonl(final / "x.jsonl") == [{"v": 1}]
    assert not list(tmp_path.glob(".out.*")), "temp directories are cleaned up"


def test_stale_partial_dirs_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".out.abc.partial").mkdir()  # what a kill -9 leaves behind
    with staged_output(tmp_path / "out") as d:
        write_manifest(d, producer="x")
    assert not (tmp_path / ".out.abc.partial").exists()
