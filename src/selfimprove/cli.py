"""``selfimprove`` command line: the loop, the stage commands DVC runs, runs, the report.

    selfimprove run [--name N] [-S key=value ...] [--rounds N]   one run of the loop: a Prefect flow, a DVC experiment
    selfimprove run --resume N                                   continue a failed or killed run
    selfimprove runs [--remove N]                                the runs of this project and how they ended
    selfimprove report [--name N] [--json]                       per-round table read back from MLflow
    selfimprove compare [NAME ...]                               params that differ between runs, their results
    selfimprove plots [NAME ...]                                 their plots across rounds overlaid (dvc plots diff)
    selfimprove check [-S key=value ...]                         validate params.yaml and preflight, do nothing else
    selfimprove rounds N                                         set the rounds in params.yaml (you edit your file)
    selfimprove bootstrap | summary                              single stages (what dvc.yaml calls)
    selfimprove sample|verify|validate|finetune|evaluate --round rN
    selfimprove grade FILE                                       grade a JSONL file of completions with any verifier

Every command works from the project folder (``--project`` to point elsewhere). ``--verbose`` (before the
command) adds tracebacks to error messages and debug logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-improvement loops for language models.")
console = Console(stderr=True)
out = Console()
STATE = {"verbose": False}

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder (holds params.yaml and dvc.yaml).")]
ParamsOpt = Annotated[str, typer.Option("--params", help="Params file, relative to the project folder.")]
RoundOpt = Annotated[str, typer.Option("--round", "-r", help="Round key from params.yaml, e.g. r1.")]
OverrideOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="Override in dotted form: sample.temperature=0.7")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks and debug logs.")] = False) -> None:
    STATE["verbose"] = verbose


def setup_logging(verbose: bool | None = None) -> None:
    from rich.logging import RichHandler

    verbose = STATE["verbose"] if verbose is None else verbose
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
        logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("selfimprove").setLevel(logging.DEBUG if verbose else logging.INFO)
    # GX announces its temporary docs folder at INFO on every validation
    logging.getLogger("great_expectations").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fail(e: BaseException | str, stores: dict[str, str] | None = None) -> None:
    from rich.markup import escape

    from selfimprove.errors import explain

    if STATE["verbose"] and isinstance(e, BaseException) and sys.exc_info()[0] is not None:
        console.print_exception(show_locals=False)
    msg = e if isinstance(e, str) else explain(e, stores)
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Any failure becomes one sentence (``selfimprove.errors.explain``); the traceback only with --verbose."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001
        _fail(e)


def _load(project: Path, params: str = "params.yaml", overrides: list[str] | None = None) -> Any:
    from selfimprove.params import load_config

    with guarded():
        return load_config(project / params, overrides)


def run_stage(stage: str, project: Path, round_key: str) -> None:
    """Run one stage as DVC does: read params.yaml, run, log into the MLflow run handed in (if any)."""
    from selfimprove.paths import RoundPaths
    from selfimprove.stages import STAGES
    from selfimprove.tracking import stage_tracker

    setup_logging()
    config = _load(project)
    os.chdir(project)
    with guarded():
        paths = RoundPaths.for_round(config, round_key, ".")
        tracker = stage_tracker(config, ".", round_key)
        STAGES[stage](config, paths, tracker)


def _stage_command(stage: str, needs_round: bool) -> None:
    if needs_round:

        def cmd(round: RoundOpt, project: ProjectOpt = Path(".")) -> None:
            run_stage(stage, project, round)
    else:

        def cmd(project: ProjectOpt = Path(".")) -> None:  # type: ignore[misc]
            run_stage(stage, project, "r0")

    from selfimprove.stages import STAGES

    doc = (sys.modules.get(STAGES[stage].__module__).__doc__ or "").split("\n\n")[0]
    cmd.__doc__ = doc + "\n\nReads params.yaml (DVC's params file); logs to MLflow only when a run is handed in " \
                        "through SELFIMPROVE_MLFLOW_RUN_ID."
    app.command(stage)(cmd)


def _register_stage_commands() -> None:
    # Importing selfimprove.stages is cheap: heavy libraries load inside the stage functions.
    for name in ("bootstrap", "propose", "sample", "verify", "correct", "validate", "finetune", "evaluate", "summary"):
        _stage_command(name, name not in ("bootstrap", "summary"))


_register_stage_commands()


@app.command("finetune-unit", hidden=True)
def finetune_unit(round: RoundOpt, member: Annotated[int, typer.Option(help="Ensemble member index.")] = 0,
                  project: ProjectOpt = Path(".")) -> None:
    """One process of a member's training started by finetune.launch (accelerate launch, torchrun)."""
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.finetune import run_launched_unit

    setup_logging()
    config = _load(project)
    os.chdir(project)
    with guarded():
        run_launched_unit(config, RoundPaths.for_round(config, round, "."), member)


