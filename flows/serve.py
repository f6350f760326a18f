"""Serve the loop as a Prefect deployment, so users start runs from the Prefect UI with parameters.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py [--cron "0 3 * * *"] [--name NAME]

(``make ui`` starts a local server and runs this; ``make ui CRON="0 3 * * *"`` adds a schedule.) In the UI:
Deployments -> selfimprove -> Run -> Custom run; the run name you type is the run's DVC experiment name, and the
parameters (overrides, rounds, ...) apply to that run only. Runs execute in this process, each in its own run
workspace (``selfimprove.experiments``) from the project's committed state.

Schedules: the ones declared for this deployment in ``infra/prefect.yaml`` (deployment ``selfimprove``) plus any
``--cron`` are applied by slug; schedules a user added in the UI are kept, and a declared schedule the user paused
stays paused. Serving again (``make ui`` twice) changes nothing else. For a work pool and remote workers use
``prefect deploy --all --prefect-file infra/prefect.yaml`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any


from flows.loop import loop_flow  # noqa: E402

FLOW_NAME = "selfimprove-loop"


def declared_schedules(prefect_yaml: Path, deployment: str, crons: list[str], timezone: str = "UTC") -> list[dict[str, Any]]:
    """Schedules declared in ``infra/prefect.yaml`` for ``deployment``, plus ``--cron`` ones, each with a slug."""
    import yaml

    out: list[dict[str, Any]] = []
    if prefect_yaml.exists():
        spec = yaml.safe_load(prefect_yaml.read_text()) or {}
        for d in spec.get("deployments") or []:
            if d.get("name") == deployment:
                for s in d.get("schedules") or []:
                    out.append(dict(s))
    out += [{"cron": c, "timezone": timezone, "active": True} for c in crons]
    for s in out:
        if not s.get("slug"):
            s["slug"] = schedule_slug(s)
    return out


_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def schedule_slug(s: dict[str, Any]) -> str:
    """A name that says what a schedule does (Prefect lists schedules by it), e.g. ``daily-0300-utc``.

    >>> schedule_slug({"cron": "0 3 * * *", "timezone": "UTC"}), schedule_slug({"cron": "30 4 * * 1"})
    ('daily-0300-utc', 'weekly-mon-0430-utc')
    >>> schedule_slug({"interval": 3600}), schedule_slug({"cron": "*/15 * * * *"})
    ('every-3600s', 'cron-15m-x-x-x-x')
    """
    tz = re.sub(r"[^a-z0-9]+", "-", str(s.get("timezone") or "UTC").lower()).strip("-")
    if s.get("cron"):
        f = str(s["cron"]).split()
        if len(f) == 5 and f[0].isdigit() and f[1].isdigit() and f[2] == f[3] == "*":
            at = f"{int(f[1]):02d}{int(f[0]):02d}-{tz}"
            if f[4] == "*":
                slug = f"daily-{at}"
            elif f[4].isdigit() and int(f[4]) < len(_DAYS):
                slug = f"weekly-{_DAYS[int(f[4])]}-{at}"
            else:
                slug = f"days-{f[4]}-{at}"
        else:
            slug = "cron-" + "-".join(x.replace("*/", "") + ("m" if x.startswith("*/") else "") if x != "*" else "x"
                                      for x in f)
    elif s.get("interval"):
        slug = f"every-{int(float(s['interval']))}s"
    else:
        slug = "rrule"
    if s.get("parameters"):
        slug += "-" + hashlib.sha256(json.dumps(s["parameters"], sort_keys=True).encode()).hexdigest()[:6]
    return re.sub(r"[^a-z0-9-]+", "-", slug.lower()).strip("-")[:100]


def _timing(d: dict[str, Any]) -> str:
    interval = d.get("interval")
    return json.dumps([d.get("cron"), float(interval) if interval else None, d.get("rrule"),
                       d.get("timezone") or "UTC", d.get("parameters") or {}], sort_keys=True)


def _timing_of(s: Any) -> str:
    sch = s.schedule
    interval = getattr(sch, "interval", None)
    return _timing({"cron": getattr(sch, "cron", None), "interval": interval.total_seconds() if interval else None,
                    "rrule": getattr(sch, "rrule", None), "timezone": getattr(sch, "timezone", None),
                    "parameters": s.parameters or {}})


async def merged_schedules(name: str, declared: list[dict[str, Any]]) -> list[Any]:
    """Existing schedules (kept; UI-added ones included) + declared ones not there yet, as DeploymentScheduleCreate."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import construct_schedule

    existing: list[Any] = []
    async with get_client() as client:
        try:
            dep = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
            existing = list(dep.schedules or [])
        except Exception:  # noqa: BLE001 - first serve: no deployment yet
            existing = []
    # a schedule served before under another slug (older versions named them declared-<hash>) is the declared one
    # with the same timing and parameters: it takes the declared slug and keeps the user's active/paused state
    by_timing = {_timing(d): d["slug"] for d in declared}
    out = [DeploymentScheduleCreate(schedule=s.schedule, active=s.active, parameters=s.parameters or {},
                                    slug=by_timing.get(_timing_of(s), s.slug) if (s.slug or "").startswith("declared-")
                                    else s.slug)
           for s in existing]
    have = {s.slug for s in out if s.slug}
    for d in declared:
        if d["slug"] in have:
            continue  # keep the user's state of it (a paused schedule stays paused)
        sched = construct_schedule(cron=d.get("cron"), interval=d.get("interval"), rrule=d.get("rrule"),
                                   timezone=d.get("timezone"))
        out.append(DeploymentScheduleCreate(schedule=sched, active=d.get("active", True),
                                            parameters=d.get("parameters") or {}, slug=d["slug"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="selfimprove")
    ap.add_argument("--cron", action="append", default=[], help="a schedule to declare, e.g. '0 3 * * *' (repeatable)")
    ap.add_argument("--timezone", default="UTC")
    ap.add_argument("--project", default=".", help="the project folder (default: the current one)")
    ap.add_argument("--limit", type=int, default=2, help="runs executing at once (each in its own workspace)")
    ap.add_argument("--prefect-file", default="infra/prefect.yaml", help="relative to --project")
    a = ap.parse_args()
    a.project = str(Path(a.project).resolve())
    declared = declared_schedules(Path(a.project) / a.prefect_file, a.name, a.cron, a.timezone)
    schedules = asyncio.run(merged_schedules(a.name, declared))
    from prefect.types.entrypoint import EntrypointType

    deployment = loop_flow.to_deployment(
        name=a.name,
        # by module, so the flow run's process imports ``flows.loop`` (a name Ray workers can import too)
        entrypoint_type=EntrypointType.MODULE_PATH,
        schedules=schedules,
        parameters={"project": a.project, "params": "params.yaml", "rounds": None, "overrides": [],
                    "apply": "never", "from_workspace": False},
        description="Self-improvement loop, one DVC experiment per run (named after the flow run): bootstrap, then "
        "sample -> verify -> validate -> finetune -> evaluate per round. Parameters apply to the run only; the "
        "project's params.yaml is never changed.",
        tags=["selfimprove"],
    )
    from prefect import serve

    serve(deployment, limit=a.limit, pause_on_shutdown=False)


if __name__ == "__main__":
    main()
