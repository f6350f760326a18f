#!/usr/bin/env bash
# make ui / make ui-stop: a local Prefect server and the served loop deployment, started once, stopped together.
#   scripts/ui.sh start [--cron "0 3 * * *"]...   idempotent: a running server and deployment are reused
#   scripts/ui.sh stop                            stops both (their whole process groups)
# State lives in .prefect/: server.pid, serve.pid (process-group leaders), api_url (read by `selfimprove run`,
# which then sends its runs to this server).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PREFECT_PORT:-4200}"
BIN="${BIN:-.venv/bin}"
DIR=.prefect
URL="http://127.0.0.1:${PORT}/api"
mkdir -p "$DIR"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
healthy() { curl -sf "${URL}/health" >/dev/null 2>&1; }
stop_group() {  # $1 = pid file
  if alive "$1"; then
    local pid; pid="$(cat "$1")"
    kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "${pid}" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-${pid}" 2>/dev/null || true
    echo "stopped $(basename "$1" .pid) (pid ${pid})"
  fi
  rm -f "$1"
}

case "${1:-start}" in
  start)
    shift || true
    if healthy; then
      echo "Prefect server already running on ${URL%/api} (reused)"
    else
      echo "starting Prefect server on ${URL%/api} (log: ${DIR}/server.log)"
      # the UI's pages call the API at PREFECT_UI_API_URL (default: port 4200, whatever port the server is on)
      PREFECT_UI_API_URL="${URL}" setsid "${BIN}/prefect" server start --host 127.0.0.1 --port "${PORT}" \
        > "${DIR}/server.log" 2>&1 < /dev/null &
      echo $! > "${DIR}/server.pid"
      for _ in $(seq 120); do healthy && break; sleep 1; done
      healthy || { echo "Prefect server did not start; see ${DIR}/server.log" >&2; exit 1; }
    fi
    echo "${URL}" > "${DIR}/api_url"
    if alive "${DIR}/serve.pid" && [ "$#" -gt 0 ]; then
      echo "re-serving the deployment to apply: $*"   # schedules are merged, never replaced (flows/serve.py)
      stop_group "${DIR}/serve.pid"
    fi
    if alive "${DIR}/serve.pid"; then
      echo "deployment 'selfimprove-loop/selfimprove' already served (pid $(cat "${DIR}/serve.pid"); reused)"
    else
      echo "serving deployment 'selfimprove-loop/selfimprove' (log: ${DIR}/serve.log)"
      PREFECT_API_URL="${URL}" setsid "${BIN}/python" flows/serve.py "$@" > "${DIR}/serve.log" 2>&1 < /dev/null &
      echo $! > "${DIR}/serve.pid"
    fi
    echo "open ${URL%/api} -> Deployments -> selfimprove -> Run -> Custom run (the run name is the experiment name)"
    ;;
  stop)
    stop_group "${DIR}/serve.pid"
    stop_group "${DIR}/server.pid"
    rm -f "${DIR}/api_url"
    ;;
  *) echo "usage: $0 start [--cron EXPR]... | stop" >&2; exit 2 ;;
esac