# ----------------------------------------------------------------------------------------------------- run


def _validate_run(home: Path, params: str, overrides: list[str], rounds: int | None) -> Any:
    """The run's config, built exactly as the run will build it, in a temporary folder: fails in about a second."""
    import shutil

    from selfimprove.experiments import prepare_params
    from selfimprove.params import load_config
    from selfimprove.prerun import check_rounds

    if not (home / params).exists():
        raise FileNotFoundError(f"{home / params}: params file not found (run from the project folder or pass --project)")
    # errors name the user's file and line; with --rounds, an override may set a round that --rounds adds
    # (--rounds 2 -S rounds.r2.problems=400): those are checked once the rounds are written, below
    check_rounds(load_config(home / params, overrides if rounds is None else None), rounds)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(home / params, Path(tmp) / "params.yaml")
        prepare_params(Path(tmp), home, "params.yaml", overrides, rounds)
        config = load_config(Path(tmp) / "params.yaml")
    for line in shadowed(config, overrides):
        console.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
    return config


def shadowed(config: Any, overrides: list[str]) -> list[str]:
    """Overrides that some rounds do not see because the round sets the same thing itself."""
    out = []
    if any(o.split("=", 1)[0].strip() == "sample.problems_per_round" for o in overrides):
        own = {k: r.problems for k, r in config.rounds.items() if r.problems}
        if own:
            out.append(f"sample.problems_per_round={config.sample.problems_per_round} applies to the rounds without "
                       f"their own 'problems'; " + ", ".join(f"{k} keeps {n}" for k, n in own.items()) +
                       " (set rounds.<key>.problems to change those)")
    return out


