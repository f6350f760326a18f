"""The self-improvement loop as Prefect flows.

``selfimprove-loop`` is one run of the loop, and one DVC experiment: it makes the run's own workspace (a git
worktree with the run's params, ``selfimprove.experiments``), opens the run's MLflow loop run, runs round 0 and
every round as a ``selfimprove-round`` subflow, then the ``summary`` stage, saves the workspace as a DVC
experiment, closes the MLflow run with the outcome, and (when the run's params are the workspace's) applies the
experiment to the workspace. ``selfimprove-round`` runs one round's stages as tasks (round 0: bootstrap and
evaluate; round N: propose -> sample -> verify -> correct -> validate -> finetune -> evaluate), then registers the round's model.

Each task *is* a core function (``tasks/``): a stage, or one unit of a stage and its merge (``flows/execution.py``:
the units run side by side on Ray when ``execution`` says so). Before a stage, DVC says whether it is up to date (skipped),
in its run cache (restored, as ``dvc repro`` does), or must run; after it runs, ``dvc commit`` records it. So a
run's workspace ends exactly as ``dvc repro`` would leave it, and the saved experiment reproduces with
``dvc exp apply NAME && dvc repro`` (nothing to do).

Run it with ``selfimprove run`` (or ``python -m flows.loop``); serve it for the Prefect UI with
``python flows/serve.py`` (``make ui``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any, Literal

from selfimprove import envdefaults  # noqa: E402 - before Prefect is imported: its settings read them

envdefaults.apply(extra=envdefaults.PREFECT_FLOW)

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.runtime import flow_run as current_flow_run  # noqa: E402

import tasks  # noqa: E402
from flows.execution import ray_runner, run_units  # noqa: E402
from selfimprove import dvcstate, experiments  # noqa: E402
from selfimprove.dvcstate import stage_id  # noqa: E402
from selfimprove.config import Config, ConfigError
from selfimprove.params import add_round, clear_rounds, keep_rounds, load_config  # noqa: E402
from selfimprove.paths import RoundPaths, summary_dir  # noqa: E402
from selfimprove.prerun import check_preflight, check_resume, check_rounds  # noqa: E402
from selfimprove.quality import DataQualityError  # noqa: E402
from selfimprove.report import artifact_tables, improvement, markdown_summary  # noqa: E402
from selfimprove.stages import SPLITS  # noqa: E402
from selfimprove.stages.common import runtime_env  # noqa: E402
from selfimprove.stages.summary import load_round_metrics  # noqa: E402
from selfimprove.tracker import NullTracker, Tracker  # noqa: E402
from selfimprove.tracking import MlflowStore  # noqa: E402

ApplyPolicy = Literal["auto", "always", "never"]


#: ``extra=`` of a log line meant for the Prefect UI only (the CLI says it once, at the end, in its own words)
UI_ONLY = {"selfimprove_ui_only": True}


class _NoTraceback(logging.Filter):
    """Console only: the CLI prints a failure once, as one sentence and what to do; the Prefect UI keeps the
    tracebacks and Prefect's state messages (which repeat the whole error, once per task and flow it crossed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None or getattr(record, "selfimprove_ui_only", False):
            return False
        msg = str(record.msg)
        if "Traceback (most recent call last)" in msg:
            return False
        if record.name.startswith("prefect") and record.levelno >= logging.ERROR:
            return False  # "Encountered exception during execution ...", "Finished in state Failed(...)"
        return not (record.name.startswith("prefect") and msg.startswith("Finished in state Failed"))


