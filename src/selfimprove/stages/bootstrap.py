"""``bootstrap`` (round 0): the starting model and the labelled data the rounds may mix in.

- ``model.source: tiny`` (the embedded default): build a character tokenizer and a tiny Llama-style model
  from ``model.tiny``, train it with TRL SFT on labelled easy problems (``bootstrap.difficulties``), stopping
  early once every bootstrap difficulty reaches ``bootstrap.early_stop.target`` greedy accuracy.
- ``model.source: gguf`` (or ``path | hub`` with ``model.import_weights``): no training; the model is imported
  into ``runs/r0/model`` as a Hugging Face folder (``selfimprove.models.importer``), so round 0 is its bytes:
  DVC-versioned, registered, evaluated. ``path | hub`` without it: ``runs/r0/model/model_ref.json`` points at the
  model. Either way the labelled split named by ``bootstrap.real_data_split`` (if any) becomes the real data for
  mixing.

Outputs: ``runs/r0/sample`` (the labelled problems), ``runs/r0/validate`` (the labelled training rows) and
``runs/r0/model``. Round 0 is then evaluated by an ordinary ``evaluate@r0``, so the curve starts there.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from selfimprove.config import Config
from selfimprove.ensemble import member_names
from selfimprove.io import staged_output, write_json, write_jsonl, write_manifest
from selfimprove.paths import RoundPaths
from selfimprove.metrics import evaluate_with
from selfimprove.stages.common import StageReport, problem_set, setup_runtime, timer
from selfimprove.stages.parts import Split, Unit, move_members, run_split
from selfimprove.stages.parts import finish as parts_finish
from selfimprove.tracker import Tracker
from selfimprove.types import Problem, TrainRow

log = logging.getLogger(__name__)


def labelled_problems(config: Config) -> list[Problem]:
    pset = problem_set(config)
    bc = config.bootstrap
    if config.model.source == "tiny":
        if hasattr(pset, "labelled"):
            problems: list[Problem] = pset.labelled(bc.examples_per_difficulty, bc.difficulties, config.seed)
        else:
            problems = [p for p in pset.load(config.problems.train_split) if p.difficulty in set(bc.difficulties) or not bc.difficulties]
    elif bc.real_data_split:
        problems = pset.load(bc.real_data_split)
    else:
        return []
    return problems


def labelled_rows(problems: list[Problem], config: Config | None = None) -> list[TrainRow]:
    """The labelled rows; with ``correct.bootstrap`` (a tiny model trained here) also rows in the second-attempt
    format, so round 0 knows what a second attempt is (``selfimprove.correction.format_rows``)."""
    rows = []
    for p in problems:
        completion = p.solution if p.solution is not None else p.answer
        if completion is None:
            continue
        rows.append(TrainRow(id=f"real/{p.id}", prompt=p.prompt, completion=completion, problem_id=p.id, origin="real",
                             round=0, difficulty=p.difficulty, label=p.answer))
    cc = config.correct if config is not None else None
    if cc is not None and cc.enabled and cc.bootstrap > 0 and config.model.source == "tiny":
        from selfimprove.correction import format_rows

        rows += format_rows(problem_set(config), problems, cc.mode, cc.instruction, cc.bootstrap, config.seed)
    return rows


class _EarlyStop:
    """Quick greedy eval during bootstrap training; stops once every bootstrap difficulty hits the target."""

    def __init__(self, config: Config, tokenizer: Any, tracker: Tracker, prefix: str = "bootstrap"):
        from transformers import TrainerCallback

        es = config.bootstrap.early_stop
        assert es is not None
        pset = problem_set(config)
        diffs = config.bootstrap.difficulties
        # Training-partition problems: stopping decisions never look at the evaluation set.
        self.problems = pset.training_pool(es.problems_per_difficulty * len(diffs), diffs, config.seed + 17, round=-1)
        # The problem set's own verifier at its default options, and greedy answers as long as sampling allows:
        # a training-time check that reads no evaluate or verify settings (DVC would otherwise have to rerun
        # bootstrap whenever those change; dvc.yaml lists what it reads).
        from selfimprove.samplers import SamplingParams
        from selfimprove.verifiers import VERIFIERS

        self.verifier = VERIFIERS.get(pset.gold_verifier())()
        self.params = SamplingParams(k=0, greedy=True, max_new_tokens=config.sample.max_new_tokens,
                                     batch_size=config.sample.batch_size, logprobs=False)
        self.history: list[dict[str, Any]] = []
        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
                if state.global_step % es.eval_every or state.global_step >= state.max_steps:
                    return
                from selfimprove.samplers.hf import TransformersSampler

                model.eval()
                metrics, _ = evaluate_with(TransformersSampler.from_model(model, tokenizer), outer.problems,
                                           outer.verifier, outer.params, round=0, progress=False)
                model.train()
                accs = {k: v for k, v in metrics.items() if k.startswith("accuracy/")}
                outer.history.append({"step": state.global_step, **accs})
                tracker.log_metrics({f"{prefix}/{k}": v for k, v in accs.items()}, step=state.global_step)
                log.info("%s step %d: %s", prefix, state.global_step, {k: round(v, 3) for k, v in accs.items()})
                if accs and min(accs.values()) >= es.target:
                    control.should_training_stop = True

        self.callback = _CB()


def _build_tiny(config: Config, rows: list[TrainRow], directory: Path, seed: int) -> tuple[Any, Any]:
    from selfimprove.models import build_char_tokenizer, build_tiny_model

    chars = "".join(sorted({ch for r in rows for ch in r.prompt + r.completion}))
    tok = build_char_tokenizer(chars)
    t = config.model.tiny
    model = build_tiny_model(tok, layers=t.layers, hidden=t.hidden, heads=t.heads, intermediate=t.intermediate,
                             position_scheme=t.position_scheme, rope_theta=t.rope_theta, seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


def bootstrap_units(config: Config, paths: RoundPaths) -> list[Unit]:
    """One unit per ensemble member to train (none when round 0 is an existing model)."""
    if config.model.source != "tiny":
        return []
    n = config.model.ensemble
    return [Unit("bootstrap", member=i, member_name=name) for i, name in enumerate(member_names(n) if n > 1 else [None])]


def run_bootstrap_unit(config: Config, paths: RoundPaths, unit: Unit, tracker: Tracker) -> dict[str, Any]:
    """Build and train member ``unit.member`` from its own seed into the unit's part folder."""
    from selfimprove.trainers import TRAINERS

    train = TRAINERS.get(config.bootstrap.trainer)
    setup_runtime(config)
    rows = labelled_rows(labelled_problems(config), config)
    if not rows:
        raise ValueError("bootstrap has no labelled rows to train the tiny model on; check bootstrap.difficulties")
    i, target = unit.member or 0, unit.dir(paths)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"bootstrap/{unit.member_name}" if unit.member_name else "bootstrap"
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = _build_tiny(config, rows, Path(tmp), seed=config.seed * 1000 + i)
        stopper = _EarlyStop(config, tok, tracker, prefix) if config.bootstrap.early_stop else None
        cfg = config.bootstrap.train.model_copy(update={"seed": config.bootstrap.train.seed + i})
        rep = train(tmp, rows, target, cfg, tracker, prefix=prefix, model=model, tokenizer=tok,
                    callbacks=[stopper.callback] if stopper else [])
    if stopper:
        rep["early_stop_history"] = stopper.history
    return rep


