"""Stages as units of work: what can run side by side, and the one merge that makes the stage's outputs.

A stage that loops over ensemble members or over shards of problems is written as three pure functions:

- ``units(config, paths) -> list[Unit]``: the work, in a fixed order (member-major, then shard);
- ``run_unit(config, paths, unit, tracker) -> dict``: one unit; it writes only into its own part folder
  (``<workspace>/.parts/<round>/<stage>/<unit>``) and returns a small JSON-able dict;
- ``merge(config, paths, units, parts, tracker) -> StageReport``: reads the parts in unit order and writes the
  stage's DVC outputs (atomically, manifest last), then removes the part folders.

``run_split`` runs them one after another in this process: the stage function the CLI and ``dvc repro`` call. The
Prefect flow runs the same three functions, the units as Prefect tasks on the configured task runner (Ray: side
by side, on this machine's cores or on a cluster). Every unit's seed comes from the params and the unit's member
and shard, never from which worker ran it or when, and the merge order is the unit order, so both ways write the
same bytes.

The shards of a stage come from ``sample.shards`` (a setting that changes sampling seeds, so it is part of the
data's recipe): problems are cut into that many contiguous groups, a problem's views always in its group.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from selfimprove.paths import RoundPaths

PARTS = ".parts"


@dataclass(frozen=True)
class Unit:
    """One piece of a stage's work: an ensemble member, a shard of problems, or both."""

    stage: str
    member: int | None = None
    shard: int | None = None
    member_name: str | None = None  # the member's folder name (m0, m1, ...); None for a single model

    @property
    def label(self) -> str:
        parts = [self.member_name or (f"m{self.member}" if self.member is not None else "")]
        if self.shard is not None:
            parts.append(f"s{self.shard}")
        return "/".join(p for p in parts if p) or "all"

    def dir(self, paths: RoundPaths) -> Path:
        """This unit's part folder (its only place to write)."""
        return parts_root(paths, self.stage) / self.label.replace("/", "-")


def parts_root(paths: RoundPaths, stage: str) -> Path:
    return paths.workspace / PARTS / paths.key / stage


def start(paths: RoundPaths, stage: str) -> None:
    """Remove what an earlier, interrupted attempt of this stage left in its part folders."""
    shutil.rmtree(parts_root(paths, stage), ignore_errors=True)


def finish(paths: RoundPaths, stage: str) -> None:
    root = parts_root(paths, stage)
    shutil.rmtree(root, ignore_errors=True)
    for d in (root.parent, root.parent.parent):  # the round's and the workspace's .parts, once empty
        try:
            d.rmdir()
        except OSError:
            break


class Split(NamedTuple):
    stage: str
    units: Callable[..., list[Unit]]
    run_unit: Callable[..., dict[str, Any]]
    merge: Callable[..., Any]


def run_split(split: Split, config: Any, paths: RoundPaths, tracker: Any) -> Any:
    """The whole stage in this process: every unit in order, then the merge."""
    units = split.units(config, paths)
    start(paths, split.stage)
    parts = [split.run_unit(config, paths, u, tracker) for u in units]
    return split.merge(config, paths, units, parts, tracker)


def move_members(paths: RoundPaths, units: Sequence[Unit], out: Path, sub: str | None = None) -> None:
    """Move each member's model (its part folder, or ``sub`` inside it) into a stage's output: ``m0``, ``m1``, ...
    and ``ensemble.json``, or a single model's files into the output folder itself."""
    from selfimprove.checkpoint import write_ensemble

    def src(u: Unit) -> Path:
        return u.dir(paths) / sub if sub else u.dir(paths)

    named = [u for u in units if u.member_name]
    if not named:
        for f in sorted(src(units[0]).iterdir()):
            os.replace(f, out / f.name)
        return
    for u in named:
        os.replace(src(u), out / str(u.member_name))
    write_ensemble(out, [str(u.member_name) for u in named])


def shard_groups(ids: Sequence[str], roots: Sequence[str], n: int) -> list[list[int]]:
    """Indices of ``ids`` cut into ``n`` contiguous shards by root problem (a view goes with its original).

    >>> shard_groups(["a", "a~v", "b", "c", "c~v"], ["a", "a", "b", "c", "c"], 2)
    [[0, 1, 2], [3, 4]]
    >>> shard_groups(["a"], ["a"], 3)
    [[0], [], []]
    """
    order: list[str] = []
    for r in roots:
        if not order or order[-1] != r:
            if r in order:
                raise ValueError(f"problem {r!r}: its views are not next to it; cannot shard")
            order.append(r)
    per = -(-len(order) // n) if order else 0
    shard_of = {r: i // per for i, r in enumerate(order)} if per else {}
    out: list[list[int]] = [[] for _ in range(n)]
    for i, r in enumerate(roots):
        out[shard_of[r]].append(i)
    return out


def concat_lines(sources: Sequence[Path], dest: Path) -> None:
    """``dest`` = the JSONL files in order, byte for byte (a merge that needs no parsing)."""
    from selfimprove.io import atomic_path

    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out)


def unit_seed(seed: int, shard: int | None) -> int:
    """The sampling seed of a shard: the stage's own seed for shard 0 (so one shard is the unsharded stage)."""
    return seed if not shard else seed + 1_000_003 * shard