def _use_local_prefect_server(home: Path) -> None:
    """If ``make ui`` runs a Prefect server for this project, send runs there (they show up in its UI)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    url_file = home / ".prefect" / "api_url"
    if not url_file.exists():
        return
    url = url_file.read_text().strip()
    import httpx

    with contextlib.suppress(Exception):
        if httpx.get(url.rstrip("/") + "/health", timeout=2).status_code == 200:
            os.environ["PREFECT_API_URL"] = url


@app.command()
def run(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Experiment name (default: generated).")] = None,
    overrides: OverrideOpt = None,
    rounds: Annotated[int | None, typer.Option(help="Number of rounds for this run (default: params.yaml's).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the failed or killed run with this name.")] = None,
    apply: Annotated[str, typer.Option(help="Bring the finished run into the workspace: auto (when its params are "
                                             "the workspace's), always, never.")] = "auto",
    project: ProjectOpt = Path("."),
    params: Annotated[str, typer.Option("--params", help="Start from this params file instead of params.yaml: it "
                                                         "becomes the run's params.yaml, which DVC records.")] = "params.yaml",
) -> None:
    """Run the self-improvement loop: a Prefect flow, in its own DVC experiment; params.yaml is never changed."""
    setup_logging()
    from selfimprove import experiments
    from selfimprove.errors import check_prefect_api
    from selfimprove.prerun import check_preflight, check_resume

    if apply not in ("auto", "always", "never"):
        _fail(f"--apply must be auto, always or never (got {apply!r})")
    with guarded():
        home = experiments.git_root(project)
        experiments.head_commit(home)
        if resume:
            check_resume(list(overrides or []), rounds, params=params != "params.yaml", name=bool(name))
            experiments.reconcile(home)
            rec = experiments.read_record(home, resume)
            if rec is None:
                raise experiments.ExperimentError(f"no run named {resume!r} (selfimprove runs lists them)")
            if rec.status not in ("failed", "killed"):
                raise experiments.ExperimentError(f"run {resume!r} is {rec.status}; only failed or killed runs resume")
            config = _load(Path(rec.workdir))
            exp_name = resume
        else:
            config = _validate_run(home, params, list(overrides or []), rounds)
            check_preflight(config, home, check_workspace=False)
            exp_name = name or experiments.generate_name(home)
            experiments.check_name(exp_name)
            why = experiments.name_taken(home, exp_name)
            if why:
                raise experiments.ExperimentError(why)
        _use_local_prefect_server(home)
        check_prefect_api()
        experiments.reap_orphan_servers(home)
    os.environ.setdefault("PREFECT_HOME", str(home / ".prefect"))
    console.print(f"[bold]run {exp_name}[/]: {'resuming' if resume else 'starting'}; Prefect "
                  f"{os.environ.get('PREFECT_API_URL') or 'temporary local server'}", highlight=False)
    try:
        from flows.loop import loop_flow, quiet_console_tracebacks  # the Prefect layer lives outside the core

        if not STATE["verbose"]:
            quiet_console_tracebacks()

        result = loop_flow.with_options(flow_run_name=exp_name)(
            overrides=list(overrides or []), rounds=rounds, params=params, name=None if resume else exp_name,
            resume=resume, from_workspace=True, apply=apply, project=str(home))
    except (typer.Exit, typer.Abort):
        raise
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail_run(home, exp_name, e, _stores(home, config))
    _print_result(home, config, exp_name, result)


def _difficulty(config: Any) -> tuple[str, str]:
    """What difficulty N means for the run's problem set (the report's legend)."""
    try:
        from selfimprove.stages.common import problem_set

        return problem_set(config).difficulty_legend()
    except Exception:  # noqa: BLE001 - a legend only
        return "difficulty N", "difficulty"


def _stores(home: Path, config: Any) -> dict[str, str]:
    """The services a run writes to, by name: what an error that names none of them is matched against."""
    out = {}
    if os.environ.get("PREFECT_API_URL"):
        out["Prefect"] = os.environ["PREFECT_API_URL"]
    if config.tracking.enabled:
        from selfimprove.tracking import resolve_uri

        with contextlib.suppress(Exception):
            uri, _ = resolve_uri(config, home)
            out["MLflow"] = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:") else uri
    return out


def _fail_run(home: Path, exp_name: str, e: BaseException, stores: dict[str, str] | None = None) -> None:
    """A run that stopped: the cause in one sentence (with what to do), then what became of the run."""
    from selfimprove import experiments
    from selfimprove.quality import DataQualityError

    rec = experiments.read_record(home, exp_name)
    if rec is not None and rec.status in ("failed", "killed"):
        gate = any(isinstance(x, DataQualityError) for x in (e, e.__cause__, e.__context__))
        again = ("" if gate else f"`selfimprove run --resume {exp_name}` continues it once the cause is fixed; ")
        console.print(f"run {exp_name} stopped; its workspace is kept ({rec.workdir}): {again}"
                      f"`selfimprove runs --remove {exp_name}` removes it", highlight=False, soft_wrap=True)
    if isinstance(e, KeyboardInterrupt):
        raise typer.Exit(130)
    _fail(e, stores)


def _print_result(home: Path, config: Any, exp_name: str, result: dict[str, Any]) -> None:
    import shutil

    from rich.console import Console

    from selfimprove.report import TABLE_WIDTH, improvement, render
    from selfimprove.tracking import TrackingError
    from selfimprove.tracking_read import read_rounds

    wide = Console(width=max(shutil.get_terminal_size((TABLE_WIDTH, 24)).columns, TABLE_WIDTH))
    try:
        if config.tracking.enabled:
            _, rows = read_rounds(config, home, experiment=exp_name)
        else:
            rows = [{"round": int(k[1:]), "metrics": r["metrics"] | r.get("seconds", {}), "stages": r["states"]}
                    for k, r in result.get("rounds_full", {}).items()]
        what, unit = _difficulty(config)
        wide.print(render(rows, title=f"run '{exp_name}' (loop '{config.loop.name}'): per-round results (from MLflow)",
                          difficulty=what))
        for line in improvement(rows, config.bootstrap.difficulties, unit):
            wide.print(f"  {line}")
    except TrackingError as e:
        console.print(f"[yellow]could not read MLflow:[/] {e}")
    if result.get("decisions"):
        wide.print("[bold]Rounds the curriculum decided[/] (each written into the run's params.yaml before it ran):",
                   highlight=False)
        for line in result["decisions"]:
            wide.print(f"  {line}", highlight=False)
    if result.get("stopped"):
        wide.print(f"[bold]The run {result['stopped']}[/]; the rounds after it are not in its params.yaml, so "
                   "dvc repro reproduces what ran (docs/health.md).", highlight=False)
    applied = result.get("applied")
    from selfimprove.tracking_read import experiment_id, ui_url

    mlflow_url = ui_url("http://127.0.0.1:5000", experiment_id(config, home) if config.tracking.enabled else None,
                        result.get("mlflow_run_id"))
    plot = home / config.workspace / "summary" / "accuracy.png"
    where = (f"  plot of accuracy across rounds   {plot}\n" if applied else
             f"  bring the run into the workspace dvc exp apply {exp_name}   (its params differ from params.yaml)\n")
    wide.print(
        "\n[bold]Next:[/]\n" + where +
        f"  this run in DVC                  dvc exp show --only-changed; dvc exp diff {exp_name}\n"
        f"  per-round table, JSON            selfimprove report --name {exp_name} --json\n"
        f"  MLflow UI (runs, models)         make mlflow-ui  -> {mlflow_url}\n"
        "  Prefect UI (flows, artifacts)    make ui         -> http://127.0.0.1:4200\n"
        "  DVC pipeline and plots           dvc dag; dvc metrics show; dvc plots show\n",
        highlight=False,
    )


@app.command()
def runs(
    remove: Annotated[str | None, typer.Option("--remove", help="Remove this run: workspace, record, DVC experiment.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """List this project's runs (name, status, what they were given), or remove one."""
    from selfimprove import experiments

    with guarded():
        home = experiments.git_root(project)
        if remove:
            done = experiments.remove(home, remove)
            out.print(f"removed {remove}: " + (", ".join(done) if done else "nothing was left"))
            return
        experiments.reconcile(home)
        experiments.reap_orphan_servers(home)
        records = experiments.list_records(home)
        exps = experiments.experiment_refs(home)
    if as_json:
        print(json.dumps([experiments.json_summary(r) | {"dvc_experiment": r.name in exps} for r in records], indent=2))
        return
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title=f"runs of {home}")
    for c in ("name", "status", "started", "baseline", "overrides", "dvc experiment", "note"):
        t.add_column(c)
    import time as _t

    for r in records:
        # errors raised on Ray workers carry terminal colour codes: the table shows text
        error = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", r.error or "")
        note = error.splitlines()[0][:60] if error and r.status != "finished" else ("applied" if r.applied else "")
        t.add_row(r.name, r.status, _t.strftime("%Y-%m-%d %H:%M", _t.localtime(r.created)), r.baseline[:7],
                  " ".join(r.overrides) or "-", "yes" if r.name in exps else "no", note)
    out.print(t)