def quiet_console_tracebacks() -> None:
    """Install the console filter on every handler that writes to a terminal: Prefect's console handler, and the
    CLI's rich handler on the root logger (Prefect's run loggers propagate there)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("prefect", "selfimprove", ""):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, (PrefectConsoleHandler, logging.StreamHandler)) or type(h).__name__ == "RichHandler":
                if not any(isinstance(f, _NoTraceback) for f in h.filters):
                    h.addFilter(_NoTraceback())


@contextlib.contextmanager
def core_logs_to_prefect() -> Iterator[None]:
    """The core's log lines (counts, acceptance, GX results, where the outputs are) go to the Prefect UI too.

    ``PREFECT_LOGGING_EXTRA_LOGGERS`` does this when it is set before Prefect is imported (the CLI, serve.py); a
    flow called from a process that imported Prefect first (a notebook, the tests) gets the handler here."""
    from prefect.logging.handlers import APILogHandler

    lg = logging.getLogger("selfimprove")
    added = None
    if not any(isinstance(h, APILogHandler) for h in lg.handlers):
        added = APILogHandler()
        lg.addHandler(added)
    level = lg.level
    if lg.getEffectiveLevel() > logging.INFO:
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        lg.setLevel(level)
        if added is not None:
            lg.removeHandler(added)


def _artifact_key(*parts: str) -> str:
    return "-".join(parts).lower().replace("_", "-").replace(".", "-").replace("/", "-")[:100]


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def round_stages(key: str) -> list[str]:
    return ["bootstrap", "evaluate"] if key == "r0" else list(tasks.ROUND_TASKS)


def run_stage(stage: str, config: Config, paths: RoundPaths, tracker: Tracker, before_run: Any = None) -> str:
    """Run one stage unless DVC can bring it up to date; record it in DVC. Returns fresh | restored | ran."""
    logger = get_run_logger()
    sid = stage_id(stage, paths.key)
    out = _rel(paths.dir if stage != "summary" else summary_dir(config, paths.project), paths.project)
    state = dvcstate.prepare(paths.project, sid)
    if state == "fresh":
        logger.info("%s: up to date (DVC), skipped; outputs in %s", sid, out)
        return "fresh"
    if state == "restored":
        logger.info("%s: restored from DVC's run cache (an earlier run had the same inputs); outputs in %s", sid, out)
        return "restored"
    if before_run is not None:
        before_run()
    t0 = time.perf_counter()
    if stage in SPLITS:  # members and shards as tasks of their own, side by side on Ray (execution.runner)
        report = run_units(stage, config, paths, tracker)
    else:
        report = tasks.STAGE_TASKS[stage](config, paths, tracker)
    dvcstate.commit(paths.project, sid)
    logger.info("%s: done in %.0fs; %s; outputs in %s, recorded in dvc.lock", sid, time.perf_counter() - t0,
                getattr(report, "summary", lambda: "")() or "ok", out)
    return "ran"


def _round_params(config: Config, key: str, paths: RoundPaths) -> dict[str, Any]:
    """The settings that make this round differ from another one (MLflow's compare view shows them)."""
    if key == "r0":
        b = config.bootstrap
        return {"round": 0, "round_key": "r0", "kind": "bootstrap", "difficulties": b.difficulties,
                "examples_per_difficulty": b.examples_per_difficulty, "model_source": config.model.source,
                "ensemble": config.model.ensemble, "steps": b.train.steps, "lr": b.train.lr, "seed": config.seed}
    rc = config.round_config(key)
    s, f = config.sample, config.finetune
    return {"round": paths.round, "round_key": key, "kind": "round", "start_model": f"{rc.prev} (runs/{rc.prev}/model)",
            "difficulties": rc.difficulties, "problems": rc.problems or s.problems_per_round,
            "sampler": s.sampler, "k": s.k, "greedy": s.greedy, "temperature": s.temperature, "views": s.views,
            "verifier": config.verify.verifier,
            "filters": [st.function for st in config.validate_cfg.filters], "accumulate": config.validate_cfg.accumulate,
            "mix_real": config.validate_cfg.mix_real, "trainer": f.trainer, "init": f.init, "steps": f.train.steps,
            "lr": f.train.lr, "lora": f.train.lora.enabled, "seed": config.seed,
            "eval_difficulties": rc.eval_difficulties or config.evaluate.difficulties, "policy": config.loop.policy}


def _health_check(config: Config, round_key: str) -> dict[str, Any] | None:
    """The health gates (``loop.health``) on the rounds that led to round_key (r0 first); None if there are none."""
    if not config.loop.health or round_key == "r0":
        return None
    from selfimprove.health import check_health

    from selfimprove.curriculum import lineage

    rounds = []
    for k in lineage(config, round_key):  # the rounds that built this round's model (a rolled-back one is not)
        path = RoundPaths.for_round(config, k, ".").metrics
        if path.exists():
            rounds.append(json.loads(path.read_text()))
    return check_health(rounds, config.loop.health, name=f"health@{round_key}")


def _health_markdown(experiment: str, round_key: str, health: dict[str, Any]) -> str:
    from selfimprove.health import describe_failure

    cols = list(health["table"][0]) if health["table"] else []
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join("" if row[c] is None else (f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]))
                                for c in cols) + " |" for row in health["table"]]
    failures = "\n".join(f"- {describe_failure(f)}" for f in health["failures"])
    return (f"# {experiment} / {round_key}: a health gate failed\n\n{failures}\n\nThe round's model is not "
            f"promoted and the run stops; it rolls back to the best earlier round.\n\n**Health table** "
            f"(checked by Great Expectations)\n\n" + "\n".join(table) + "\n")


