"""The self-improvement loop as Prefect flows: ``selfimprove-loop`` runs bootstrap then every round;
``selfimprove-round`` runs one round as the tasks sample -> verify -> validate -> finetune -> evaluate.

Each task *is* the core stage function (``tasks/``). Before a stage runs, DVC is asked whether it is up to
date (then it is skipped: this is how an interrupted loop resumes); after it runs, ``dvc commit`` records
it, so the workspace ends exactly as ``dvc repro`` would leave it and ``dvc status`` is clean. Each round
publishes its summary table as a Prefect artifact; a failed Great Expectations gate publishes its report.

Run it with ``selfimprove run`` (or ``python -m flows.loop``); serve it for the Prefect UI with
``python flows/serve.py`` (see ``make ui``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import tasks
from selfimprove import dvcstate
from selfimprove.config import Config, ConfigError, apply_overrides_to_file, load_config, set_rounds
from selfimprove.paths import RoundPaths
from selfimprove.preflight import preflight
from selfimprove.quality import DataQualityError
from selfimprove.report import improvement, markdown, table_rows
from selfimprove.stages.summary import load_round_metrics, run_summary
from selfimprove.tracking import make_tracker


class LoopBusy(RuntimeError):
    pass


@contextmanager
def workspace_lock(project: Path, config: Config):
    """One loop per workspace: a second one fails at once instead of corrupting the first one's outputs."""
    ws = project / config.workspace
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / ".loop.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LoopBusy(f"another loop is running in {ws} ({f.read().strip() or 'unknown pid'}); wait for it or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _artifact_key(*parts: str) -> str:
    return "-".join(parts).lower().replace("_", "-").replace(".", "-")


def _rounds_for_table(config: Config, project: Path) -> list[dict[str, Any]]:
    return [{"round": int(m["round"]), "metrics": m} for m in load_round_metrics(config, project)]


def run_stage(task: Any, stage_id: str, config: Config, paths: RoundPaths, tracker: Any, project: Path) -> bool:
    """Run ``task`` unless DVC says ``stage_id`` is up to date; record it in DVC afterwards. True if it ran."""
    logger = get_run_logger()
    if dvcstate.is_fresh(project, stage_id):
        logger.info("%s is up to date (DVC); skipping", stage_id)
        return False
    try:
        task(config, paths, tracker)
    except DataQualityError as e:
        create_markdown_artifact(
            key=_artifact_key(config.loop.name, paths.key, "validation-failed"),
            markdown=f"# {stage_id}: dataset failed validation\n\n```\n{e}\n```\n",
            description=f"Great Expectations report for {stage_id}",
        )
        tracker.fail(e)
        raise
    except Exception as e:
        tracker.fail(e)
        raise
    dvcstate.commit(project, stage_id)
    return True


@flow(name="selfimprove-round", flow_run_name="round-{round_key}")
def round_flow(round_key: str, project: str = ".", params: str = "params.yaml") -> dict[str, Any]:
    """One round: sample -> verify -> validate -> finetune -> evaluate, each recorded in DVC."""
    project_path = Path(project).resolve()
    os.chdir(project_path)  # relative paths in params.yaml are project-relative
    config = load_config(project_path / params)
    paths = RoundPaths.for_round(config, round_key, project_path)
    tracker = make_tracker(config, project_path, round_key)
    ran = [name for name, task in tasks.ROUND_TASKS.items()
           if run_stage(task, f"{name}@{round_key}", config, paths, tracker, project_path)]
    metrics = json.loads(paths.metrics.read_text()) if paths.metrics.exists() else {}
    rows = table_rows([{"round": paths.round, "metrics": metrics}])
    create_table_artifact(
        table=rows,
        key=_artifact_key(config.loop.name, "round", str(paths.round)),
        description=f"Round {paths.round} of loop '{config.loop.name}': accuracy per difficulty, accepted labels, "
        f"label precision, seconds per stage. Stages run: {', '.join(ran) or 'none (all up to date)'}.",
    )
    return {"round": paths.round, "ran": ran, "metrics": metrics}


