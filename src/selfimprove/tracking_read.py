"""Reading a run back from MLflow (the per-round table ``selfimprove report`` prints) and the MLflow UI's links."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from selfimprove import envdefaults
from selfimprove.config import Config
from selfimprove.tracking import TAG, TrackingError, _guard, check_server, resolve_uri, sqlite_path

log = logging.getLogger("selfimprove.tracking")

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
