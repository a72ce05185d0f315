"""Sending spans to a real ``tasktree serve`` as OTLP/JSON, the way the end-to-end tests do, and
finding what the browser shows of them."""

from __future__ import annotations

import json
import os
import time
import urllib.request

from .browser import ARTIFACTS


def span(trace: str, span_id: str, parent: str | None = None, *, name: str,
         start: int | None = None, end: int | None = None, running: bool = False,
         attributes: dict | None = None, error: str | None = None,
         events: list | None = None) -> dict:
    """One OTLP/JSON span.  ``running``: a live snapshot whose end time is its heartbeat."""
    start = start if start is not None else time.time_ns()
    end = end if end is not None else start + 1_000_000
    attrs = dict(attributes or {})
    if running:
        attrs["tasktree.state"] = "running"
    body = {"traceId": trace, "spanId": span_id, "parentSpanId": parent or "", "name": name,
            "kind": 1, "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
            "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()]}
    if error is not None:
        body["status"] = {"code": 2, "message": error}
    if events:
        body["events"] = events
    return body


def _value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def send_spans(otlp_http: str, spans: list[dict], job: str = "ui-tests") -> None:
    """POST ``spans`` in one OTLP/JSON request; asserts 200."""
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": job}}]},
        "scopeSpans": [{"scope": {"name": "ui-tests"}, "spans": spans}]}]}
    request = urllib.request.Request(otlp_http + "/v1/traces", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


# -- in the browser ------------------------------------------------------------------------------


def ids(n: int) -> list[str]:
    return [os.urandom(8).hex() for _ in range(n)]


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def item(page, span_id: str):
    return page.locator(f'[role=treeitem][data-span-id="{span_id}"]')


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))  # the viewport: what a user sees first
