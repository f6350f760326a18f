#!/usr/bin/env bash
# make mlflow-ui: MLflow's server on the project's store, opening on its experiments and training runs.
#   scripts/mlflow_ui.sh [PORT]     (default 5000; BIN = the environment's bin folder)
# `--app-name selfimprove` is MLflow's server with one change (src/selfimprove/mlflow_app.py): a browser that has not
# picked a workflow lands on the machine-learning view (runs, charts, model registry) instead of GenAI's.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-${MLFLOW_PORT:-5000}}"
BIN="${BIN:-.venv/bin}"
echo "MLflow UI: http://127.0.0.1:${PORT} (experiments, training runs, model registry; Ctrl-C stops it)"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false   # starts in ~8 s and ~0.5 GB instead of ~27 s and ~3 GB
exec "${BIN}/mlflow" server --app-name selfimprove --host 127.0.0.1 --port "${PORT}" --workers 1 \
  --backend-store-uri "sqlite:///${PWD}/mlruns.db" --default-artifact-root "${PWD}/mlartifacts"
