"""``finetune``: train on the round's validated set, starting from the previous round (or round 0).

The trainer (``finetune.trainer``) is looked up by name: ``sft``/``weighted_sft`` on rows, ``dpo`` on pairs, ``grpo``
on prompts with the verifiers as rewards. GRPO's rollouts (every completion it generated, with its rewards and,
where the problems have gold, the gold verdict) are written to ``runs/rN/finetune/rollouts.jsonl``, validated by
Great Expectations (``quality.check_rollouts``) and logged to MLflow as the round's dataset; the folder exists for
every trainer (a manifest only) so DVC can track it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfimprove.config import Config
from selfimprove.ensemble import members
from selfimprove.io import read_jsonl, read_verified_jsonl, staged_output, write_json, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.checkpoint import resolve as resolve_model
from selfimprove.stages.common import (
    StageReport,
    gold_verifier,
    set_verifier_name,
    problem_set,
    setup_runtime,
    timer,
)
from selfimprove.stages.parts import Split, Unit, move_members, run_split
from selfimprove.stages.parts import finish as parts_finish
from selfimprove.tracker import Tracker
from selfimprove.trainers import TRAINERS
from selfimprove.types import PreferencePair, Problem, PromptRow, Rollout, TrainRow

log = logging.getLogger(__name__)


def _chat(config: Config, model_dir: Path) -> bool:
    """Whether this round trains in TRL's conversational format (``model.chat`` and the model's tokenizer: a hub
    model's tokenizer is loaded, as the samplers load it, so sampling and training agree)."""
    from selfimprove.chat import model_has_template, use_chat

    template = model_has_template(resolve_model(model_dir), load=True, trust_remote_code=config.model.trust_remote_code)
    return use_chat(config.model.chat, template=template, where=str(model_dir))


class _GRPORound:
    """What a GRPO round needs besides the trainer: the reward functions per member and their rollouts."""

    def __init__(self, config: Config, paths: RoundPaths, init: Path):
        from selfimprove.stages.common import round_verifier
        from selfimprove.verifiers import VERIFIERS

        self.config, self.paths, self.g = config, paths, config.finetune.grpo
        self.problems = {p.id: p for p in read_verified_jsonl(paths.sample / "problems.jsonl", Problem)}
        self._recorders: list[Any] = []
        self._verifiers: list[Any] = []  # closed after training (sandbox pools, judge samplers)

        def make(name: str) -> Any:
            if getattr(VERIFIERS.get(name), "needs_model", False):
                return round_verifier(config.model_copy(update={"verify": config.verify.model_copy(
                    update={"verifier": name})}), model_dir=init)
            return VERIFIERS.get(name)(**config.verify.options(name))

        self.make = make

    def kwargs(self, member: str | None) -> dict[str, Any]:
        from selfimprove.trainers.grpo import Rollouts, reward_functions

        cc = self.config.correct
        if cc.enabled and cc.train == "traces":  # two attempts per rollout, rewarded r2 + alpha * (r2 - r1)
            from selfimprove.trainers.grpo import TwoAttempts

            rec = Rollouts(["improvement"], [1.0], member, self.paths.round)
            self._recorders.append(rec)
            two = TwoAttempts(self.problems, problem_set(self.config), cc.mode, cc.instruction, cc.alpha,
                              self.g.rewards, self.make, rec, self.paths.round)
            self._verifiers += two.verifiers
            return {"grpo": self.g, "rewards": [two.improvement], "two_attempts": two,
                    "max_completion_length": self.g.max_completion_length or self.config.sample.max_new_tokens}
        rec = Rollouts([s.verifier for s in self.g.rewards], [s.weight for s in self.g.rewards], member,
                       self.paths.round)
        self._recorders.append(rec)
        funcs = reward_functions(self.g.rewards, self.make, self.problems, rec, self.paths.round)
        self._verifiers += [f.verifier for f in funcs]
        return {"grpo": self.g, "rewards": funcs,
                "max_completion_length": self.g.max_completion_length or self.config.sample.max_new_tokens}

    def close(self) -> None:
        """Release the reward verifiers' resources (sandbox worker pools, judge models); safe to call twice."""
        while self._verifiers:
            self._verifiers.pop().close()

    def member_records(self) -> tuple[list[Rollout], dict[str, bool] | None]:
        """This process's rollouts, and the gold verifier's verdicts on them when it was one of the rewards."""
        self.close()
        gold_name = set_verifier_name(self.config, problem_set(self.config))
        rollouts = [r for rec in self._recorders for r in rec.records()]
        reused: dict[str, bool] | None = {}
        for rec in self._recorders:
            got = rec.verdicts_of(gold_name)
            reused = None if got is None or reused is None else reused | got
        return rollouts, reused

    def finish(self, out: Path, tracker: Tracker, rollouts: list[Rollout], reused: list[dict[str, bool] | None]
               ) -> dict[str, float]:
        """Grade the members' rollouts against gold (health), validate them with GX, write them; return their
        metrics. ``reused``: per member, the gold verifier's verdicts when it was a reward (no grading twice)."""
        import pandas as pd

        from selfimprove.quality import check_rollouts
        from selfimprove.trainers.grpo import grade_gold, label_reward_accuracy

        self.close()
        pset = problem_set(self.config)
        gold_v = gold_verifier(self.config, pset, set_verifier_name(self.config, pset))
        try:
            if all(r is not None for r in reused):  # the gold verifier was a reward: its verdicts are the gold ones
                gold = {k: v for r in reused for k, v in (r or {}).items()}
            else:
                gold = grade_gold(rollouts, self.problems, gold_v)
        finally:
            gold_v.close()
        rollouts = [r.model_copy(update={"gold_passed": gold.get(r.id)}) for r in rollouts]
        weights = [s.weight for s in self.g.rewards]
        bounds = (sum(min(w, 0.0) for w in weights), sum(max(w, 0.0) for w in weights))
        cc = self.config.correct
        if cc.enabled and cc.train == "traces":  # r2 + alpha * (r2 - r1) with r1, r2 in the bounds above
            lo, hi = bounds
            bounds = (lo - cc.alpha * (hi - lo), hi + cc.alpha * (hi - lo))
        frame = pd.DataFrame([r.model_dump() for r in rollouts])
        quality = check_rollouts(frame, self.g.num_generations, bounds, name=f"finetune@{self.paths.key}/rollouts")
        write_jsonl(out / "rollouts.jsonl", rollouts)
        write_json(out / "quality.json", json.loads(json.dumps(quality.to_stable_dict(), default=str)))
        health = label_reward_accuracy(rollouts, self.problems, gold_v)
        metrics = {f"finetune/{k}": v for k, v in health.items()}
        metrics["finetune/rollouts"] = len(rollouts)
        metrics["finetune/mean_reward"] = sum(r.reward for r in rollouts) / max(len(rollouts), 1)
        # per optimizer step, so MLflow shows how the label-free reward tracks gold during training
        by_step: dict[int, list[Rollout]] = {}
        for r in rollouts:
            by_step.setdefault(r.step, []).append(r)
        for step, rs in sorted(by_step.items()):
            for k, v in label_reward_accuracy(rs, self.problems, gold_v).items():
                tracker.log_metrics({f"finetune/step/{k}": v}, step=step)
        return metrics


