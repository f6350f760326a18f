"""The one place for the environment defaults a selfimprove process sets: no telemetry from any library, offline
model loading unless the model comes from a hub, and short client retries so a dead server is reported in seconds.

Set with ``os.environ.setdefault``: a value the user exported wins. ``apply()`` is called by every entry point
(the CLI, the flow module, the MLflow store, each stage process); Ray workers get the same values forwarded
(``flows/execution.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

NO_TELEMETRY: dict[str, str] = {
    "DO_NOT_TRACK": "1",                      # Prefect's client, vLLM and others honour it
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}

SERVICES: dict[str, str] = {
    "TOKENIZERS_PARALLELISM": "false",
    # a first start migrates a new database: on a busy 2-core machine that can take longer than the default 20 s
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # a server that died mid-run is reported in seconds, not after minutes of retries with backoff (Prefect: 5
    # retries, ~2.5 min measured; MLflow: 7 retries, backoff factor 2, ~4 min)
    "PREFECT_CLIENT_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

# the Prefect layer's process only (flows/loop.py): the core's log lines (counts, acceptance, GX results, where
# outputs are) go to the Prefect UI too; a stage that logs outside a flow run (dvc repro, a test) logs locally
# without a warning per line
PREFECT_FLOW: dict[str, str] = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "selfimprove",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def defaults(model_source: str | None = None) -> dict[str, str]:
    """Every default; with the model's source known, offline unless it is a hub id (they must be in place before
    transformers is imported: huggingface_hub reads HF_HUB_OFFLINE once, and a tokenizer saved by a process that
    read it differently records another ``local_files_only``)."""
    out = NO_TELEMETRY | SERVICES
    if model_source is not None and model_source != "hub":
        out["HF_HUB_OFFLINE"] = "1"
    return out


def apply(model_source: str | None = None, env: MutableMapping[str, str] | None = None,
          extra: Mapping[str, str] | None = None) -> None:
    """``setdefault`` every default (and ``extra``) in ``env`` (this process's environment by default)."""
    target = os.environ if env is None else env
    for k, v in (defaults(model_source) | dict(extra or {})).items():
        target.setdefault(k, v)
