"""A real browser for the tests: Debian's chromium, driven by Playwright for Python.

Never Playwright's own browser download (``playwright install`` cannot run here): the system's
chromium at CHROMIUM. Outside CI a machine without it, or without playwright, skips the browser
tests with a message saying which; under CI (``CI`` set) that fails them, so that a green CI
always ran them (.ci/run installs chromium when it is missing).

Playwright's sync API belongs to the thread that started it, and a trio test must not block its
own thread (the receivers and the relay's clients run there), so the browser lives in a thread
of its own: ``await browser.run(fn, *args)`` runs ``fn`` there and waits without blocking trio.
One browser for the whole session; a test opens its own pages (a context each: its own cookies).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 15_000  # ms Playwright's waits give a page to show what a test expects


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing() -> str | None:
    """What this machine lacks to run the browser tests, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (./scripts/setup test installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        other = shutil.which("chromium")
        elsewhere = f"; {other} is not it" if other else ""
        return f"no chromium at {CHROMIUM} (apt-get install chromium){elsewhere}"
    return None


class Browser:
    def __init__(self):
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="browser")
        self._thread.submit(self._start).result()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.chromium = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True
        )

    async def run(self, fn, *args):
        future = self._thread.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result)

    async def page(self, width: int = 1280, height: int = 900):
        def open_page():
            context = self.chromium.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(WAIT)
            return context.new_page()

        return await self.run(open_page)

    def close(self) -> None:
        def stop():
            self.chromium.close()
            self._playwright.stop()

        self._thread.submit(stop).result()
        self._thread.shutdown()


def browser_or_skip() -> Browser:
    problem = missing()
    if problem is not None:
        if in_ci():
            pytest.fail(f"the browser tests must run in CI, and cannot: {problem}")
        pytest.skip(f"browser tests skipped: {problem}")
    return Browser()
