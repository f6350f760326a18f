"""Browser tests: Debian's chromium driven by Playwright (``executable_path``; never ``playwright install``).

Marked ``browser``: ``make test`` leaves them out, ``.ci/run`` runs them (``make test-browser``) with
``SELFIMPROVE_REQUIRE_BROWSER=1``, under which a missing chromium or playwright fails instead of skipping."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("SELFIMPROVE_CHROMIUM", "/usr/bin/chromium")
# flags for a closed network: no background connections, no component updates, no first-run page
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("SELFIMPROVE_SHOTS", "")) if os.environ.get("SELFIMPROVE_SHOTS") else None


def _missing() -> str | None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (uv pip install playwright; never 'playwright install')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    why = _missing()
    if why:
        if os.environ.get("SELFIMPROVE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A screenshot of the page, in the test's folder (and in $SELFIMPROVE_SHOTS when set, for the docs)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
    return path
