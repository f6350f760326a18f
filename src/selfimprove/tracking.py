"""MLflow tracking: one owner for every run's state.

Shape (what users compare in the MLflow UI):

- one **loop run** per run of the loop (a DVC experiment): run name = the experiment name, tags
  ``selfimprove.kind=loop``, ``selfimprove.experiment``, ``selfimprove.baseline`` (git commit), the overrides;
  params = the run's whole config;
- one nested **round run** per round of it (``round-0``, ``round-1``, ...), identified by (experiment, round key,
  the round's inputs as DVC records them: ``selfimprove.inputs``); params = the round's own settings
  (difficulties, problem count, start model, trainer ...) so the compare view shows what differed; metrics logged
  with ``step=round`` to the round run and to the loop run, so the loop's charts show curves across rounds.

Who changes what (the rule that keeps states true):

- the **loop flow** opens the loop run (``open_loop``) and closes it with the flow's outcome (``close``);
- each **round flow** opens its round run (``open_round``) and closes it; a round whose stages were all up to
  date and whose run already finished is left exactly as it was;
- **stages** get a ``RunTracker`` that can only log (metrics, params, datasets, artifacts, tags): it never
  changes a run's status. A stage command run by ``dvc repro`` logs nowhere unless handed a run through
  ``SELFIMPROVE_MLFLOW_RUN_ID`` (and ``SELFIMPROVE_MLFLOW_PARENT_RUN_ID``).

A process that dies leaves its runs RUNNING; ``reconcile`` (called whenever a flow opens the store) marks runs
KILLED whose owning process (tags ``selfimprove.pid`` / ``selfimprove.host``) is gone. Models are registered once
per distinct model (the DVC hash of the model folder, tag ``selfimprove.model_md5``): a retried or restored round
reuses its version. ``NullTracker`` has the logging interface and does nothing.

By job: this module is the run lifecycle (open, close, reconcile, what a stage logs); the model registry (versions,
aliases) is ``selfimprove.model_registry``, reading rounds back and the UI's links ``selfimprove.tracking_read``,
the logging protocol ``selfimprove.tracker``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from selfimprove import envdefaults
from selfimprove.config import Config
from selfimprove.model_registry import ModelRegistry

log = logging.getLogger(__name__)

TAG = "selfimprove."
RUN_ID_ENV = "SELFIMPROVE_MLFLOW_RUN_ID"
PARENT_ID_ENV = "SELFIMPROVE_MLFLOW_PARENT_RUN_ID"




from selfimprove.tracker import NullTracker, Tracker, TrackingError, flatten  # noqa: E402,F401 (the protocol)


# ------------------------------------------------------------------------------------------------ helpers


def resolve_uri(config: Config, project: str | Path) -> tuple[str, str]:
    """Tracking URI and artifact location with relative paths made project-relative (the user's project, not a
    run's workspace: every run of a project shares one store)."""
    project = Path(project).resolve()
    uri = config.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{project / uri.removeprefix('sqlite:///')}"
    art = config.tracking.artifact_location
    if "://" not in art:
        art = (project / art).resolve().as_uri()
    return uri, art


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_server(uri: str, timeout_s: float) -> None:
    """Fail in seconds (not MLflow's ~4 minutes of retries) when an HTTP tracking server is unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        r = httpx.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        r.raise_for_status()
    except Exception as e:  # noqa: BLE001
        raise TrackingError(
            f"MLflow tracking server at {uri} is unreachable ({type(e).__name__}: {e}). Start it (make mlflow-ui) "
            "or set tracking.uri to a local store such as sqlite:///mlruns.db, or tracking.enabled=false."
        ) from None


@contextlib.contextmanager
def _guard(uri: str) -> Iterator[None]:
    """Turn a store's low-level failure into one sentence that names the store."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {e}"
        db = sqlite_path(uri)
        if "disk is full" in text or "No space left" in text:
            where = db or uri
            raise TrackingError(f"MLflow store {where}: the disk is full; free space on its disk "
                                f"(df -h {Path(where).parent if db else '.'}) and run again") from e
        if "database is locked" in text:
            raise TrackingError(f"MLflow store {db or uri} is locked by another process; retry, or use an MLflow "
                                "server (make mlflow-ui, tracking.uri=http://127.0.0.1:5000) for concurrent runs") from e
        if "readonly database" in text or "unable to open database" in text:
            raise TrackingError(f"MLflow store {db or uri} cannot be written ({e}); check the file's permissions") from e
        raise


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _params(d: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k[:250], str(v)[:6000]) for k, v in d.items()]


def _owner_tags() -> dict[str, str]:
    return {TAG + "pid": str(os.getpid()), TAG + "host": socket.gethostname()}


# -------------------------------------------------------------------------------------------------- store


