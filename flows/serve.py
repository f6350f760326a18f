"""Serve the loop as a Prefect deployment so users start it from the Prefect UI with parameters.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py [--cron "0 3 * * *"] [--name NAME]

(``make ui`` starts a local server and runs this.) In the UI: Deployments -> selfimprove -> Run -> Custom
run, and set ``rounds`` and ``overrides`` (a list of ``key=value``, e.g. ``sample.temperature=0.7``). Runs
execute in this process, in the project folder. For a work pool and remote workers use ``infra/prefect.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.loop import loop_flow  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="selfimprove")
    ap.add_argument("--cron", default=None, help="optional schedule, e.g. '0 3 * * *' (nightly at 03:00)")
    ap.add_argument("--project", default=str(ROOT))
    a = ap.parse_args()
    loop_flow.serve(
        name=a.name,
        cron=a.cron,
        parameters={"project": a.project, "params": "params.yaml", "rounds": None, "overrides": []},
        description="Self-improvement loop: bootstrap, then sample -> verify -> validate -> finetune -> evaluate "
        "per round. Parameters: rounds (int, resizes params.yaml), overrides (list of key=value).",
        tags=["selfimprove"],
        limit=1,  # one loop at a time per workspace; the flow also holds a workspace lock
    )


if __name__ == "__main__":
    main()