@flow(name="selfimprove-loop", flow_run_name="loop")
def loop_flow(
    rounds: int | None = None,
    overrides: list[str] | None = None,
    project: str = ".",
    params: str = "params.yaml",
) -> dict[str, Any]:
    """The whole loop: bootstrap (round 0), then every round in params.yaml.

    ``overrides`` are dotted ``key=value`` pairs (as ``dvc exp run -S``); like ``dvc exp run -S`` they are
    written into params.yaml so DVC's record matches what ran. ``rounds`` resizes params.yaml's rounds.
    """
    logger = get_run_logger()
    project_path = Path(project).resolve()
    os.chdir(project_path)  # relative paths in params.yaml are project-relative
    params_path = project_path / params
    config = apply_overrides_to_file(params_path, list(overrides or []))
    if rounds is not None and rounds != len(config.rounds):
        config = set_rounds(params_path, rounds)
    problems = preflight(config, project_path)
    if problems:
        raise ConfigError("preflight failed:\n  " + "\n  ".join(problems))
    ran: dict[str, list[str]] = {}
    with workspace_lock(project_path, config):
        r0 = RoundPaths.for_round(config, "r0", project_path)
        boot = run_stage(tasks.bootstrap, "bootstrap", config, r0, make_tracker(config, project_path, "r0"), project_path)
        ran["r0"] = ["bootstrap"] if boot else []
        for key in config.round_keys():
            result = round_flow(key, project=str(project_path), params=params)
            ran[key] = result["ran"]
            logger.info("round %s done: %s", key, {k: v for k, v in result["metrics"].items() if k.startswith("accuracy")})
        run_summary(config, None, None, project_path)
    table = _rounds_for_table(config, project_path)
    create_markdown_artifact(
        key=_artifact_key(config.loop.name, "summary"),
        markdown=(f"# Loop '{config.loop.name}'\n\n{markdown(table)}\n\n"
                  + "".join(f"- {line}\n" for line in improvement(table, config.bootstrap.difficulties))
                  + f"\nPlot: `{project_path / config.workspace / 'summary/accuracy.png'}`"),
        description="Per-round table of the whole loop",
    )
    return {"table": table_rows(table), "ran": ran}


def main(project: str | Path = ".", params: str = "params.yaml", rounds: int | None = None,
         overrides: list[str] | None = None) -> int:
    """CLI entry (``selfimprove run``): run the loop flow, print the table from MLflow, say where to look."""
    import shutil

    from rich.console import Console

    from selfimprove.report import TABLE_WIDTH, render
    from selfimprove.tracking import TrackingError, read_rounds

    # Wide enough for the per-round table even when stdout is not a terminal (rich would assume 80).
    console = Console(width=max(shutil.get_terminal_size((TABLE_WIDTH, 24)).columns, TABLE_WIDTH))
    project = Path(project).resolve()
    os.chdir(project)
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    try:
        loop_flow(rounds=rounds, overrides=overrides, project=str(project), params=params)
    except (ConfigError, DataQualityError, LoopBusy, FileNotFoundError, dvcstate.DvcError) as e:
        from rich.markup import escape

        console.print(f"[bold red]loop stopped:[/] {escape(str(e))}", soft_wrap=True)
        return 1
    config = load_config(project / params)
    try:
        rounds_data = read_rounds(config, project) if config.tracking.enabled else _rounds_for_table(config, project)
        console.print(render(rounds_data, title=f"loop '{config.loop.name}': per-round results (from MLflow)"))
        for line in improvement(rounds_data, config.bootstrap.difficulties):
            console.print(f"  {line}")
    except TrackingError as e:
        console.print(f"[yellow]could not read MLflow:[/] {e}")
    plot = project / config.workspace / "summary" / "accuracy.png"
    console.print(
        "\n[bold]Next:[/]\n"
        f"  plot of accuracy across rounds   {plot}\n"
        "  per-round table, JSON            selfimprove report --json\n"
        "  MLflow UI (runs, models)         make mlflow-ui  -> http://127.0.0.1:5000\n"
        "  Prefect UI (flows, artifacts)    make ui         -> http://127.0.0.1:4200\n"
        "  DVC pipeline and plots           dvc dag; dvc metrics show; dvc plots show\n"
    )
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the selfimprove loop flow.")
    ap.add_argument("--project", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    raise SystemExit(main(a.project, a.params, a.rounds, a.overrides))