class MlflowStore(ModelRegistry):
    """The project's MLflow store: experiment, loop and round runs, the model registry."""

    def __init__(self, config: Config, project: str | Path):
        envdefaults.apply()
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(10, config.tracking.connect_timeout_s * 4))))
        self.config = config
        self.project = Path(project).resolve()
        self.uri, self.artifact_location = resolve_uri(config, project)
        check_server(self.uri, config.tracking.connect_timeout_s)
        db = sqlite_path(self.uri)
        if db is not None and not db.parent.exists():
            raise TrackingError(f"MLflow store {db}: folder {db.parent} does not exist (check tracking.uri)")
        with _guard(self.uri):
            import mlflow
            from mlflow import MlflowClient

            logging.getLogger("alembic").setLevel(logging.WARNING)
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = self._experiment()

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return _guard(self.uri)

    def _experiment(self) -> str:
        name = self.config.tracking.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(name, artifact_location=self.artifact_location)
            except Exception:  # noqa: BLE001 - created concurrently by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
        exp = self.client.get_experiment(exp_id)
        if exp.tags.get("mlflow.experimentKind") != "custom_model_development":
            # MLflow 3 opens experiments without this tag on its GenAI (traces) view; ours holds training runs.
            self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
            self.client.set_experiment_tag(
                exp_id, "mlflow.note.content",
                "selfimprove: one parent run per loop run (named after its DVC experiment), one nested run per round; "
                "metrics with step = round.")
        return exp_id

    def search(self, filt: str, max_results: int = 200, order: str = "attributes.start_time DESC") -> list[Any]:
        with self.guard():
            return list(self.client.search_runs([self.experiment_id], filter_string=filt, order_by=[order],
                                                max_results=max_results))

    # ---------------------------------------------------------------------------------------------- runs

    def reconcile(self) -> int:
        """Close RUNNING runs whose owning process on this host no longer exists: FAILED when the run's record says
        it failed (it could not close its MLflow run: the server had died), KILLED otherwise."""
        from selfimprove import experiments

        host = socket.gethostname()
        n = 0
        for run in self.search("attributes.status = 'RUNNING'"):
            tags = run.data.tags
            if tags.get(TAG + "host") != host or not tags.get(TAG + "pid", "").isdigit():
                continue
            pid = int(tags[TAG + "pid"])
            if pid != os.getpid() and not experiments.pid_alive(pid, host):
                rec = experiments.read_record(self.project, tags.get(TAG + "experiment", "")) \
                    if tags.get(TAG + "experiment") else None
                status = "FAILED" if rec is not None and rec.status == "failed" else "KILLED"
                with self.guard():
                    self.client.set_tag(run.info.run_id, TAG + "reconciled", f"process {pid} gone")
                    if status == "FAILED" and rec is not None and rec.error:
                        self.client.set_tag(run.info.run_id, TAG + "error", rec.error[:4900])
                    self.client.set_terminated(run.info.run_id, status=status)
                n += 1
        if n:
            log.warning("MLflow: closed %d run(s) whose process had ended (FAILED or KILLED, from the run's record)", n)
        return n

    def _reopen(self, run: Any) -> None:
        with self.guard():
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            for k, v in _owner_tags().items():
                self.client.set_tag(run.info.run_id, k, v)
            if TAG + "error" in run.data.tags:
                self.client.delete_tag(run.info.run_id, TAG + "error")

    def find_loop(self, experiment: str) -> Any | None:
        runs = self.search(f"tags.`{TAG}kind` = 'loop' and tags.`{TAG}experiment` = '{experiment}'", max_results=1)
        return runs[0] if runs else None

    def open_loop(self, experiment: str, *, baseline: str, overrides: list[str], extra_tags: Mapping[str, str] | None = None) -> str:
        """Find (resume, retry) or create the loop run of experiment ``experiment``; it is RUNNING afterwards."""
        run = self.find_loop(experiment)
        if run is not None:
            self._reopen(run)
            return run.info.run_id
        tags = {
            TAG + "kind": "loop",
            TAG + "experiment": experiment,
            TAG + "baseline": baseline,
            TAG + "loop": self.config.loop.name,
            TAG + "overrides": json.dumps(overrides),
            "mlflow.note.content": f"Experiment `{experiment}` from git commit `{baseline[:7]}`; overrides: "
            + (", ".join(f"`{o}`" for o in overrides) or "none") + f". Apply it with `dvc exp apply {experiment}`.",
            **_owner_tags(),
            **dict(extra_tags or {}),
        }
        with self.guard():
            run = self.client.create_run(self.experiment_id, run_name=experiment, tags=tags)
            params = flatten(self.config.model_dump(mode="json", by_alias=True, exclude={"tracking"}))
            batch = _params(params)
            for i in range(0, len(batch), 100):
                self.client.log_batch(run.info.run_id, params=batch[i : i + 100])
        return run.info.run_id

    def open_round(self, parent_run_id: str, round_key: str, inputs: str, params: Mapping[str, Any],
                   experiment: str) -> tuple[str, str | None]:
        """Find or create the round run (experiment, round key, inputs). Returns (run id, previous status).

        A FINISHED run is returned as it is (previous status ``FINISHED``): the round flow reopens it only if a
        stage has to run. Older round runs of this round with other inputs are tagged superseded."""
        from selfimprove.config import round_index

        r = round_index(round_key)
        runs = self.search(f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TAG}round_key` = '{round_key}'")
        found = None
        for run in runs:
            if run.data.tags.get(TAG + "inputs") == inputs and found is None:
                found = run
            elif run.data.tags.get(TAG + "superseded") != "true":
                with self.guard():
                    self.client.set_tag(run.info.run_id, TAG + "superseded", "true")
        if found is not None:
            return found.info.run_id, found.info.status
        tags = {
            "mlflow.parentRunId": parent_run_id,
            TAG + "kind": "round",
            TAG + "round": str(r),
            TAG + "round_key": round_key,
            TAG + "inputs": inputs,
            TAG + "experiment": experiment,
            TAG + "loop": self.config.loop.name,
            **_owner_tags(),
        }
        with self.guard():
            run = self.client.create_run(self.experiment_id, run_name=f"round-{r}", tags=tags)
            self.client.log_batch(run.info.run_id, params=_params(flatten(dict(params))))
        return run.info.run_id, None

    def reopen(self, run_id: str) -> None:
        with self.guard():
            self._reopen(self.client.get_run(run_id))

    def close(self, run_id: str, status: str = "FINISHED", error: BaseException | str | None = None) -> None:
        with self.guard():
            if error is not None:
                self.client.set_tag(run_id, TAG + "error", str(error)[:4000])
            self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        with self.guard():
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))

    def tracker(self, run_id: str | None, parent_run_id: str | None, round: int) -> RunTracker:
        return RunTracker(self, run_id, parent_run_id, round)

    # ------------------------------------------------------------------------------------------- models


class RunTracker(Tracker):
    """Logging into one round run (and, with ``parent=True``, its loop run). Never changes a run's status."""

    def __init__(self, store: MlflowStore, run_id: str | None, parent_run_id: str | None, round: int):
        self.store = store
        self.client = store.client
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.round = round
        self._logged: dict[str, dict[tuple[str, int], float]] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        with self.store.guard():
            existing = self.client.get_run(self.run_id).data.params
            new = {k: v for k, v in flatten(dict(params)).items() if k not in existing}
            if new:
                self.client.log_batch(self.run_id, params=_params(new))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None:
        """Log once per (key, step): a retried stage or a re-logged metrics file adds no duplicate points."""
        from mlflow.entities import Metric

        step = self.round if step is None else step
        clean = {k: float(v) for k, v in metrics.items() if v is not None and _finite(v)}
        targets = [self.run_id] + ([self.parent_run_id] if parent and self.parent_run_id else [])
        now = int(time.time() * 1000)
        with self.store.guard():
            for run_id in targets:
                history = self._history(run_id)
                todo = [Metric(k, v, now, step) for k, v in clean.items() if history.get((k, step)) != v]
                for i in range(0, len(todo), 500):
                    self.client.log_batch(run_id, metrics=todo[i : i + 500])
                for m in todo:
                    history[(m.key, step)] = m.value

    def _history(self, run_id: str) -> dict[tuple[str, int], float]:
        if run_id not in self._logged:
            cache: dict[tuple[str, int], float] = {}
            for k in self.client.get_run(run_id).data.metrics:
                for m in self.client.get_metric_history(run_id, k):
                    cache[(k, m.step)] = m.value
            self._logged[run_id] = cache
        return self._logged[run_id]

    def log_dataset(self, path: str | Path, name: str, context: str) -> None:
        """Log a dataset as a run input, identified by its content hash (md5, as DVC hashes files) and path."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        from selfimprove.io import md5_file

        path = Path(path)
        digest = md5_file(path)
        rel = path.as_posix()
        with contextlib.suppress(ValueError):
            rel = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
        with self.store.guard():
            existing = self.client.get_run(self.run_id).inputs.dataset_inputs
            if any(d.dataset.name == name and d.dataset.digest == digest for d in existing):
                return
            entity = MetaDataset(source=LocalArtifactDatasetSource(rel), name=name, digest=digest)._to_mlflow_entity()
            self.client.log_inputs(self.run_id, datasets=[
                DatasetInput(entity, tags=[InputTag("mlflow.data.context", context), InputTag("dvc.md5", digest)])])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        with self.store.guard():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        with self.store.guard():
            self.client.log_dict(self.run_id, data, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        with self.store.guard():
            self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.store.set_tags(self.run_id, tags)


def stage_tracker(config: Config, project: str | Path, round_key: str) -> Tracker:
    """The tracker of a stage command (``dvc repro``): the run handed through the environment, else none."""
    from selfimprove.config import round_index

    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id or not config.tracking.enabled:
        return NullTracker()
    store = MlflowStore(config, os.environ.get("SELFIMPROVE_HOME", project))
    return store.tracker(run_id, os.environ.get(PARENT_ID_ENV), round_index(round_key))
