"""What a stage may do with tracking: log (the protocol; selfimprove.tracking implements it on MLflow).

Plugins (trainers, samplers) import this module only: it imports nothing of the package, so a plugin never pulls
in the run lifecycle, the config or MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a call; the message says which store and what to do."""


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


# ---------------------------------------------------------------------------------------------- interface


class Tracker:
    """What a stage may do with tracking: log. ``NullTracker`` (this class) does nothing."""

    run_id: str | None = None
    parent_run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None: ...

    def log_dataset(self, path: str | Path, name: str, context: str) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: Any, artifact_file: str) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


NullTracker = Tracker


class RecordingTracker(Tracker):
    """Keeps a unit's tracking calls instead of making them: a unit on a Ray worker has no MLflow run to log to
    (a live run does not travel between processes); the flow replays the calls, in unit order (``replay``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _keep(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._keep("log_params", dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, parent: bool = False) -> None:
        self._keep("log_metrics", dict(metrics), step=step, parent=parent)

    def log_dataset(self, path: str | Path, name: str, context: str) -> None:
        self._keep("log_dataset", str(path), name=name, context=context)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._keep("log_artifact", str(path), artifact_path=artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._keep("log_dict", data, artifact_file=artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self._keep("log_table", list(rows), artifact_file=artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._keep("set_tags", dict(tags))


def replay(calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]], tracker: Tracker) -> None:
    """Make the calls a ``RecordingTracker`` kept, on ``tracker``."""
    for name, args, kwargs in calls:
        getattr(tracker, name)(*args, **kwargs)