def merge_bootstrap(config: Config, paths: RoundPaths, units: list[Unit], parts: list[dict[str, Any]],
                    tracker: Tracker) -> StageReport:
    """Write round 0's outputs: the labelled problems and rows, and the trained members (or the model pointer)."""
    setup_runtime(config)
    mc = config.model
    if mc.source == "path" and not Path(mc.path).exists():  # type: ignore[arg-type]
        raise FileNotFoundError(f"model not found: model.path = {mc.path!r} does not exist")
    if mc.source == "gguf":
        from selfimprove.models.importer import find_gguf

        find_gguf(mc.path, mc.gguf_file)  # fails before anything is written
    with timer() as t:
        problems = labelled_problems(config)
        rows = labelled_rows(problems, config)
        with staged_output(paths.sample) as out:
            write_jsonl(out / "problems.jsonl", problems)
            write_jsonl(out / "samples.jsonl", [])
            write_manifest(out, producer="bootstrap")
        with staged_output(paths.validate) as out:
            write_jsonl(out / "train.jsonl", rows)
            write_jsonl(out / "accepted.jsonl", [])
            write_manifest(out, producer="bootstrap")
        train_report: dict[str, Any] = {}
        metrics: dict[str, float] = {"bootstrap/rows": len(rows)}
        with staged_output(paths.model) as out:
            if mc.source == "tiny":
                move_members(paths, units, out)
                n = len(parts)
                train_report = {"steps": sum(r["steps"] for r in parts), "final_loss": sum(r["final_loss"] for r in parts) / n,
                                "seconds": sum(r["seconds"] for r in parts), "members": parts}
                metrics.update({"bootstrap/steps": train_report["steps"], "bootstrap/final_loss": train_report["final_loss"]})
            elif mc.source == "gguf" or mc.import_weights:  # round 0 is the real model's bytes, versioned by DVC
                from selfimprove.models.importer import import_model

                train_report = {"imported": import_model(mc.source, mc.path, out, gguf_file=mc.gguf_file,
                                                         revision=mc.revision, trust_remote_code=mc.trust_remote_code)}
                metrics["bootstrap/parameters"] = train_report["imported"]["parameters"]
            else:
                write_json(out / "model_ref.json", {"source": mc.source, "path": mc.path, "revision": mc.revision})
            report = StageReport(stage="bootstrap", round=0, metrics=metrics, details=train_report,
                                 outputs={"model": str(paths.model), "train": str(paths.validate / "train.jsonl")})
            report.write(out)
            write_manifest(out, producer="bootstrap")
    parts_finish(paths, "bootstrap")
    # the stage's time: its members' training (side by side or one after another) and this merge
    report.seconds = t["seconds"] + (train_report.get("seconds", 0.0) if "members" in train_report else 0.0)
    timings = {"bootstrap/seconds": report.seconds}
    if "members" in train_report:
        timings["bootstrap/train_seconds"] = train_report["seconds"]
    tracker.log_metrics(metrics | timings, step=0)
    tracker.log_params({"bootstrap.rows": len(rows)})
    if rows:
        tracker.log_dataset(paths.validate / "train.jsonl", name="r0/train", context="training")
    log.info("bootstrap: %d labelled rows, %s", len(rows),
             f"{mc.ensemble} model(s) trained for {train_report['steps']} steps" if "members" in train_report
             else f"model {mc.path} imported into {paths.model}" if "imported" in train_report else f"model {mc.path}")
    return report


BOOTSTRAP = Split("bootstrap", bootstrap_units, run_bootstrap_unit, merge_bootstrap)


def run_bootstrap(config: Config, paths: RoundPaths, tracker: Tracker) -> StageReport:
    """The whole stage in this process (``selfimprove bootstrap``, ``dvc repro``): members one after another."""
    return run_split(BOOTSTRAP, config, paths, tracker)