@app.command()
def report(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Run (experiment) name; default: the latest run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Print a run's per-round table read back from MLflow (accuracy per difficulty, acceptance, time per stage)."""
    from selfimprove.report import TABLE_WIDTH, render, table_rows
    from selfimprove.tracking_read import read_rounds

    config = _load(project)
    with guarded():
        exp_name, rounds = read_rounds(config, project, experiment=name)
    if as_json:
        print(json.dumps({"experiment": exp_name, "loop": config.loop.name, "rounds": rounds, "table": table_rows(rounds)},
                         indent=2, default=str))
    else:
        import shutil

        wide = Console(width=max(shutil.get_terminal_size((TABLE_WIDTH, 24)).columns, TABLE_WIDTH))
        wide.print(render(rounds, title=f"run '{exp_name}' (loop '{config.loop.name}', from MLflow)",
                          difficulty=_difficulty(config)[0]))


NamesArg = Annotated[list[str] | None, typer.Argument(help="Runs (experiment names); default: the latest finished ones.")]
LastOpt = Annotated[int, typer.Option("--last", help="How many of the latest finished runs, without names.")]


@app.command()
def compare(names: NamesArg = None, last: LastOpt = 3,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
            project: ProjectOpt = Path(".")) -> None:
    """Runs side by side: the params that differ between them (only those) and their headline numbers."""
    from rich import box
    from rich.table import Table

    from selfimprove.compare import table

    with guarded():
        t = table(project, names, last)
    if as_json:
        print(json.dumps(t, indent=2, default=str))
        return

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, (list, dict)):  # as params.yaml writes it: {prev: r1, difficulties: [4]}
            import yaml

            return yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=10**6).strip()
        return str(v)

    grid = Table(box=box.SIMPLE_HEAD, title=f"{len(t['runs'])} runs: params that differ, then results")
    grid.add_column("param / metric", overflow="fold")
    for n in t["runs"]:
        grid.add_column(n, overflow="fold")
    for k, vals in t["params"].items():
        grid.add_row(k, *map(cell, vals))
    if not t["params"]:
        grid.add_row("(no param differs)", *["" for _ in t["runs"]])
    grid.add_section()
    for k, vals in t["metrics"].items():
        grid.add_row(k, *map(cell, vals))
    out.print(grid)
    out.print(f"plots of these runs overlaid: selfimprove plots {' '.join(t['runs'])}", highlight=False)


