"""One clean sentence for a failure a user can act on (the traceback only with ``--verbose``).

``explain(exc)`` walks the exception and its causes and returns the message of the first one we know how to
phrase: our own errors already name the file, field or line; for a few library errors (an unreachable Prefect
API, a full disk, a locked or full SQLite store) it says what happened and what to do next.
"""

from __future__ import annotations

import errno
import os

KNOWN = (
    "ConfigError", "DataError", "DataQualityError", "DiskFullError", "ExperimentError", "TrackingError", "DvcError",
    "PrefectUnreachable",
)


class PrefectUnreachable(RuntimeError):
    pass


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        out.append(e)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return out


def prefect_api_message(url: str, detail: str) -> str:
    return (f"the Prefect API at {url} is unreachable ({detail}): start it (make ui), point PREFECT_API_URL at a "
            "running server, or unset PREFECT_API_URL to run with a temporary local server")


def explain(exc: BaseException) -> str:
    chain = _chain(exc)
    for e in chain:
        if type(e).__name__ in KNOWN:
            return str(e)
    for e in chain:
        text = str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
            where = getattr(e, "filename", None)
            return (f"disk full{' while writing ' + str(where) if where else ''}: free space "
                    f"(df -h {os.path.dirname(str(where)) if where else '.'}) and run again")
        if "database or disk is full" in text:
            return f"a SQLite database is full (the disk is full): free space and run again ({text[:200]})"
        if type(e).__name__ in ("ConnectError", "ConnectTimeout") and "prefect" in repr(type(e).__module__) + text.lower():
            return prefect_api_message(os.environ.get("PREFECT_API_URL", "?"), type(e).__name__)
        if isinstance(e, FileNotFoundError | PermissionError | ValueError | KeyError):
            return f"{text}" if text else type(e).__name__
    e = chain[0]
    return f"{type(e).__name__}: {e} (run again with --verbose for the traceback)"


def check_prefect_api(timeout_s: float = 3.0) -> str | None:
    """The configured Prefect API URL after checking it answers; None when none is configured (ephemeral)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return None
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except Exception as e:  # noqa: BLE001
        raise PrefectUnreachable(prefect_api_message(url, f"{type(e).__name__}: {e}")) from None
    return url
