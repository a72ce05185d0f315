"""A real browser for the UI tests: Debian's Chromium, driven by the PyPI ``playwright`` package.

Playwright's own browser download does not work here (and is not needed): the fixture uses
``/usr/bin/chromium``, installing Debian's package with apt when it is missing.  Under ``CI=true``
a browser that cannot be had fails the tests; elsewhere they are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TASKTREE_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the networking switches Chromium keeps calling Google's hosts, which this machine refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
"""Screenshots land here (git-ignored; CI keeps the folder as the run's artifacts)."""


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (required under CI=true)")
    pytest.skip(message)


def ensure_chromium() -> str:
    """The Chromium binary, installed from Debian's packages when missing (root only)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                       timeout=1200)
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module.

    Not per session: Playwright's sync API keeps an event loop running on the main thread while
    it is started, and every later ``asyncio.run()`` in the suite would then fail.
    """
    executable = ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -r requirements-test.txt")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Script errors, console errors and dialogs seen by the test's page (should stay empty)."""
    return []


@pytest.fixture
def browser_context(browser, page_errors):
    """A fresh context in a zone far from UTC (so local and UTC times differ), 1400x900."""
    context = browser.new_context(timezone_id="Asia/Kolkata", locale="en-GB",
                                  viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)

    def watch(page) -> None:
        page.on("pageerror", lambda exc: page_errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: msg.type == "error"
                and page_errors.append(f"console: {msg.text}"))
        page.on("dialog", lambda dialog: (page_errors.append(f"dialog: {dialog.message}"),
                                          dialog.dismiss()))

    context.on("page", watch)
    yield context
    context.close()