@contextmanager
def _closing(grpo: _GRPORound | None) -> Iterator[None]:
    try:
        yield
    finally:
        if grpo is not None:
            grpo.close()


def _inits(config: Config, paths: RoundPaths) -> tuple[Path, list[Path]]:
    init = paths.prev_paths.model if config.finetune.init == "continue" else paths.base.model
    return init, members(init)


def finetune_units(config: Config, paths: RoundPaths) -> list[Unit]:
    """One unit per ensemble member: each trains on the round's shared set from its own start model and seed."""
    _, inits = _inits(config, paths)
    for m in inits:
        resolve_model(m)
    return [Unit("finetune", member=i, member_name=m.name if len(inits) > 1 else None) for i, m in enumerate(inits)]


LAUNCHED = "SELFIMPROVE_LAUNCHED_UNIT"


def launch_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """``finetune.launch``: train the member in processes started by the launcher (accelerate, torchrun), each
    running ``selfimprove finetune-unit``; the main process writes the model and ``part.json`` (the trainer's
    report and its tracking calls, logged here)."""
    import subprocess
    import sys

    from selfimprove.tracker import replay

    part = unit.dir(paths) / "part.json"
    part.unlink(missing_ok=True)
    cmd = [*config.finetune.launch, "-m", "selfimprove.cli", "finetune-unit", "--round", paths.key,
           "--member", str(unit.member or 0)]
    if cmd[0] in ("accelerate", "torchrun"):  # this environment's launcher, whatever PATH says
        cmd[:1] = [sys.executable, "-m", "accelerate.commands.launch" if cmd[0] == "accelerate" else "torch.distributed.run"]
    log.info("finetune@%s/%s: %s", paths.key, unit.label, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env={**os.environ, LAUNCHED: "1"}, cwd=os.getcwd())
    except FileNotFoundError:
        raise RuntimeError(f"finetune.launch: command {cmd[0]!r} not found; give a launcher on PATH (e.g. "
                           "[accelerate, launch, ...] or [torchrun, --nproc_per_node, '2']), or leave finetune.launch "
                           "empty") from None
    if proc.returncode != 0 or not part.exists():
        raise RuntimeError(f"finetune@{paths.key}/{unit.label}: the launched trainer failed (exit {proc.returncode}): "
                           f"{' '.join(cmd)}; its output is above. Run that command in the run's workspace "
                           f"({os.getcwd()}) to see it alone")
    data = json.loads(part.read_text())
    replay([(n, tuple(a), k) for n, a, k in data["calls"]], tracker)
    return data["part"]


