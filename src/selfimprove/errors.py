"""One clean sentence for a failure a user can act on (the traceback only with ``--verbose``).

``explain(exc)`` walks the exception and its causes and returns the message of the first one we know how to
phrase: our own errors already name the file, field or line; for a few library errors (an unreachable Prefect
API, a full disk, a locked or full SQLite store) it says what happened and what to do next.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

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


def mount_point(path: str | Path) -> str:
    """The mount point of the filesystem holding ``path`` (its nearest existing parent).

    >>> mount_point("/")
    '/'
    """
    p = os.path.realpath(str(path))
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def _filesystems(paths: list[str]) -> str:
    """``df -h`` of each distinct filesystem among ``paths`` (a run writes to several: project, temp, Prefect)."""
    seen: dict[str, str] = {}
    for p in paths:
        if p:
            seen.setdefault(mount_point(p), p)
    return "; ".join(f"{p} is on {m} (df -h {m})" for m, p in seen.items())


def explain(exc: BaseException, stores: dict[str, str] | None = None) -> str:
    """One sentence for ``exc`` and what to do. ``stores``: name -> path or URL of the services a run writes to
    (``{"MLflow": ".../mlruns.db", "Prefect": "http://..."}``), so an error that names none of them
    (SQLite's "disk I/O error", a bare ``ConnectError``) still says which one failed."""
    stores = stores or {}
    chain = _chain(exc)
    for e in chain:
        if type(e).__name__ in KNOWN:
            return str(e)
    for e in chain:
        text = str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
            where = getattr(e, "filename", None)
            if where:
                return (f"disk full while writing {where}: free space on its filesystem ({mount_point(where)}: "
                        f"df -h {mount_point(where)}) and run again")
            import tempfile

            cands = [os.getcwd(), tempfile.gettempdir(), os.environ.get("PREFECT_HOME", ""),
                     *[v for v in stores.values() if not v.startswith("http")]]
            return ("disk full (the failing write named no file): free space where this run writes: "
                    f"{_filesystems(cands)}; then run again")
        if isinstance(e, OSError) and e.errno == errno.EFBIG or "File too large" in text:
            where = getattr(e, "filename", None) or "a file"
            return (f"file too large writing {where}: a file-size limit is set (ulimit -f is "
                    f"{_fsize_limit()}) or the filesystem caps file sizes; raise the limit and run again")
        if "database or disk is full" in text or "disk I/O error" in text:
            db = stores.get("MLflow", "")
            what = f"the MLflow store {db}" if db and not db.startswith("http") else "a SQLite database"
            return (f"{what} could not be written ({'database or disk is full' if 'full' in text else 'disk I/O error'}"
                    f": a full disk, a file-size limit (ulimit -f is {_fsize_limit()}) or a failing disk"
                    + (f"; {_filesystems([db])}" if db and not db.startswith("http") else "")
                    + "); fix that and run again")
        if type(e).__name__ in ("ConnectError", "ConnectTimeout", "ReadError", "RemoteProtocolError",
                                "ReadTimeout", "PoolTimeout", "ConnectionError", "MaxRetryError"):
            url = _request_url(e)
            for name, addr in stores.items():
                if addr.startswith("http") and url and url.startswith(addr.rstrip("/").rsplit("/api", 1)[0]):
                    return service_message(name, addr, type(e).__name__)
            if "prefect" in repr(type(e).__module__) + text.lower() or (url and "/api/" in url and "/api/2.0/" not in url):
                return prefect_api_message(os.environ.get("PREFECT_API_URL", url or "?"), type(e).__name__)
            if url and "/api/2.0/mlflow" in url:
                return service_message("MLflow", url.split("/api/2.0")[0], type(e).__name__)
        if isinstance(e, FileNotFoundError | PermissionError | ValueError | KeyError):
            return f"{text}" if text else type(e).__name__
    e = chain[0]
    return f"{type(e).__name__}: {e} (run again with --verbose for the traceback)"


def service_message(name: str, url: str, detail: str) -> str:
    if name == "Prefect":
        return prefect_api_message(url, f"{detail}; it stopped answering during the run")
    return (f"the {name} server at {url} stopped answering ({detail}): start it again (make mlflow-ui for this "
            "project's), then continue the run with selfimprove run --resume NAME")


def _request_url(e: BaseException) -> str | None:
    try:
        return str(e.request.url)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not an httpx error, or one without a request
        return None


def _fsize_limit() -> str:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


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
