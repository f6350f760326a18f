"""Atomic, verifiable artifacts: JSONL/JSON writers that never leave a partial file, and strict readers.

Every dataset a stage writes is a data file plus ``manifest.json`` in the same directory, written last.
The manifest records row counts and sha256 per file, so a reader can tell a complete file from one that a
crash truncated at a line boundary (which looks like a valid, smaller dataset). Stage outputs are built in
a sibling temp directory and renamed into place, so a directory either holds a complete output or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

MANIFEST = "manifest.json"
MAX_LINE_BYTES = 64 * 1024 * 1024


class DataError(ValueError):
    """A data file is missing, incomplete or malformed. The message names the file and line."""


class DiskFullError(OSError):
    """The disk filled up while writing ``path``; nothing half-written is left behind."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        usage = ""
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self._existing_parent()).free
            usage = f" ({free / 2**20:.0f} MiB free now)"
        super().__init__(errno.ENOSPC, f"disk full while writing {self.path}{usage}: free space on that disk "
                                       f"(df -h {self._existing_parent()}) and run again; earlier outputs are intact")

    def _existing_parent(self) -> Path:
        p = self.path
        while not p.exists() and p != p.parent:
            p = p.parent
        return p

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def _no_space(path: str | Path) -> Iterator[None]:
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        # safetensors and torch report a full disk as their own error types, with the OS message inside
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in str(e):
            raise DiskFullError(path) from e
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it over ``path``, else remove it."""
    path = Path(path)
    with _no_space(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _no_space(path):
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _dumps(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        return obj.model_dump_json()
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[BaseModel | dict]) -> int:
    """Write rows atomically; return the row count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(_dumps(row))
            f.write("\n")
            n += 1
    return n


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The content hash DVC records for a single file (used to cite DVC versions in MLflow)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json_line(line: bytes, where: str) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys, valid UTF-8, no lone surrogates."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid UTF-8 at byte {e.start}") from None
    if text.startswith("\ufeff"):
        raise DataError(f"{where}: starts with a UTF-8 byte-order mark; save the file without BOM")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except (json.JSONDecodeError, ValueError) as e:
        raise DataError(f"{where}: malformed JSON: {e}") from None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: contains a lone surrogate escape") from None
    return obj


def iter_jsonl(path: str | Path, model: type[M] | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Any]:
    """Stream a JSONL file strictly, naming file and line on any error; optionally validate each row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(max_line_bytes + 1)
            if not line:
                break
            lineno += 1
            where = f"{path}:{lineno}"
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise DataError(f"{where}: line longer than {max_line_bytes} bytes")
            if not line.endswith(b"\n"):
                raise DataError(f"{where}: last line is truncated (no newline); the file is incomplete")
            if not line.strip():
                continue
            obj = parse_json_line(line, where)
            if model is not None:
                try:
                    obj = model.model_validate(obj)
                except ValidationError as e:
                    errs = "; ".join(f"{'.'.join(map(str, er['loc'])) or '<row>'}: {er['msg']}" for er in e.errors())
                    raise DataError(f"{where}: invalid {model.__name__}: {errs}") from None
            yield obj


def read_jsonl(path: str | Path, model: type[M] | None = None) -> list[Any]:
    return list(iter_jsonl(path, model))


# --------------------------------------------------------------------------------------------- manifests


def write_manifest(directory: str | Path, producer: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file in ``directory`` (recursively) and write ``manifest.json`` last, atomically."""
    directory = Path(directory)
    files: dict[str, Any] = {}
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.name == MANIFEST or p.name.endswith(".tmp"):
            continue
        rel = p.relative_to(directory).as_posix()
        entry: dict[str, Any] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        if p.suffix == ".jsonl":
            with open(p, "rb") as f:
                entry["rows"] = sum(1 for line in f if line.strip())
        files[rel] = entry
    # No timestamp: the same inputs must give byte-identical outputs (DVC hashes them).
    manifest = {"producer": producer, "files": files}
    if extra:
        manifest.update(extra)
    write_json(directory / MANIFEST, manifest)
    return manifest


def verify_manifest(directory: str | Path, deep: bool = True) -> dict[str, Any]:
    """Raise DataError unless ``directory`` holds a complete output matching its manifest."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not directory.exists():
        raise DataError(f"{directory}: not found; run the stage that produces it first")
    if not mpath.exists():
        raise DataError(f"{directory}: no {MANIFEST}; the output is incomplete (interrupted write?) - re-run its stage")
    manifest = json.loads(mpath.read_text())
    for rel, entry in manifest.get("files", {}).items():
        p = directory / rel
        if not p.exists():
            raise DataError(f"{p}: listed in {mpath} but missing")
        if p.stat().st_size != entry["bytes"]:
            raise DataError(f"{p}: size {p.stat().st_size} != {entry['bytes']} recorded in {mpath}; file changed or truncated")
        if deep and sha256_file(p) != entry["sha256"]:
            raise DataError(f"{p}: sha256 does not match {mpath}; file changed or corrupted")
    return manifest


def read_verified_jsonl(path: str | Path, model: type[M] | None = None) -> list[Any]:
    """Read a JSONL file only if its directory's manifest vouches for it (complete, unchanged)."""
    path = Path(path)
    verify_manifest(path.parent)
    return read_jsonl(path, model)


@contextlib.contextmanager
def staged_output(final_dir: str | Path) -> Iterator[Path]:
    """Build a stage's output directory in a temp sibling; swap it into place only on success.

    On failure the temp directory is removed and whatever was at ``final_dir`` before is left untouched.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in final_dir.parent.glob(f".{final_dir.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed process
    with _no_space(final_dir):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent))
    try:
        with _no_space(final_dir):
            yield tmp
        old = None
        if final_dir.exists():
            old = final_dir.parent / f".{final_dir.name}.{os.getpid()}.old.partial"
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        _fsync_dir(final_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
