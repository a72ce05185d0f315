"""With ``--workers 2`` and no Redis, folds done by the worker process still reach the live pages
(PostgreSQL LISTEN/NOTIFY carries them): the main process serves the pages and folds too, so the
strict test freezes it while only the worker can fold."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import psycopg

from tasktree.exporter.live import PostgresBus, encode_message

from ..integration.faults_support import (
    EventReader,
    frozen,
    land_behind_ingest,
    wait_until_landing_is_empty,
)
from ..spans import sid, span


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
        span = {
            "traceId": trace_id,
            "spanId": os.urandom(8).hex(),
            "name": f"t{i}",
            "startTimeUnixNano": "1000",
            "endTimeUnixNano": "2000",
        }
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
        urllib.request.urlopen(
            urllib.request.Request(
                server.otlp_http + "/v1/traces",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            ),
            timeout=30,
        ).close()
        time.sleep(0.1)
    reader.join(20)
    assert len(events) >= 1, "no live event arrived"
    server.wait_folded()
    assert server.get(f"/api/runs/{trace_id}")["task_count"] == 20


def test_a_span_folded_by_the_worker_process_reaches_the_stream_of_the_serving_process(
    start_tasktree, private_db
):
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    trace = os.urandom(16)
    stream = EventReader(f"{server.web}/api/live/runs/{trace.hex()}")
    try:
        assert stream.next_event(10) == "open"
        _wait_until_the_stream_hears_notifications(stream, private_db, trace)
        server.wait_folded()  # the serving process is idle: frozen, it holds no fold's locks
        with frozen(server.proc.pid):
            # the frozen process's ingest never sees it
            land_behind_ingest(private_db, [span(trace, sid(1), name="folded-by-the-worker")])
            wait_until_landing_is_empty(private_db)
            frozen_at = time.monotonic()
        event = stream.next_event(15)
        print(f"changed event {time.monotonic() - frozen_at:.2f}s after the serving process thawed")
        assert event == "changed", "the worker's fold never reached the stream"
    finally:
        stream.close()
    assert server.get(f"/api/runs/{trace.hex()}")["task_count"] == 1


def _wait_until_the_stream_hears_notifications(stream, database_url: str, trace: bytes) -> None:
    """A NOTIFY of our own reaches the stream: the serving process LISTENs (its start-up resync
    is behind us, so the next event can only come from a new notification)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (PostgresBus.CHANNEL, encode_message(frozenset([trace])).decode()),
        )
    assert stream.next_event(15) == "changed"
    stream.drain(quiet=1.0)


def test_a_fold_worker_stops_when_its_server_is_killed(start_tasktree, private_db):
    """SIGKILL (or the OOM killer) gives the server no chance to stop its workers: each watches
    the server that started it, or it would go on folding beside the next server's."""
    import psutil

    server = start_tasktree(extra_args=("--workers", "3"), database=private_db)
    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 2 and all("--role" in w.cmdline() for w in workers)
    server.proc.kill()
    server.proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    for orphan in alive:
        orphan.kill()
    assert not alive, f"fold workers {[w.pid for w in alive]} outlived their server"
