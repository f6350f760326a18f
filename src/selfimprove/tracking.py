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

log = logging.getLogger(__name__)

TAG = "selfimprove."
RUN_ID_ENV = "SELFIMPROVE_MLFLOW_RUN_ID"
PARENT_ID_ENV = "SELFIMPROVE_MLFLOW_PARENT_RUN_ID"


class TrackingError(RuntimeError):
    pass


from selfimprove.tracker import NullTracker, Tracker, flatten  # noqa: E402 (the protocol)


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


class MlflowStore:
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

    def _versions(self) -> list[Any]:
        name = self.config.tracking.registered_model
        try:
            with self.guard():
                return list(self.client.search_model_versions(f"name = '{name}'", max_results=1000))
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - no such registered model yet
            return []

    def register(self, run_id: str, model_dir: Path, model_md5: str | None, description: str,
                 tags: Mapping[str, str]) -> str | None:
        """Register the round's model once per distinct model; a retried or restored round gets its version."""
        if not self.config.tracking.log_model:
            return None
        from selfimprove.checkpoint import members

        name = self.config.tracking.registered_model
        for mv in self._versions():
            if (model_md5 and mv.tags.get(TAG + "model_md5") == model_md5) or mv.tags.get(TAG + "run_id") == run_id:
                if mv.tags.get(TAG + "run_id") != run_id and description not in (mv.description or ""):
                    # the same bytes, evaluated by another run (another eval seed or problem set): its numbers join
                    # the version's description instead of leaving the first evaluation's as the only ones
                    with self.guard():
                        self.client.update_model_version(
                            name, mv.version, description=f"{mv.description or ''}\nEvaluated again: {description}")
                return mv.version
        group = members(model_dir)
        if not (group[0] / "config.json").exists():
            log.info("model %s is a pointer to an external model (model_ref.json); not registering it", model_dir)
            return None
        import mlflow

        size_mb = sum(f.stat().st_size for m in group for f in m.rglob("*") if f.is_file()) / 2**20
        by_reference = size_mb > self.config.tracking.model_copy_max_mb
        with self.guard():
            if by_reference:  # the bytes stay in DVC's cache (content-addressed, shared by every run): stored once
                ref = {"dvc_path": Path(model_dir).as_posix(), "dvc_md5": model_md5, "size_mb": round(size_mb, 1),
                       "experiment": tags.get(TAG + "experiment"),
                       "fetch": f"dvc exp apply {tags.get(TAG + 'experiment')} (then {Path(model_dir).as_posix()}), "
                                f"or dvc get . {Path(model_dir).as_posix()} --rev <the experiment's commit>"}
                self.client.log_dict(run_id, ref, "model_ref/dvc.json")
                info = type("Ref", (), {"model_uri": f"runs:/{run_id}/model_ref", "model_id": None})()
                description = (f"{description} Weights ({size_mb:.0f} MB) are stored once, in DVC: "
                               f"{Path(model_dir).as_posix()} of experiment {tags.get(TAG + 'experiment')} "
                               f"(md5 {model_md5}); model_ref/dvc.json says how to fetch them.")
            else:
                with mlflow.start_run(run_id=run_id, nested=True):
                    info = _log_transformers(group[0])
                for other in group[1:]:  # the other ensemble members travel with the run
                    self.client.log_artifacts(run_id, str(other), f"ensemble/{other.name}")
            try:
                self.client.get_registered_model(name)
            except Exception:  # noqa: BLE001
                with contextlib.suppress(Exception):  # created concurrently
                    self.client.create_registered_model(
                        name, description="Models of selfimprove loops: one version per distinct round model.")
            mv = self.client.create_model_version(
                name, source=info.model_uri, run_id=run_id, description=description,
                tags={TAG + "run_id": run_id, TAG + "model_md5": model_md5 or "", **tags},
                model_id=getattr(info, "model_id", None),
            )
        return mv.version

    def alias_version(self, alias: str) -> Any | None:
        try:
            with self.guard():
                return self.client.get_model_version_by_alias(self.config.tracking.registered_model, alias)
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - no such alias yet
            return None

    def set_alias(self, version: str, alias: str = "best") -> None:
        with self.guard():
            self.client.set_registered_model_alias(self.config.tracking.registered_model, alias, version)

    def version_metric(self, mv: Any, key: str) -> float | None:
        with self.guard():
            return self.client.get_run(mv.run_id).data.metrics.get(key)


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


