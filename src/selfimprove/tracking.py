"""MLflow tracking: one parent run per loop, one nested run per round, idempotent under retries.

Why this shape: users compare rounds in the MLflow UI, so every round-level metric is logged both to the
round's nested run and to the parent with ``step=round`` (the parent's charts then show curves across
rounds). Stages run in separate processes under ``dvc repro`` and as retried tasks under Prefect, so runs,
metrics and model versions are *found or created* by tags, never blindly created:

- parent run: tags ``selfimprove.kind=loop``, ``selfimprove.loop=<loop.name>``, ``selfimprove.loop_fp`` (a
  fingerprint of what defines the loop's start: seed, problems, model, bootstrap);
- nested run: ``selfimprove.kind=round``, ``selfimprove.round=N`` and ``selfimprove.round_fp`` (fingerprint of
  the whole config). Changing params creates a new nested run and tags the old one superseded;
- a metric already logged at the same step with the same value is not logged again;
- a model version is registered once per round run (looked up by the ``selfimprove.run_id`` tag).

A killed process leaves its run RUNNING; ``reconcile_stale_runs`` marks such runs KILLED when the process
that owned them (tag ``selfimprove.pid`` on this host) is gone. ``NullTracker`` has the same interface and
does nothing, for tests and ``tracking.enabled: false``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from selfimprove.config import Config

log = logging.getLogger(__name__)

TAG = "selfimprove."


class TrackingError(RuntimeError):
    pass


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def loop_fingerprint(config: Config) -> str:
    d = config.model_dump(mode="json", by_alias=True)
    return fingerprint({k: d[k] for k in ("seed", "problems", "model", "bootstrap")} | {"loop": d["loop"]["name"]})


def round_fingerprint(config: Config, key: str) -> str:
    d = config.model_dump(mode="json", by_alias=True)
    d.pop("tracking", None)
    keys = list(config.rounds)
    d["rounds"] = {k: d["rounds"][k] for k in keys[: keys.index(key) + 1]} if key in keys else {}
    return fingerprint({"config": d, "round": key})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


class Tracker:
    """No-op tracker; ``MlflowTracker`` overrides every method."""

    run_id: str | None = None
    parent_run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None: ...

    def log_dataset(self, path: str | Path, name: str, context: str) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: Any, artifact_file: str) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...

    def log_model(self, model_dir: str | Path, metric: float | None = None) -> str | None:
        return None

    def promote(self, version: str | None, alias: str = "best") -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def finish(self, status: str = "FINISHED", parent_status: str | None = None) -> None: ...

    def fail(self, error: BaseException | str) -> None: ...


NullTracker = Tracker


def resolve_uri(config: Config, project: str | Path) -> tuple[str, str]:
    """Tracking URI and artifact location with relative paths made project-relative."""
    project = Path(project).resolve()
    uri = config.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{project / uri.removeprefix('sqlite:///')}"
    art = config.tracking.artifact_location
    if "://" not in art:
        art = (project / art).resolve().as_uri()
    return uri, art


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MlflowTracker(Tracker):
    def __init__(self, config: Config, project: str | Path, round_key: str):
        from selfimprove.config import round_index

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(10, config.tracking.connect_timeout_s * 4))))
        import mlflow
        from mlflow import MlflowClient

        self.config = config
        self.project = Path(project)
        self.round_key = round_key
        self.round = round_index(round_key)
        self.uri, self.artifact_location = resolve_uri(config, project)
        check_server(self.uri, config.tracking.connect_timeout_s)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self._experiment()
        reconcile_stale_runs(self.client, self.experiment_id)
        self.parent_run_id = self._parent()
        self.run_id = self._round_run()
        self._logged: dict[str, dict[tuple[str, int], float]] = {}

    # ------------------------------------------------------------------ runs

    def _experiment(self) -> str:
        name = self.config.tracking.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # noqa: BLE001 - created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _search(self, filt: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=50
        )

    def _owner_tags(self) -> dict[str, str]:
        return {TAG + "pid": str(os.getpid()), TAG + "host": socket.gethostname()}

    def _parent(self) -> str:
        fp = loop_fingerprint(self.config)
        name = self.config.loop.name
        runs = self._search(f"tags.`{TAG}kind` = 'loop' and tags.`{TAG}loop_fp` = '{fp}'")
        if runs:
            run = runs[0]
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            self.client.set_tag(run.info.run_id, TAG + "pid", str(os.getpid()))
            return run.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"loop-{name}",
            tags={TAG + "kind": "loop", TAG + "loop": name, TAG + "loop_fp": fp, **self._owner_tags()},
        )
        self.client.log_batch(run.info.run_id, params=_params(flatten(self._loop_params())))
        return run.info.run_id

    def _loop_params(self) -> dict[str, Any]:
        d = self.config.model_dump(mode="json", by_alias=True)
        return {k: d[k] for k in ("seed", "problems", "model", "bootstrap", "loop")}

    def _round_run(self) -> str:
        fp = round_fingerprint(self.config, self.round_key)
        runs = self._search(
            f"tags.`{TAG}kind` = 'round' and tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
            f"and tags.`{TAG}round` = '{self.round}'"
        )
        for run in runs:
            if run.data.tags.get(TAG + "round_fp") == fp:
                if run.info.status != "RUNNING":
                    self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, TAG + "pid", str(os.getpid()))
                return run.info.run_id
        for run in runs:  # params changed: keep the old run for comparison, but mark it
            self.client.set_tag(run.info.run_id, TAG + "superseded", "true")
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"round-{self.round}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                TAG + "kind": "round",
                TAG + "round": str(self.round),
                TAG + "round_key": self.round_key,
                TAG + "round_fp": fp,
                TAG + "loop": self.config.loop.name,
                **self._owner_tags(),
            },
        )
        params = flatten(self.config.model_dump(mode="json", by_alias=True, exclude={"tracking"}))
        params["round"] = self.round
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    # --------------------------------------------------------------- logging

    def _existing(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        new = {k: v for k, v in flatten(dict(params)).items() if k not in existing}
        if new:
            self.client.log_batch(self.run_id, params=_params(new))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None:
        from mlflow.entities import Metric

        step = self.round if step is None else step
        clean = {k: float(v) for k, v in metrics.items() if v is not None and _finite(v)}
        targets = [self.run_id] + ([self.parent_run_id] if parent else [])
        now = int(time.time() * 1000)
        for run_id in targets:
            history = self._history(run_id, clean)
            todo = [Metric(k, v, now, step) for k, v in clean.items() if history.get((k, step)) != v]
            for i in range(0, len(todo), 500):
                self.client.log_batch(run_id, metrics=todo[i : i + 500])
            for m in todo:
                self._logged.setdefault(run_id, {})[(m.key, step)] = m.value

    def _history(self, run_id: str, keys: Mapping[str, float]) -> dict[tuple[str, int], float]:
        cache = self._logged.setdefault(run_id, {})
        if not cache.get(("__loaded__", -1)):
            latest = self._existing(run_id)
            for k in latest:
                for m in self.client.get_metric_history(run_id, k):
                    cache[(k, m.step)] = m.value
            cache[("__loaded__", -1)] = 1.0
        return cache

    def log_dataset(self, path: str | Path, name: str, context: str) -> None:
        """Log a dataset as a run input, identified by its DVC content hash (md5) and path."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import InputTag

        from selfimprove.io import md5_file

        path = Path(path)
        digest = md5_file(path)
        try:
            rel = path.resolve().relative_to(self.project.resolve()).as_posix()
        except ValueError:
            rel = str(path)
        existing = self.client.get_run(self.run_id).inputs.dataset_inputs
        if any(d.dataset.name == name and d.dataset.digest == digest for d in existing):
            return
        ds = MetaDataset(source=LocalArtifactDatasetSource(rel), name=name, digest=digest)
        entity = ds._to_mlflow_entity()
        from mlflow.entities import DatasetInput

        self.client.log_inputs(
            self.run_id,
            datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context), InputTag("dvc.md5", digest)])],
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    # ----------------------------------------------------------------- models

    def _model_versions(self) -> list[Any]:
        name = self.config.tracking.registered_model
        try:
            return list(self.client.search_model_versions(f"name = '{name}'", max_results=1000))
        except Exception:  # noqa: BLE001 - no such registered model yet
            return []

    def log_model(self, model_dir: str | Path, metric: float | None = None) -> str | None:
        """Register the round's model once; a retried call returns the existing version."""
        if not self.config.tracking.log_model:
            return None
        name = self.config.tracking.registered_model
        for mv in self._model_versions():
            if mv.tags.get(TAG + "run_id") == self.run_id:
                return mv.version
        import mlflow

        from selfimprove.ensemble import members

        group = members(model_dir)
        model_dir = group[0]
        if not (model_dir / "config.json").exists():
            log.warning("model folder %s has no config.json (a pointer to an external model?); not registering", model_dir)
            return None
        with mlflow.start_run(run_id=self.run_id, nested=True):
            info = _log_transformers(model_dir)
        for other in group[1:]:  # the other ensemble members travel with the run
            self.client.log_artifacts(self.run_id, str(other), f"ensemble/{other.name}")
        try:
            self.client.get_registered_model(name)
        except Exception:  # noqa: BLE001
            try:
                self.client.create_registered_model(name, tags={TAG + "loop": self.config.loop.name})
            except Exception:  # noqa: BLE001 - created concurrently
                pass
        mv = self.client.create_model_version(
            name,
            source=info.model_uri,
            run_id=self.run_id,
            tags={TAG + "run_id": self.run_id, TAG + "round": str(self.round), TAG + "loop": self.config.loop.name},
            model_id=getattr(info, "model_id", None),
        )
        self.client.set_tag(self.run_id, TAG + "model_version", mv.version)
        return mv.version

    def promote(self, version: str | None, alias: str = "best") -> None:
        if version is None:
            return
        self.client.set_registered_model_alias(self.config.tracking.registered_model, alias, version)

    def alias_version(self, alias: str) -> str | None:
        try:
            return self.client.get_model_version_by_alias(self.config.tracking.registered_model, alias).version
        except Exception:  # noqa: BLE001
            return None

    # ----------------------------------------------------------------- status

    def finish(self, status: str = "FINISHED", parent_status: str | None = None) -> None:
        self.client.set_terminated(self.run_id, status=status)
        if parent_status:
            self.client.set_terminated(self.parent_run_id, status=parent_status)

    def fail(self, error: BaseException | str) -> None:
        msg = str(error)[:4000]
        try:
            self.client.set_tag(self.run_id, TAG + "error", msg)
            self.client.set_terminated(self.run_id, status="FAILED")
        except Exception:  # noqa: BLE001 - never mask the original error
            log.exception("could not mark MLflow run %s FAILED", self.run_id)