@flow(name="selfimprove-round", flow_run_name="{experiment}/round-{round_key}", log_prints=False)
def round_flow(round_key: str, experiment: str, workdir: str, home: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """One round of a run: its stages as tasks, each recorded in DVC; then the round's model is registered.

    Args:
        round_key: The round (r0 is bootstrap + evaluate; rN is propose -> sample -> verify -> correct -> validate -> finetune -> evaluate).
        experiment: The run (DVC experiment) this round belongs to.
        workdir: The run's workspace (a git worktree of the project).
        home: The project folder (MLflow store, DVC cache).
        parent_run_id: The MLflow loop run this round's run nests under.
    """
    with core_logs_to_prefect():
        return _round(round_key, experiment, workdir, home, parent_run_id)


def _round(round_key: str, experiment: str, workdir: str, home: str, parent_run_id: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    work, home_path = Path(workdir), Path(home)
    os.chdir(work)  # relative paths in params.yaml are relative to the run's workspace
    config = load_config(work / experiments.PARAMS)
    # project-relative paths (cwd is the run's workspace): outputs then hold no absolute path of this workspace,
    # and are byte for byte what `dvc repro` writes in the project itself
    paths = RoundPaths.for_round(config, round_key, ".")
    stages = round_stages(round_key)
    store = MlflowStore(config, home_path) if config.tracking.enabled and parent_run_id else None
    run_id = prev_status = None
    tracker: Tracker = NullTracker()
    if store is not None:
        inputs, _ = dvcstate.inputs_fingerprint(".", [stage_id(s, round_key) for s in stages])
        run_id, prev_status = store.open_round(parent_run_id, round_key, inputs, _round_params(config, round_key, paths),
                                               experiment)
        tracker = store.tracker(run_id, parent_run_id, paths.round)
        if prev_status != "FINISHED":
            store.reopen(run_id)
        why = config.rounds[round_key].why if round_key != "r0" else None
        if why:
            store.set_tags(run_id, {"selfimprove.decision": why[:4900]})
    reopened = prev_status != "FINISHED"

    def reopen() -> None:  # a finished round run only becomes RUNNING again if one of its stages has to run
        nonlocal reopened
        if store is not None and not reopened:
            store.reopen(run_id)
            reopened = True

    states: dict[str, str] = {}
    seconds: dict[str, float] = {}
    try:
        for stage in stages:
            t0 = time.perf_counter()
            states[stage] = run_stage(stage, config, paths, tracker, before_run=reopen)
            if states[stage] == "ran":
                seconds[f"{stage}/seconds"] = time.perf_counter() - t0
        metrics = json.loads(paths.metrics.read_text())
        # this process's CPU time for the round (stages, DVC, MLflow); timings stay out of the DVC metrics file
        seconds |= {"round/cpu_seconds": time.process_time() - cpu0, "round/seconds": time.perf_counter() - wall0}
        tracker.log_metrics({k: v for k, v in seconds.items() if k.startswith("round/")}, step=paths.round)
        health = _health_check(config, round_key)
        veto = None
        if health is not None and not health["success"]:
            from selfimprove.health import describe_failure

            veto = "health gate failed: " + "; ".join(describe_failure(f) for f in health["failures"])
            logger.warning("%s/%s: %s", experiment, round_key, veto)
            create_markdown_artifact(
                key=_artifact_key(experiment, round_key, "health-failed"),
                markdown=_health_markdown(experiment, round_key, health),
                description=f"Health gates (loop.health) failed after {round_key} of {experiment}",
            )
        info: dict[str, Any] = {}
        if store is not None:
            tracker.log_metrics(metrics, step=paths.round, parent=True)  # the DVC metrics file is the truth
            if reopened or "ran" in states.values():
                from selfimprove.registration import model_dir_md5

                info = tasks.register(store, config, paths, run_id, experiment, model_dir_md5(paths), veto)
            store.set_tags(run_id, {"selfimprove.stages": json.dumps(states)})
            if health is not None:
                store.set_tags(run_id, {"selfimprove.health": "passed" if health["success"] else "failed"}
                               | ({"selfimprove.health_failures": json.dumps(health["failures"])[:4900]} if veto else {}))
    except BaseException as e:
        if store is not None and reopened:  # a finished round none of whose stages ran stays FINISHED
            store.close(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", error=e)
        if isinstance(e, DataQualityError):
            create_markdown_artifact(
                key=_artifact_key(experiment, round_key, "validation-failed"),
                markdown=f"# {experiment} / {round_key}: dataset failed validation\n\n```\n{e}\n```\n",
                description=f"Great Expectations report for validate@{round_key} of {experiment}",
            )
        raise
    if store is not None and reopened:
        store.close(run_id, "FINISHED")
    ran = [s for s, st in states.items() if st == "ran"]
    for table in artifact_tables([{"round": paths.round, "metrics": metrics | seconds, "stages": states}]):
        create_table_artifact(
            table=table["rows"],
            key=_artifact_key(experiment, "round", str(paths.round), table["name"]),
            description=f"{experiment}, round {paths.round}: {table['title']}. Stages: "
            + ", ".join(f"{s} {st}" for s, st in states.items()),
        )
    logger.info("round %s: %s; accuracy %.3f", round_key, ", ".join(f"{s} {st}" for s, st in states.items()),
                metrics.get("accuracy", float("nan")))
    return {"round": paths.round, "ran": ran, "states": states, "metrics": metrics, "seconds": seconds,
            "health": health, **info}


def _data_uri(png: Path) -> str | None:
    """A PNG inlined for a Prefect markdown artifact (None if the plot was not written)."""
    if not png.exists():
        return None
    import base64

    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _run_rounds(config: Config, run: experiments.Run, results: dict[str, Any], runner: Any = None
                ) -> tuple[str | None, list[str]]:
    """Round 0, then round after round as the policy layer decides (``selfimprove.curriculum.next_step`` and
    ``after_failed_validation``); this function only carries the decisions out (round flows, params edits, tags).
    Returns why the run stopped early (None: it ran every round) and the decision lines for the summary artifact.
    ``runner``: the task runner of every round flow (Ray, ``flows.execution``; None: Prefect's default)."""
    from selfimprove.curriculum import after_failed_validation, next_step, outcomes
    from selfimprove.health import describe_failure

    rounds_on = round_flow.with_options(task_runner=runner) if runner is not None else round_flow
    exp_name, work, home, store, parent_run_id, record = (run.name, run.work, run.home, run.store, run.mlflow_parent,
                                                          run.record)
    logger = get_run_logger()
    healthy: dict[str, bool] = {}
    decisions: list[str] = []
    params_file = work / experiments.PARAMS

    def offered() -> list[int] | None:
        from selfimprove.stages.common import problem_set

        return problem_set(config).difficulties(config.problems.train_split)

    key: str | None = "r0"
    while key is not None:
        try:
            results[key] = rounds_on(key, experiment=exp_name, workdir=str(work), home=str(home),
                                     parent_run_id=parent_run_id)
        except DataQualityError as e:
            step = after_failed_validation(config, key, _gate_failures(e))
            if step.action == "raise":
                raise
            if step.action == "drop":
                return _drop_round(config, key, e, run, results), decisions
            _keep_ran(params_file, config, results, None)
            dvcstate.forget_round(work, key, config.workspace)
            config = add_round(params_file, key, step.entry)
            decisions.append(f"{key}: {step.entry['why']}")
            logger.warning("run %s: %s failed validation; retrying it with %d problems", exp_name, key,
                           step.entry["problems"])
            continue
        health = results[key].get("health")
        healthy[key] = health is None or bool(health["success"])
        step = next_step(config, outcomes(config, work, healthy), offered)
        tags: dict[str, str] = {}
        reason = step.stop
        if step.rolled_back_to is not None:
            tags["selfimprove.rolled_back_to"] = step.rolled_back_to
            failure = "; ".join(describe_failure(f) for f in health["failures"])
            experiments.mark(home, record, "running", health=health)
            logger.warning("run %s: health gate failed after %s: %s; rolled back to %s", exp_name, key, failure,
                           step.rolled_back_to)
            if reason == "a health gate failed":
                reason = f"health gate failed: {failure}; rolled back to {step.rolled_back_to}"
        if step.action == "next" and step.entry:
            config = add_round(params_file, step.key, step.entry)
            line = f"{step.key}: {step.entry['why']}"
            decisions.append(line)
            logger.info("run %s: next round %s (written into the run's params.yaml)", exp_name, line)
            if store is not None and parent_run_id:
                store.set_tags(parent_run_id, {f"selfimprove.decision.{step.key}": step.entry["why"][:4900]})
        if reason:
            stopped = f"stopped after {key}: {reason}"
            logger.warning("run %s %s; no later round runs or stays in the run's params.yaml", exp_name, stopped)
            ran = [k for k in config.round_keys() if k in results]
            if ran:
                config = keep_rounds(params_file, ran, reason)
            experiments.mark(home, record, "running", stopped=stopped)
            if store is not None and parent_run_id:
                store.set_tags(parent_run_id, {"selfimprove.stop_reason": reason[:4900], "selfimprove.stopped_after": key}
                               | tags)
            return stopped, decisions
        if tags and store is not None and parent_run_id:
            store.set_tags(parent_run_id, tags)
        key = step.key
    return None, decisions


def _keep_ran(params_file: Path, config: Config, results: dict[str, Any], note: str | None) -> None:
    """Only the rounds that finished stay in the run's params (none: the rounds section is emptied)."""
    ran = [k for k in config.round_keys() if k in results]
    if ran:
        keep_rounds(params_file, ran, note)
    else:
        clear_rounds(params_file)


def _gate_failures(error: DataQualityError) -> str:
    failed = "; ".join(line.strip()[2:] for line in str(error).splitlines()[1:] if line.strip().startswith("- "))
    return failed or str(error).splitlines()[0]


def _drop_round(config: Config, key: str, error: DataQualityError, run: experiments.Run,
                results: dict[str, Any]) -> str:
    """A round the curriculum chose made no dataset that passes the gate (too few labels at the frontier): the
    run ends after the round before it. The failed round leaves the run's params, dvc.lock and workspace (its
    Prefect round run and MLflow run stay FAILED with the Great Expectations report), so the saved experiment is
    the rounds that finished, and ``dvc repro`` reproduces them."""
    logger = get_run_logger()
    ran = [k for k in config.round_keys() if k in results]
    last = ran[-1] if ran else "r0"
    reason = (f"{key} ({config.rounds[key].why or 'curriculum round'}) made no dataset that passes validation "
              f"({_gate_failures(error)}); {key} left the run's params")
    _keep_ran(run.work / experiments.PARAMS, config, results, reason)
    dvcstate.forget_round(run.work, key, config.workspace)
    stopped = f"stopped after {last}: {reason}"
    logger.warning("run %s %s", run.name, stopped)
    experiments.mark(run.home, run.record, "running", stopped=stopped)
    if run.store is not None and run.mlflow_parent:
        run.store.set_tags(run.mlflow_parent, {"selfimprove.stop_reason": reason[:4900], "selfimprove.stopped_after": last})
    return stopped


def _summary_artifact(experiment: str, config: Config, work: Path, store: MlflowStore | None, parent_run_id: str | None,
                      results: dict[str, Any], stopped: str | None = None, decisions: list[str] | None = None) -> None:
    # the metrics files hold no timings (DVC outputs must not vary between identical runs): this run's seconds and
    # stage states come from the round flows
    by_round = {int(r["round"]): r for r in results.values()}
    rows = [{"round": int(m["round"]), "metrics": m | by_round.get(int(m["round"]), {}).get("seconds", {}),
             "stages": by_round.get(int(m["round"]), {}).get("states", {})} for m in load_round_metrics(config, work)]
    image = _data_uri(summary_dir(config, work) / "accuracy.png")
    health = _data_uri(summary_dir(config, work) / "health.png")
    from selfimprove.stages.common import problem_set

    lines = improvement(rows, config.bootstrap.difficulties, problem_set(config).difficulty_legend()[1])
    if decisions:
        lines = [*lines, "Rounds decided by the curriculum (loop.policy), each written into the run's params.yaml "
                 "before it ran:", *[f"**{d.split(':', 1)[0]}**:{d.split(':', 1)[1]}" for d in decisions]]
    if stopped:
        lines = [*lines, f"The run {stopped}."]
    mlflow_link = ""
    if store is not None and parent_run_id and store.uri.startswith("http"):
        from selfimprove.tracking_read import ui_url

        mlflow_link = f"\n[MLflow run]({ui_url(store.uri, store.experiment_id, parent_run_id)})\n"
    create_markdown_artifact(
        key=_artifact_key(experiment, "summary"),
        markdown=markdown_summary(experiment, config.loop.name, rows, lines, image, health) + mlflow_link,
        description=f"Run {experiment}: accuracy per difficulty across rounds",
    )


def _crash_killed_flow_runs(flow_run_id: str | None) -> None:
    """The Prefect runs of a killed attempt (its loop flow run, round subflows, task runs) were left Running: the
    process that would have finished them is gone. Resuming marks them Crashed, as Prefect's own heartbeat
    monitoring would, so the UI shows one attempt crashed and one running."""
    if not flow_run_id:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Crashed

    message = "the process running it was killed; the run was resumed by a new flow run"
    try:
        client = get_client(sync_client=True)
        with client:
            root = client.read_flow_run(UUID(flow_run_id))
            runs = [root, *client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[root.id])))]
            for fr in runs:
                if fr.state is not None and not fr.state.is_final():
                    client.set_flow_run_state(fr.id, Crashed(message=message), force=True)
                    for tr in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr.id]})):
                        if tr.state is not None and not tr.state.is_final():
                            client.set_task_run_state(tr.id, Crashed(message=message), force=True)
    except Exception as e:  # noqa: BLE001 - cosmetic in the UI; the resume goes on
        get_run_logger().warning("could not mark the killed attempt's Prefect runs Crashed: %s", e)


