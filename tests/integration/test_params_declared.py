"""Each dvc.yaml stage declares the params its code reads: run every stage with a config that records the keys
read, and fail when a stage reads a key its stage does not declare (DVC would not rerun it when that key changes).

Runtime keys that cannot change a stage's outputs are allowed without a declaration: ``threads`` (speed),
``workspace`` (where the outputs are: DVC declares the paths themselves), ``tracking`` (MLflow) and ``loop``
(the flow's policies). Declared keys that are never read are fine (a section declared whole)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from helpers import MINI_OVERRIDES, ROOT

RUNTIME = ("threads", "workspace", "tracking", "loop")


@contextmanager
def recording(config: Any) -> Any:
    """Record the dotted keys of leaf values read from ``config`` (attribute reads and ``model_dump``)."""
    where: dict[int, str] = {}

    def walk(m: BaseModel, prefix: str) -> None:
        where[id(m)] = prefix
        for name, field in type(m).model_fields.items():
            v = m.__dict__.get(name)
            key = prefix + (field.alias or name)
            if isinstance(v, BaseModel):
                walk(v, key + ".")
            elif isinstance(v, dict):
                for k, x in v.items():
                    if isinstance(x, BaseModel):
                        walk(x, f"{key}.{k}.")
            elif isinstance(v, list):
                for x in v:
                    if isinstance(x, BaseModel):
                        walk(x, key + ".")

    walk(config, "")
    reads: set[str] = set()
    orig_get = BaseModel.__getattribute__
    orig_dump = BaseModel.model_dump

    def get(self: BaseModel, name: str) -> Any:
        value = orig_get(self, name)
        prefix = where.get(id(self))
        if prefix is not None and not name.startswith("__"):
            fields = type(self).model_fields
            if name in fields and not isinstance(value, BaseModel) and not (
                    isinstance(value, dict) and any(isinstance(x, BaseModel) for x in value.values())):
                reads.add(prefix + (fields[name].alias or name))
        return value

    def dump(self: BaseModel, *a: Any, **k: Any) -> Any:
        prefix = where.get(id(self))
        if prefix is not None:
            reads.add(prefix.rstrip(".") or "<whole config>")
        return orig_dump(self, *a, **k)

    BaseModel.__getattribute__ = get  # type: ignore[method-assign]
    BaseModel.model_dump = dump  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        BaseModel.__getattribute__ = orig_get  # type: ignore[method-assign]
        BaseModel.model_dump = orig_dump  # type: ignore[method-assign]


def declared(stage: str, key: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    out = [p.replace("${key}", key) for p in (spec.get("do") or spec).get("params", [])]
    # eval_rounds.rN is rounds.rN (a YAML merge), so declaring one declares the other
    return out + [p.replace("eval_rounds.", "rounds.", 1) for p in out if p.startswith("eval_rounds.")]


def undeclared(reads: set[str], decl: list[str]) -> list[str]:
    def covered(r: str) -> bool:
        return r.split(".")[0] in RUNTIME or any(r == d or r.startswith(d + ".") for d in decl)

    return sorted(r for r in reads if not covered(r))


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages import STAGES
    from selfimprove.tracker import NullTracker

    proj = tmp_path_factory.mktemp("traced")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    out: dict[str, set[str]] = {}
    for stage, key in [("bootstrap", "r0"), ("evaluate", "r0"), ("sample", "r1"), ("verify", "r1"), ("validate", "r1"),
                       ("finetune", "r1"), ("evaluate", "r1"), ("summary", "r0")]:
        cfg = load_config(proj / "params.yaml", MINI_OVERRIDES + ["tracking.enabled=false"])
        fn: Callable[..., Any] = STAGES[stage]
        with recording(cfg) as reads:
            paths = RoundPaths.for_round(cfg, key, proj)
            fn(cfg, paths, NullTracker())
        out[f"{stage}@{key}"] = set(reads)
    return out


@pytest.mark.parametrize("stage_key", ["bootstrap@r0", "evaluate@r0", "sample@r1", "verify@r1", "validate@r1",
                                       "finetune@r1", "evaluate@r1", "summary@r0"])
def test_stage_reads_only_declared_params(traced: dict[str, set[str]], stage_key: str) -> None:
    stage, key = stage_key.split("@")
    reads = traced[stage_key]
    assert reads, "the recorder saw no reads (is it still wired to pydantic?)"
    missing = undeclared(reads, declared(stage, key))
    assert not missing, f"{stage_key} reads {missing} but dvc.yaml declares only {declared(stage, key)}"


def test_recorder_catches_an_undeclared_read() -> None:
    from selfimprove.params import load_config

    cfg = load_config(ROOT / "params.yaml")
    with recording(cfg) as reads:
        _ = cfg.sample.temperature
        _ = cfg.finetune.train.lr
        cfg.verify.options("exact_match")
    assert {"sample.temperature", "finetune.train.lr", "verify.exact_match"} <= reads
    assert undeclared(reads, ["sample", "verify"]) == ["finetune.train.lr"]


def test_every_declared_params_key_exists_in_the_shipped_params_files() -> None:
    """DVC refuses a declared key the params file lacks: the default params.yaml has every one."""
    from selfimprove.params import declared_params

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in declared_params(ROOT / "dvc.yaml"):
        node = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"params.yaml lacks {key!r}, which dvc.yaml declares"
            node = node[part]