def _log_transformers(model_dir: Path) -> Any:
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class with the Auto* factories

    # Local models have no hub model card or license to look up; those warnings are noise here.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    # Components rather than a folder path: MLflow 3.17's path-based flavor config breaks on transformers 5.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Explicit requirements: the default probe imports torchvision (a CUDA build on PyPI).
    reqs = [f"torch=={_version('torch').split('+')[0]}", f"transformers=={_version('transformers')}", "tokenizers", "safetensors"]
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation", pip_requirements=reqs
    )


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


# MLflow 3's UI opens every experiment on its GenAI (traces) view unless the link asks for the training view; the
# experiment tag mlflow.experimentKind is only read by older layouts.
TRAINING_VIEW = "workflowType=machine_learning"


def ui_url(server: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens on training runs (not the GenAI view); a run's link opens its
    metric charts, one point per round (metrics are logged with ``step=round``).

    >>> ui_url("http://127.0.0.1:5000/", "1", "abc")
    'http://127.0.0.1:5000/#/experiments/1/runs/abc/model-metrics?workflowType=machine_learning'
    """
    base = server.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{TRAINING_VIEW}"
    run = f"/runs/{run_id}/model-metrics" if run_id else ""
    return f"{base}/#/experiments/{experiment_id}{run}?{TRAINING_VIEW}"


def experiment_id(config: Config, project: str | Path = ".") -> str | None:
    """The id of ``tracking.experiment`` in the project's store, or None (no store or experiment yet)."""
    from mlflow import MlflowClient

    uri, _ = resolve_uri(config, project)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    with contextlib.suppress(Exception):
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(config.tracking.experiment)
        return exp.experiment_id if exp is not None else None
    return None


def stage_tracker(config: Config, project: str | Path, round_key: str) -> Tracker:
    """The tracker of a stage command (``dvc repro``): the run handed through the environment, else none."""
    from selfimprove.config import round_index

    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id or not config.tracking.enabled:
        return NullTracker()
    store = MlflowStore(config, os.environ.get("SELFIMPROVE_HOME", project))
    return store.tracker(run_id, os.environ.get(PARENT_ID_ENV), round_index(round_key))


# ------------------------------------------------------------------------------------------- reading back


def _round_rows(client: Any, experiment_id: str, parent: Any) -> list[dict[str, Any]]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{TAG}kind` = 'round'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    by_round: dict[int, Any] = {}
    for run in runs:
        if run.data.tags.get(TAG + "superseded") == "true":
            continue
        by_round[int(run.data.tags[TAG + "round"])] = run
    return [
        {
            "round": r,
            "run_id": by_round[r].info.run_id,
            "status": by_round[r].info.status,
            "model_version": by_round[r].data.tags.get(TAG + "model_version"),
            "stages": json.loads(by_round[r].data.tags.get(TAG + "stages", "{}")),
            "metrics": dict(sorted(by_round[r].data.metrics.items())),
        }
        for r in sorted(by_round)
    ]


def read_rounds(config: Config, project: str | Path = ".", experiment: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(experiment name, per-round rows) of a loop run read back from MLflow: the named experiment's loop run, or
    else the most recent loop run of ``loop.name``."""
    envdefaults.apply()
    from mlflow import MlflowClient

    uri, _ = resolve_uri(config, project)
    check_server(uri, config.tracking.connect_timeout_s)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingError(f"no MLflow store at {db}; run the loop first (make demo or selfimprove run)")
    with _guard(uri):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(config.tracking.experiment)
        if exp is None:
            raise TrackingError(f"no MLflow experiment {config.tracking.experiment!r} at {uri}; run the loop first (make demo)")
        filt = f"tags.`{TAG}kind` = 'loop' and " + (
            f"tags.`{TAG}experiment` = '{experiment}'" if experiment else f"tags.`{TAG}loop` = '{config.loop.name}'")
        parents = client.search_runs([exp.experiment_id], filter_string=filt,
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            what = f"experiment {experiment!r}" if experiment else f"loop {config.loop.name!r}"
            raise TrackingError(f"no loop run for {what} at {uri}; run the loop first (selfimprove run)")
        parent = parents[0]
        return parent.data.tags.get(TAG + "experiment", parent.info.run_name), _round_rows(client, exp.experiment_id, parent)
