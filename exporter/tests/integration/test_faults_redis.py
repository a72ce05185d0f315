"""Issue 7 "Faults": Redis goes away under a running ``tasktree serve --redis-url``, and returns.

Extends exporter/tests/ui/test_live.py (which covers the bus alone through an outage, and a server
started with Redis already dead): here a full server loses its Redis while pages hold live streams.
Ingest keeps storing, pages, the JSON API and /metrics never answer 500, a page's own server's
changes still go live, and once Redis is back every open stream is told to re-fetch and changes
travel through Redis again.
"""

from __future__ import annotations

import os
import time

import redis as redis_client
import requests

from tasktree.exporter.live import CHANNEL

from ..ui.support import send_spans, span
from .faults_support import EventReader, RedisServer, metric_values

PAGES = ("/", "/runs/{trace}", "/runs/{trace}/tasks/{span}", "/search?q=redis", "/docker")
API = (
    "/api/runs",
    "/api/runs/{trace}",
    "/api/runs/{trace}/tasks/{span}",
    "/api/runs/{trace}/tasks/{span}/children",
    "/api/search?q=redis",
    "/api/docker/hosts",
    "/api/docker/operations",
    "/metrics",
    "/healthz",
)


def _statuses(web: str, trace: str, span_id: str) -> dict[str, int]:
    return {
        path: requests.get(web + path.format(trace=trace, span=span_id), timeout=30).status_code
        for path in PAGES + API
    }


def _heard_on_channel(url: str, trace: str, send) -> bool:
    """Whether a fold caused by ``send()`` is published on the Redis channel."""
    client = redis_client.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(CHANNEL)
        send()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message and trace.encode() in message["data"]:
                return True
        return False
    finally:
        pubsub.close()
        client.close()


def test_redis_killed_and_restarted_nothing_returns_500_and_live_updates_resume(
    start_tasktree, private_db
):
    private = RedisServer().start()
    try:
        # Its own database: its folds must be published by this server, through this Redis.
        server = start_tasktree(extra_args=("--redis-url", private.url), database=private_db)
        trace, root = os.urandom(16).hex(), os.urandom(8).hex()
        stream = EventReader(f"{server.web}/api/live/runs/{trace}")
        try:
            assert stream.next_event(5) == "open"
            assert _heard_on_channel(
                private.url,
                trace,
                lambda: send_spans(
                    server.otlp_http, [span(trace, root, name="root", running=True)]
                ),
            ), "with Redis up, folds are published through it"
            assert stream.next_event(5) == "changed"

            private.proc.kill()  # gone without a goodbye
            private.proc.wait(10)
            child = os.urandom(8).hex()
            send_spans(server.otlp_http, [span(trace, child, root, name="child")])  # asserts 200
            assert stream.next_event(10) == "changed", "a server's own changes still go live"
            server.wait_folded()
            statuses = _statuses(server.web, trace, root)
            assert all(status == 200 for status in statuses.values()), statuses
            other = EventReader(f"{server.web}/api/live/runs")
            assert other.next_event(5) == "open", "new live streams open while Redis is down"
            other.close()
            assert server.get(f"/api/runs/{trace}")["task_count"] == 2

            stream.drain()
            private.start()  # same port: the server's Redis is back
            assert stream.next_event(15) == "changed", "open streams are told to re-fetch"
            assert _heard_on_channel(
                private.url,
                trace,
                lambda: send_spans(server.otlp_http, [span(trace, root, name="root")]),
            ), "live updates travel through Redis again"
            assert stream.next_event(10) == "changed"
            server.wait_folded()
            assert server.get(f"/api/runs/{trace}")["status"] == "ok"
        finally:
            stream.close()
    finally:
        private.stop()


def test_metrics_say_whether_live_updates_reach_the_pages_through_redis(start_tasktree, private_db):
    """A server whose Redis did not answer served live pages that never got other servers'
    changes, with nothing in /metrics: tasktree_live_bus_up is 0 until Redis answers."""
    private = RedisServer()  # not started: nothing listens on its port
    try:
        server = start_tasktree(extra_args=("--redis-url", private.url), database=private_db)
        _wait_for_log(server, "live updates through Redis paused: Error 111")
        assert metric_values(server)["tasktree_live_bus_up"] == 0
        private.start()
        _wait_for_log(server, "live updates through Redis resumed after")
        assert metric_values(server)["tasktree_live_bus_up"] == 1
    finally:
        private.stop()


def test_without_redis_the_live_bus_is_up(start_tasktree, private_db):
    server = start_tasktree(database=private_db)
    assert metric_values(server)["tasktree_live_bus_up"] == 1


def _wait_for_log(server, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_path.read_text():
        assert time.monotonic() < deadline, f"never logged {text!r}"
        time.sleep(0.2)