def _finite(v: Any) -> bool:
    try:
        import math

        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _params(d: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k[:250], str(v)[:6000]) for k, v in d.items()]


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


def reconcile_stale_runs(client: Any, experiment_id: str) -> int:
    """Mark RUNNING runs KILLED when their owning process on this host no longer exists."""
    host = socket.gethostname()
    n = 0
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        if tags.get(TAG + "host") != host or not tags.get(TAG + "pid", "").isdigit():
            continue
        pid = int(tags[TAG + "pid"])
        if pid != os.getpid() and not _pid_alive(pid):
            client.set_tag(run.info.run_id, TAG + "reconciled", f"process {pid} gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            n += 1
    if n:
        log.warning("marked %d MLflow run(s) KILLED whose process had died", n)
    return n


def make_tracker(config: Config, project: str | Path, round_key: str) -> Tracker:
    if not config.tracking.enabled:
        return NullTracker()
    return MlflowTracker(config, project, round_key)


# ------------------------------------------------------------------------------------------- reading back


def read_rounds(config: Config, project: str | Path = ".") -> list[dict[str, Any]]:
    """Per-round rows (metrics of the current nested run of each round) read back from MLflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri, _ = resolve_uri(config, project)
    check_server(uri, config.tracking.connect_timeout_s)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(config.tracking.experiment)
    if exp is None:
        raise TrackingError(f"no MLflow experiment {config.tracking.experiment!r} at {uri}; run the loop first (make demo)")
    fp = loop_fingerprint(config)
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG}kind` = 'loop' and tags.`{TAG}loop_fp` = '{fp}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise TrackingError(f"no loop run for loop {config.loop.name!r} with the current params at {uri}; run the loop first")
    parent = parents[0]
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{TAG}kind` = 'round'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    by_round: dict[int, Any] = {}
    for run in runs:
        if run.data.tags.get(TAG + "superseded") == "true":
            continue
        by_round[int(run.data.tags[TAG + "round"])] = run
    out = []
    for r in sorted(by_round):
        run = by_round[r]
        out.append(
            {
                "round": r,
                "run_id": run.info.run_id,
                "status": run.info.status,
                "model_version": run.data.tags.get(TAG + "model_version"),
                "metrics": dict(sorted(run.data.metrics.items())),
            }
        )
    return out
