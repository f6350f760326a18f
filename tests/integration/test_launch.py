"""finetune.launch: each member trains in processes started by a launcher (here torchrun: 2 CPU processes, DDP
over gloo; on GPUs the same code path runs under ``accelerate launch`` with infra/accelerate/*.yaml), and the
stage writes one ordinary model folder whose training both processes took part in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import FAST_OVERRIDES
from selfimprove.config import ConfigError
from selfimprove.params import apply_overrides_to_file, load_config
from selfimprove.paths import RoundPaths
from selfimprove.stages import run_bootstrap, run_finetune, run_sample, run_validate, run_verify
from selfimprove.tracker import NullTracker, RecordingTracker


@pytest.mark.slow  # two training processes (torchrun-style): .ci/run runs it
def test_a_member_trains_in_two_launched_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    # the launched processes read the params file, as a DVC stage command does
    apply_overrides_to_file(tmp_path / "params.yaml", [*FAST_OVERRIDES, "tracking.enabled=false", "finetune.train.steps=3",
                                                      "finetune.launch=[torchrun, --nproc_per_node, '2']"])
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "params.yaml")
    t = NullTracker()
    run_bootstrap(cfg, RoundPaths.for_round(cfg, "r0", "."), t)
    p = RoundPaths.for_round(cfg, "r1", ".")
    for fn in (run_sample, run_verify, run_validate):
        fn(cfg, p, t)
    rec = RecordingTracker()
    report = run_finetune(cfg, p, rec)
    member = report.details["members"][0]
    assert member["processes"] == 2 and member["steps"] == 3
    assert {"config.json", "manifest.json", "model.safetensors", "stage_report.json", "tokenizer.json"} <= {
        f.name for f in p.model.iterdir()}
    assert not (p.model / "training_args.bin").exists() and not (tmp_path / "runs" / ".parts").exists()
    trained = AutoModelForCausalLM.from_pretrained(p.model)
    start = AutoModelForCausalLM.from_pretrained(p.base.model)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters())), "weights moved"
    # the launched trainer's per-step logs came back to the stage's tracker
    logged = {k for name, args, _ in rec.calls if name == "log_metrics" for k in args[0]}
    assert "finetune/rows" in logged and any(k.startswith("finetune/") and k.endswith("loss") for k in logged), logged


def test_launch_is_refused_for_grpo(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    with pytest.raises(ConfigError, match="leave finetune.launch empty for grpo"):
        load_config(root / "params.yaml", ["finetune.trainer=grpo", "finetune.launch=[torchrun]",
                                           "finetune.train.batch_size=8", "sample.k=3"])


def test_a_missing_launcher_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfimprove.stages.finetune import launch_unit
    from selfimprove.stages.parts import Unit

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(root / "params.yaml", ["finetune.launch=[no-such-launcher, --x]"])
    with pytest.raises(RuntimeError, match="finetune.launch: command 'no-such-launcher' not found"):
        launch_unit(cfg, RoundPaths.for_round(cfg, "r1", "."), Unit("finetune", member=0), NullTracker())