def run_launched_unit(config: Config, paths: RoundPaths, member: int) -> None:
    """One process of a launched member (``selfimprove finetune-unit``): train; the main process writes part.json."""
    from selfimprove.tracker import RecordingTracker

    unit = next(u for u in finetune_units(config, paths) if (u.member or 0) == member)
    rec = RecordingTracker()
    result = run_finetune_unit(config, paths, unit, rec)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(unit.dir(paths) / "part.json", {"part": result, "calls": rec.calls})


def run_finetune_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """Train member ``unit.member`` into the unit's part folder; GRPO also writes its rollouts there."""
    if config.finetune.launch and not os.environ.get(LAUNCHED):
        return launch_unit(config, paths, unit, tracker)
    setup_runtime(config)
    fc = config.finetune
    init, inits = _inits(config, paths)
    i = unit.member or 0
    row_type = {"dpo": PreferencePair, "grpo": PromptRow}.get(fc.trainer, TrainRow)
    rows = read_verified_jsonl(paths.validate / "train.jsonl", row_type)
    train = TRAINERS.get(fc.trainer)
    chat = _chat(config, inits[0])
    grpo = _GRPORound(config, paths, init) if fc.trainer == "grpo" else None
    target = unit.dir(paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    cfg = fc.train.model_copy(update={"seed": fc.train.seed + i})
    prefix = f"finetune/{unit.member_name}" if unit.member_name else "finetune"
    kwargs: dict[str, Any] = {"dpo": {"dpo": fc.dpo}, "noop": fc.noop.model_dump()}.get(fc.trainer, {})
    with _closing(grpo):
        if grpo is not None:
            kwargs = grpo.kwargs(unit.member_name)
        if chat:
            kwargs["chat"] = True
        result = train(inits[i], rows, target / "model", cfg, tracker, prefix=prefix, **kwargs)
        if grpo is not None:
            rollouts, reused = grpo.member_records()
            write_jsonl(target / "rollouts.jsonl", rollouts)
            write_json(target / "gold_verdicts.json", reused)
    return result | {"chat": chat}


def merge_finetune(config: Config, paths: RoundPaths, units: list[Unit], parts: list[dict[str, Any]],
                   tracker: Tracker) -> StageReport:
    """The members into the round's model folder; GRPO's rollouts graded, validated (GX) and written."""
    setup_runtime(config)
    fc = config.finetune
    init, inits = _inits(config, paths)
    grpo = _GRPORound(config, paths, init) if fc.trainer == "grpo" else None
    results = [{k: v for k, v in p.items() if k != "chat"} for p in parts]
    chat = bool(parts[0]["chat"]) if parts else False
    extra: dict[str, float] = {}
    with timer() as t, staged_output(paths.model) as out, staged_output(paths.finetune) as side, _closing(grpo):
        move_members(paths, units, out, sub="model")
        if grpo is not None:
            rollouts = [r for u in units for r in read_jsonl(u.dir(paths) / "rollouts.jsonl", Rollout)]
            reused = [json.loads((u.dir(paths) / "gold_verdicts.json").read_text()) for u in units]
            extra = grpo.finish(side, tracker, rollouts, reused)
        result = {
            "rows": results[0]["rows"],
            "steps": results[0]["steps"],
            "train_loss": sum(r["train_loss"] for r in results) / len(results),
            "final_loss": sum(r["final_loss"] for r in results) / len(results),
            "seconds": sum(r["seconds"] for r in results),
        }
        metrics = {
            "finetune/rows": result["rows"],
            "finetune/steps": result["steps"],
            "finetune/train_loss": result["train_loss"],
            "finetune/final_loss": result["final_loss"],
            "finetune/seconds": result["seconds"],
        }
        for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy"):
            vals = [r[key] for r in results if key in r]
            if vals:
                metrics[f"finetune/last_{key}"] = sum(vals) / len(vals)
        metrics.update(extra)
        report = StageReport(stage="finetune", round=paths.round, seconds=result["seconds"], metrics=metrics,
                             outputs={"model": str(paths.model)} | ({"rollouts": str(paths.finetune / "rollouts.jsonl")}
                                                                   if grpo else {}),
                             details={"init": str(init), "trainer": fc.trainer, "init_policy": fc.init, "chat": chat,
                                      "members": results})
        report.write(out)
        report.write(side)
        write_manifest(out, producer=f"finetune@{paths.key}")
        write_manifest(side, producer=f"finetune@{paths.key}")
    parts_finish(paths, "finetune")
    report.seconds += t["seconds"]
    tracker.log_metrics(metrics, step=paths.round)
    if grpo is not None:
        tracker.log_dataset(paths.finetune / "rollouts.jsonl", name=f"{paths.key}/rollouts", context="rollouts")
    log.info("finetune@%s: %s from %s, %d steps at lr %g (%d members)", paths.key, fc.trainer, init, result["steps"],
             results[0].get("learning_rate", fc.train.lr), len(units))
    return report


FINETUNE = Split("finetune", finetune_units, run_finetune_unit, merge_finetune)


def run_finetune(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """The whole stage in this process (``selfimprove finetune``, ``dvc repro``): members one after another."""
    return run_split(FINETUNE, config, paths, tracker)
