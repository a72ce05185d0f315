"""With ``--workers 2`` and no Redis, folds done by the worker process still reach the live pages
(PostgreSQL LISTEN/NOTIFY carries them)."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

from tasktree.exporter.live import PostgresBus


def test_a_notify_from_another_process_reaches_this_process_streams(database_url):
    listener, publisher = PostgresBus(database_url).start(), PostgresBus(database_url, listen=False)
    try:
        subscription = listener.subscribe(b"\x01" * 16)
        deadline = time.monotonic() + 10
        while not subscription.wait(0.1):  # the first delivery is the "resync" on LISTEN
            assert time.monotonic() < deadline
        subscription = listener.subscribe(b"\x02" * 16)
        publisher.publish([b"\x02" * 16])
        assert subscription.wait(10)
    finally:
        listener.close()
        publisher.close()


def test_live_stream_of_a_server_with_two_workers_sees_spans_arriving(start_tasktree, private_db):
    # Its own database: only its two processes fold there, not the servers of other tests.
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    trace_id = os.urandom(16).hex()
    events = []

    def read_stream():
        with urllib.request.urlopen(f"{server.web}/api/live/runs/{trace_id}", timeout=30) as resp:
            for line in resp:
                if line.startswith(b"data:") or line.startswith(b"event:"):
                    events.append(line)
                    if len(events) >= 3:
                        return

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    time.sleep(1.0)  # let the stream open before the spans arrive
    for i in range(20):  # enough batches that the worker process folds some of them
        span = {"traceId": trace_id, "spanId": os.urandom(8).hex(), "name": f"t{i}",
                "startTimeUnixNano": "1000", "endTimeUnixNano": "2000"}
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
        urllib.request.urlopen(urllib.request.Request(
            server.otlp_http + "/v1/traces", json.dumps(body).encode(),
            {"Content-Type": "application/json"}), timeout=30).close()
        time.sleep(0.1)
    reader.join(20)
    assert len(events) >= 1, "no live event arrived"
    server.wait_folded()
    assert server.get(f"/api/runs/{trace_id}")["task_count"] == 20