def _with_report_in_project(e: BaseException, home: Path, record: Any) -> BaseException:
    """A failed gate's message names its report where the user looks: a copy in the project
    (``.selfimprove/reports/<run>/``), not the run's workspace, whose ``runs/`` is not the project's."""
    if not isinstance(e, DataQualityError) or not e.path:
        return e
    try:
        kept = experiments.keep_report(home, record, e.path)
    except OSError:
        return e
    shown = _rel(kept, home)
    return DataQualityError(str(e).replace(f"Full report: {e.path}", f"Full report: {shown}"), e.report, path=kept)


def _default_name(home: Path) -> str:
    """The experiment name of a run started without one: the flow run's name (the form's run name, or Prefect's
    generated one for a Quick run); a scheduled run is named ``<deployment>-<scheduled start, UTC>``, say
    ``selfimprove-20261205-0300``, and its flow run renamed to match, so a night's run is found by its date."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    fr = ctx.flow_run if ctx is not None else None
    if fr is None or not fr.auto_scheduled:
        return experiments.slug(current_flow_run.name or "run")
    from prefect.runtime import deployment

    when = (fr.expected_start_time or fr.created).astimezone(timezone.utc)
    base = experiments.slug(f"{deployment.name or 'scheduled'}-{when:%Y%m%d-%H%M}")
    name, n = base, 1
    while experiments.name_taken(home, name):  # two schedules of one deployment at the same minute
        n += 1
        name = f"{base}-{n}"
    with contextlib.suppress(Exception):  # the name is cosmetic in Prefect; the experiment is named either way
        from prefect.client.orchestration import get_client

        get_client(sync_client=True).set_flow_run_name(fr.id, name)
    return name


@flow(name="selfimprove-loop", log_prints=False)
def loop_flow(
    overrides: list[str] | None = None,
    rounds: int | None = None,
    params: str = "params.yaml",
    name: str | None = None,
    resume: str | None = None,
    from_workspace: bool = False,
    apply: ApplyPolicy = "never",
    project: str = ".",
) -> dict[str, Any]:
    """One run of the self-improvement loop, saved as a DVC experiment named after the flow run.

    Args:
        overrides: Dotted key=value settings for this run only, e.g. ["finetune.train.lr=0.0005"] (as dvc exp run -S). The project's params.yaml is never changed.
        rounds: Number of rounds for this run (None = the rounds in the params file).
        params: Params file to start from (its content becomes the run's params.yaml).
        name: Experiment name (None = the flow run's name, which the form's run name sets).
        resume: Name of a failed or killed run to continue in its own workspace, with the params it started with.
        from_workspace: Include the workspace's uncommitted changes to tracked files (the CLI does); deployments and schedules run the committed project.
        apply: Bring the finished experiment into the workspace: auto = when its params equal the workspace's, always, or never.
        project: The project folder (a git + DVC repository).
    """
    with core_logs_to_prefect():
        return _loop(overrides, rounds, params, name, resume, from_workspace, apply, project)


def _loop(overrides: list[str] | None, rounds: int | None, params: str, name: str | None, resume: str | None,
          from_workspace: bool, apply: ApplyPolicy, project: str) -> dict[str, Any]:
    logger = get_run_logger()
    home = experiments.git_root(project)
    exp_name = resume or name or _default_name(home)
    if resume:
        check_resume(overrides, rounds)
        record = experiments.resume(home, resume)
        _crash_killed_flow_runs(record.prefect_flow_run_id)
    else:
        # a bad override fails here, before anything is written (with `rounds`, once the rounds are written: an
        # override may set a round that `rounds` adds)
        check_rounds(load_config(home / params, list(overrides or []) if rounds is None else None), rounds)
        record = experiments.create(home, exp_name, overrides=list(overrides or []), rounds=rounds, params_file=params,
                                    from_workspace=from_workspace)
    work = Path(record.workdir)
    try:
        config = load_config(work / experiments.PARAMS)
    except ConfigError:
        if not resume:  # nothing ran: the name is free again
            experiments.discard(home, exp_name)
        raise
    for k, v in runtime_env(config).items():  # before anything imports huggingface_hub, here and on Ray workers
        os.environ.setdefault(k, v)
    try:
        check_preflight(config, work)
    except ConfigError:
        experiments.mark(home, record, "failed", error="preflight failed")
        raise
    store = None
    parent_run_id = None
    experiments.mark(home, record, "running", prefect_flow_run_id=str(current_flow_run.id or ""))
    logger.info("run %s: workspace %s, from %s%s; overrides: %s", exp_name, work, record.baseline[:7],
                " (resumed)" if resume else "", ", ".join(record.overrides) or "none")
    results: dict[str, Any] = {}
    stopped: str | None = None
    try:
        # Ray first: a local Ray's workers import torch/transformers/TRL while MLflow and round 0 are set up
        with ray_runner(config) as runner:
            if config.tracking.enabled:
                store = MlflowStore(config, home)
                store.reconcile()
                parent_run_id = store.open_loop(exp_name, baseline=record.baseline, overrides=record.overrides,
                                                extra_tags={"selfimprove.prefect_flow_run": str(current_flow_run.id or "")})
                experiments.mark(home, record, "running", mlflow_run_id=parent_run_id)
            if config.loop.policy == "curriculum" and not resume and config.round_keys():
                config = clear_rounds(work / experiments.PARAMS)
                logger.info("run %s: loop.policy is curriculum: the rounds in the params file are dropped; the loop "
                            "decides each round and writes it into the run's params.yaml before it runs", exp_name)
            run = experiments.Run(name=exp_name, home=home, work=work, record=record, store=store,
                                  mlflow_parent=parent_run_id)
            stopped, decisions = _run_rounds(config, run, results, runner)
        config = load_config(work / experiments.PARAMS)
        os.chdir(work)
        r0 = RoundPaths.for_round(config, "r0", ".")
        summary_tracker = store.tracker(parent_run_id, None, 0) if store is not None else NullTracker()
        run_stage("summary", config, r0, summary_tracker)
        if store is not None:
            summary_tracker.log_artifact(summary_dir(config, work) / "accuracy.png", "plots")
        _summary_artifact(exp_name, config, work, store, parent_run_id, results, stopped, decisions)
        rev = experiments.save(home, record)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        shown = _with_report_in_project(e, home, record)
        # the run's record says how it ended even when the service that failed was MLflow itself
        experiments.mark(home, record, "killed" if status == "KILLED" else "failed", error=str(shown))
        if store is not None and parent_run_id:
            try:
                store.close(parent_run_id, status, error=shown)
            except Exception as close_error:  # noqa: BLE001 - MLflow is down: the next run's reconcile closes it
                logger.warning("MLflow run %s left RUNNING (%s); the next run marks it FAILED", parent_run_id,
                               type(close_error).__name__)
        logger.error("run %s stopped: %s. Its workspace is kept at %s; continue with: selfimprove run --resume %s",
                     exp_name, shown, work, exp_name, extra=UI_ONLY)
        if shown is e:
            raise
        raise shown from e
    if store is not None and parent_run_id:
        store.set_tags(parent_run_id, {"selfimprove.dvc_experiment_rev": rev})
        store.close(parent_run_id, "FINISHED")
    applied = False
    home_params = home / experiments.PARAMS
    same = home_params.exists() and home_params.read_bytes() == (work / experiments.PARAMS).read_bytes()
    if apply == "always" or (apply == "auto" and same):
        os.chdir(home)
        experiments.apply(home, exp_name)
        applied = True
        logger.info("run %s applied to the workspace %s (dvc exp apply %s)", exp_name, home, exp_name)
    experiments.mark(home, record, "finished", applied=applied)
    experiments.discard(home, exp_name, keep_record=True)
    os.chdir(home)
    return {"experiment": exp_name, "rev": rev, "applied": applied, "mlflow_run_id": parent_run_id, "stopped": stopped,
            "decisions": decisions,
            "rounds": {k: {kk: v for kk, v in r.items() if kk != "metrics"} | {"accuracy": r["metrics"].get("accuracy")}
                       for k, r in results.items()},
            "ran": {k: r["ran"] for k, r in results.items()},
            "rounds_full": {k: {"metrics": r["metrics"], "seconds": r["seconds"], "states": r["states"]}
                            for k, r in results.items()}}


if __name__ not in ("flows.loop", "__main__"):
    # Loaded from its file (a deployment whose entrypoint is ``flows/loop.py:loop_flow``), Prefect names this module
    # after the file, ``loop``, a name no Ray worker can import; a unit's task carries its flow run's context, and with
    # it the flow, so every unit of such a run failed ("No module named 'loop'"). The flows handed out are the
    # importable module's, whatever the entry point.
    from flows.loop import loop_flow, round_flow  # noqa: E402,F811