@app.command()
def plots(names: NamesArg = None, last: LastOpt = 3, project: ProjectOpt = Path(".")) -> None:
    """Overlay runs' plots across rounds (dvc plots diff) in dvc_plots/index.html; works offline."""
    from selfimprove.compare import plots as render_plots

    with guarded():
        page = render_plots(project, names, last)
    out.print(f"plots of the runs overlaid (colour: metric; dash and point shape: run): {page}", highlight=False)


@app.command()
def check(overrides: OverrideOpt = None, project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:
    """Validate params.yaml (and overrides) and the inputs the loop needs; exit 1 naming every problem."""
    from selfimprove.preflight import preflight

    config = _load(project, params, overrides)
    with guarded():
        problems = preflight(config, project)
    if problems:
        _fail("preflight failed:\n  " + "\n  ".join(problems))
    if config.loop.policy == "curriculum":
        from selfimprove.curriculum import max_rounds

        out.print(f"[green]ok[/]: {project / params} is valid; loop.policy curriculum: the loop decides up to "
                  f"{max_rounds(config)} round(s), each written into the run's params.yaml before it runs")
    else:
        out.print(f"[green]ok[/]: {project / params} is valid; {len(config.rounds)} round(s): {', '.join(config.rounds)}")


@app.command("rounds")
def set_rounds_cmd(n: int, project: ProjectOpt = Path("."), params: ParamsOpt = "params.yaml") -> None:
    """Set the number of rounds in params.yaml (new rounds extend the curriculum by one difficulty each)."""
    from selfimprove.params import set_rounds

    if n < 1:
        _fail("rounds must be >= 1")
    if _load(project, params).loop.policy == "curriculum":
        _fail(f"loop.policy is curriculum: the loop decides its rounds; bound them with loop.max_rounds instead "
              f"(selfimprove run -S loop.max_rounds={n})")
    with guarded():
        config = set_rounds(project / params, n)
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
