"""``selfimprove`` command line: the stage commands DVC runs, the loop, the report.

    selfimprove run [--rounds N] [-S key=value ...]   run the whole loop (Prefect flow, DVC-recorded)
    selfimprove bootstrap | summary                 single stages (what dvc.yaml calls)
    selfimprove sample|verify|validate|finetune|evaluate --round rN
    selfimprove report [--json]                     per-round table read back from MLflow
    selfimprove check [-S key=value ...]            validate params.yaml and preflight, do nothing else
    selfimprove rounds N                            set the rounds in params.yaml (curriculum +1 digit/round)
    selfimprove grade FILE                          grade a JSONL file of completions with any verifier

Every command works from the project folder (``--project`` to point elsewhere) and reads ``params.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-improvement loops for language models.")
console = Console(stderr=True)
out = Console()

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder (holds params.yaml and dvc.yaml).")]
ParamsOpt = Annotated[str, typer.Option("--params", help="Params file, relative to the project folder.")]
RoundOpt = Annotated[str, typer.Option("--round", "-r", help="Round key from params.yaml, e.g. r1.")]
OverrideOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="Override in dotted form: sample.temperature=0.7")]


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        return
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("selfimprove").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(e: BaseException) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _load(project: Path, params: str, overrides: list[str] | None = None) -> Any:
    from selfimprove.config import ConfigError, load_config

    try:
        return load_config(project / params, overrides)
    except ConfigError as e:
        _fail(e)


def run_stage(stage: str, project: Path, params: str, round_key: str) -> None:
    """Run one stage as DVC does: load config, open the round's MLflow run, run, record failure."""
    from selfimprove.paths import RoundPaths
    from selfimprove.stages import STAGES
    from selfimprove.tracking import make_tracker

    setup_logging()
    config = _load(project, params)
    os.chdir(project)
    try:
        paths = RoundPaths.for_round(config, round_key, ".")
        tracker = make_tracker(config, ".", round_key)
    except Exception as e:  # noqa: BLE001 - config/tracking errors are user errors here
        _fail(e)
    try:
        if stage == "summary":
            STAGES[stage](config, None, None, ".")
        else:
            STAGES[stage](config, paths, tracker)
    except Exception as e:  # noqa: BLE001
        tracker.fail(e)
        logging.getLogger("selfimprove").debug("stage failed", exc_info=True)
        _fail(e)


def _stage_command(stage: str, needs_round: bool) -> None:
    if needs_round:

        def cmd(round: RoundOpt, project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:
            run_stage(stage, project, params, round)
    else:

        def cmd(project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:  # type: ignore[misc]
            run_stage(stage, project, params, "r0")

    from selfimprove.stages import STAGES

    cmd.__doc__ = (STAGES[stage].__module__ and sys.modules.get(STAGES[stage].__module__).__doc__ or "").split("\n\n")[0]
    app.command(stage)(cmd)


def _register_stage_commands() -> None:
    # Importing selfimprove.stages is cheap: heavy libraries load inside the stage functions.
    for name in ("bootstrap", "sample", "verify", "validate", "finetune", "evaluate", "summary"):
        _stage_command(name, name not in ("bootstrap", "summary"))


_register_stage_commands()


@app.command()
def run(
    rounds: Annotated[int | None, typer.Option(help="Number of rounds (rewrites params.yaml 'rounds' if different).")] = None,
    overrides: OverrideOpt = None,
    project: ProjectOpt = Path("."),
    params: ParamsOpt = "params.yaml",
) -> None:
    """Run the self-improvement loop as a Prefect flow; every stage is recorded in DVC and MLflow."""
    setup_logging()
    project = project.resolve()
    if not (project / "flows" / "loop.py").exists():
        _fail(FileNotFoundError(f"{project / 'flows/loop.py'} not found: run from the selfimprove project folder or pass --project"))
    sys.path.insert(0, str(project))
    from flows.loop import main as loop_main  # the Prefect layer lives outside the core package

    code = loop_main(project=project, params=params, rounds=rounds, overrides=list(overrides or []))
    raise typer.Exit(code)


@app.command()
def report(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    project: ProjectOpt = Path("."),
    params: ParamsOpt = "params.yaml",
) -> None:
    """Print the per-round table read back from MLflow (accuracy per difficulty, acceptance, time per stage)."""
    from selfimprove.report import TABLE_WIDTH, render, table_rows
    from selfimprove.tracking import TrackingError, read_rounds

    config = _load(project, params)
    try:
        rounds = read_rounds(config, project)
    except TrackingError as e:
        _fail(e)
    if as_json:
        print(json.dumps({"loop": config.loop.name, "rounds": rounds, "table": table_rows(rounds)}, indent=2, default=str))
    else:
        import shutil

        from rich.console import Console

        wide = Console(width=max(shutil.get_terminal_size((TABLE_WIDTH, 24)).columns, TABLE_WIDTH))
        wide.print(render(rounds, title=f"loop '{config.loop.name}' (from MLflow)"))


@app.command()
def check(overrides: OverrideOpt = None, project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:
    """Validate params.yaml (and overrides) and the inputs the loop needs; exit 1 naming every problem."""
    from selfimprove.preflight import preflight

    config = _load(project, params, overrides)
    problems = preflight(config, project)
    if problems:
        _fail(ValueError("preflight failed:\n  " + "\n  ".join(problems)))
    out.print(f"[green]ok[/]: {project / params} is valid; {len(config.rounds)} round(s): {', '.join(config.rounds)}")


@app.command("rounds")
def set_rounds_cmd(n: int, project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:
    """Set the number of rounds in params.yaml (new rounds extend the curriculum by one difficulty each)."""
    from selfimprove.config import ConfigError, set_rounds

    if n < 1:
        _fail(ValueError("rounds must be >= 1"))
    try:
        config = set_rounds(project / params, n)
    except ConfigError as e:
        _fail(e)
    out.print(", ".join(f"{k}: {v.difficulties}" for k, v in config.rounds.items()))


def _mount_grade() -> None:
    try:
        from selfimprove.cli_grade import grade
    except ImportError:  # grading module not installed in this build
        return
    app.command("grade")(grade)


_mount_grade()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
