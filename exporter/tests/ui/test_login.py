"""Signing in to the web UI in a real browser (Chromium) against a real ``tasktree serve`` with
viewer, operator and ingest tokens: redirect to /login and back, a wrong token, the session
cookie out of the page's scripts' reach, live updates signed in, signing out.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import requests

from .browser import ARTIFACTS
from .support import span

pytestmark = pytest.mark.slow
VIEWER = "viewer-token-9e41d0aa"
INGEST = "ingest-token-52b7c3f1"


def send(server, spans: list[dict]) -> None:
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "login"}}]},
        "scopeSpans": [{"scope": {"name": "login-test"}, "spans": spans}]}]}
    answer = requests.post(server.otlp_http + "/v1/traces", data=json.dumps(body), timeout=30,
                           headers={"Content-Type": "application/json",
                                    "Authorization": f"Bearer {INGEST}"})
    assert answer.status_code == 200, answer.text


def test_signing_in_takes_the_browser_back_to_its_page_and_signing_out_ends_it(
    start_tasktree, private_db, tmp_path, browser_context, page_errors
):
    from playwright.sync_api import expect

    server = start_tasktree(database=private_db, env={
        "TASKTREE_VIEWER_TOKENS": f"victor:{VIEWER}", "TASKTREE_INGEST_TOKENS": f"jobs:{INGEST}",
        "TASKTREE_DATA_DIR": str(tmp_path / "data")})
    trace, root, now = os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns()
    send(server, [span(trace, root, name="nightly", start=now, end=now + 10**6, running=True)])
    server.wait_folded()
    page = browser_context.new_page()

    page.goto(f"{server.web}/runs/{trace}")
    expect(page).to_have_url(f"{server.web}/login?next=/runs/{trace}")
    page.fill("#login-token", "not-the-token-1")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text(
        "That token matches no viewer or operator token.")
    assert "not-the-token-1" not in page.content()

    page.fill("#login-token", VIEWER)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{server.web}/runs/{trace}")
    expect(page.locator("#signed-in-as")).to_have_text("victor (viewer)")
    expect(page.locator('[role=treeitem]', has_text="nightly")).to_have_count(1)
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    # The live stream and the API calls of the page's scripts go with the cookie.
    expect(page.locator("#live-state")).to_have_text("live")
    send(server, [span(trace, root, name="nightly", start=now, end=now + 10**9)])
    expect(page.locator("#run-head [data-field=status]")).to_have_text("ok", timeout=15_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "signed-in.png"))

    page.click("#logout-form button[type=submit]")
    expect(page).to_have_url(f"{server.web}/login?signed_out=1")
    expect(page.locator("#login-notice")).to_have_text("You are signed out.")
    page.goto(server.web + "/")
    expect(page).to_have_url(f"{server.web}/login?next=/")
    # The one console line: Chromium reporting the wrong token's 401 page.
    assert page_errors == [
        "console: Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"
    ]
