"""design.md §3 rule 4, issue 7 "Faults": PostgreSQL restarted under steady load.

Several clients keep sending OTLP/HTTP protobuf while a private PostgreSQL goes down and comes
back.  Clients see only 200, or 503 with Retry-After (then retry, as OTel exporters do); nothing
acknowledged is lost or stored twice; the same ``tasktree serve`` process recovers by itself
(its pool reconnects), and /healthz says 503 while the database is away, then 200 again.
"""

from __future__ import annotations

import threading
import time

import psycopg
import requests

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.store.pool import connection, open_pool

from .faults_support import OtlpClient, metric_values, otlp_request, random_id

CLIENTS = 4
CHILDREN_PER_REQUEST = 20


class SteadyJob:
    """One client's run: a root that heartbeats (running snapshots) while children arrive in
    batches, then ends ``ok``.  ``acked`` holds the span ids of every request answered 200."""

    def __init__(self, client: OtlpClient, index: int):
        self.client = client
        self.job = f"pg-restart-{index}"
        self.trace_id, self.root = random_id(16), random_id(8)
        self.acked: set[bytes] = set()
        self.unacknowledged = 0

    def run(self, stop: threading.Event, deadline: float) -> None:
        while not stop.is_set():
            children = [(random_id(8), self.root, "child", False)
                        for _ in range(CHILDREN_PER_REQUEST)]
            self._send([(self.root, None, "root", True), *children], deadline)
            time.sleep(0.05)
        self._send([(self.root, None, "root", False)], deadline)

    def _send(self, spans, deadline: float) -> None:
        if self.client.send(otlp_request(self.trace_id, spans, self.job), deadline):
            self.acked.update(span_id for span_id, *_ in spans)
        else:
            self.unacknowledged += 1


class HealthWatch:
    """Polls /healthz; ``seen`` is the sequence of distinct consecutive statuses."""

    def __init__(self, web: str):
        self.url = web + "/healthz"
        self.seen: list[int | str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status = requests.get(self.url, timeout=30).status_code
            except requests.RequestException:
                status = "error"
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)
            self.stop.wait(0.1)


def _wait_healthy(web: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(web + "/healthz", timeout=30).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"/healthz not back to 200 within {timeout} s of PostgreSQL's return")


def _stored(url: str, trace_id: bytes) -> tuple[list[bytes], tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        spans = [bytes(r[0]) for r in conn.execute(
            "SELECT span_id FROM tasks WHERE trace_id = %s AND NOT missing", (trace_id,))]
        run = conn.execute("SELECT task_count, n_ok, n_error, n_running, n_stalled FROM runs"
                           " WHERE trace_id = %s", (trace_id,)).fetchone()
    return spans, run


def test_postgresql_restart_under_load_loses_nothing_and_the_same_server_recovers(
        embedded_pg, start_tasktree):
    url = embedded_pg.get_uri(database="tasktree")
    server = start_tasktree(database=url)
    pid = server.proc.pid
    client = OtlpClient(server.otlp_http)
    jobs = [SteadyJob(client, i) for i in range(CLIENTS)]
    stop = threading.Event()
    deadline = time.monotonic() + 50
    threads = [threading.Thread(target=job.run, args=(stop, deadline)) for job in jobs]
    health = HealthWatch(server.web)
    health.thread.start()
    for thread in threads:
        thread.start()
    try:
        time.sleep(3.0)  # steady state first
        assert client.statuses[200] > 0 and health.seen == [200]
        embedded_pg.stop()
        time.sleep(7.0)  # longer than the pool's 5 s wait: requests are answered 503 meanwhile
        embedded_pg.start()
        _wait_healthy(server.web, 30)
        time.sleep(2.0)  # steady load on the recovered pool
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        health.stop.set()
        health.thread.join(30)

    assert server.proc.poll() is None and server.proc.pid == pid, "no restart of tasktree serve"
    assert set(client.statuses) <= {200, 503}, client.statuses
    assert client.statuses[503] > 0, "the outage was seen by the clients"
    assert client.missing_retry_after == 0, "every 503 says when to retry"
    assert health.seen[0] == 200 and 503 in health.seen and health.seen[-1] == 200, health.seen
    assert all(job.unacknowledged == 0 for job in jobs), "every request was stored in the end"
    log = server.log_path.read_text()
    assert "folding paused" in log and "folding resumed after" in log.split("folding paused")[-1]

    server.wait_folded()
    for job in jobs:
        spans, run = _stored(url, job.trace_id)
        assert len(spans) == len(set(spans)), "nothing is stored twice"
        assert set(spans) == job.acked, "every span acknowledged is in the tree"
        total = len(job.acked)
        assert run == (total, total, 0, 0, 0), "the rollup counts each task once, all ok"


def _borrow(pool) -> bool:
    try:
        with connection(pool) as conn:
            conn.execute("SELECT 1")
        return True
    except StoreUnavailable:
        return False


def test_pool_reconnects_within_seconds_of_postgresql_return_even_after_a_long_outage(embedded_pg):
    """psycopg_pool's own reconnect back-off has no ceiling: after an 18 s outage its next attempt
    would come some 30 s after the first failure.  The pool must be usable again soon after
    PostgreSQL is, whatever the outage length."""
    pool = open_pool(embedded_pg.get_uri(database="tasktree"), timeout=1.0)
    try:
        assert _borrow(pool)
        embedded_pg.stop()
        outage_ends = time.monotonic() + 18
        while time.monotonic() < outage_ends:  # borrowers keep asking, as requests and folds do
            assert not _borrow(pool)
            time.sleep(0.2)
        embedded_pg.start()
        deadline = time.monotonic() + 8
        while not _borrow(pool):
            assert time.monotonic() < deadline, "no reconnection after PostgreSQL returned"
            time.sleep(0.2)
    finally:
        pool.close()


def _post(server, body: bytes) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                             headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    return response, time.monotonic() - started


def test_in_an_outage_ingest_answers_503_promptly_so_exporters_retry_within_their_timeout(
        embedded_pg, start_tasktree):
    """OpenTelemetry's exporters retry a batch only within their export timeout (10 s by
    default).  Each request of an outage waited the pool's 5 s and said "Retry-After: 5": the
    exporters gave the batch up after one attempt, and a 30 s outage lost 900 of 2,400 spans."""
    server = start_tasktree(database=embedded_pg.get_uri(database="tasktree"),
                            env={"TASKTREE_POOL_TIMEOUT": "5"})  # fmt: skip
    body = otlp_request(random_id(16), [(random_id(8), None, "root", False)], "outage")
    assert _post(server, body)[0].status_code == 200
    embedded_pg.stop()
    try:
        first, _ = _post(server, body)  # finds PostgreSQL gone, after the pool's wait
        second, took = _post(server, body)
    finally:
        embedded_pg.start()
    assert first.status_code == second.status_code == 503
    assert first.headers["Retry-After"] == second.headers["Retry-After"] == "1"
    assert took < 3, "once the outage is known, a request is not held for the pool's 5 s"
    client = OtlpClient(server.otlp_http)
    assert client.send(body, time.monotonic() + 60), "stored once PostgreSQL is back"


def test_a_task_heartbeating_through_an_outage_is_not_shown_stalled_once_it_ends(
        embedded_pg, start_tasktree):
    """The heartbeats a job sent while PostgreSQL was away were refused, not missed: the stall
    sweep turned the job's running task stalled at once when the store came back, until its next
    heartbeat (a probe saw 16 s of a false stall after 75 s of outage)."""
    url = embedded_pg.get_uri(database="tasktree")
    server = start_tasktree(database=url, extra_args=("--stall-after", "3"))
    client, trace, task = OtlpClient(server.otlp_http), random_id(16), random_id(8)

    def heartbeat() -> bool:
        body = otlp_request(trace, [(task, None, "through-outage", True)], "outage-job")
        return client.send(body, time.monotonic() + 60)

    assert heartbeat()
    server.wait_folded()
    embedded_pg.stop()
    time.sleep(5)  # longer than --stall-after: the job's heartbeats meanwhile are refused
    embedded_pg.start()
    _wait_healthy(server.web, 30)
    for _ in range(3):  # the job's heartbeats get through again, one every 1.5 s; meanwhile
        time.sleep(1.5)  # the sweep (every second) passes --stall-after since the store is back
        assert heartbeat()
    assert metric_values(server)["tasktree_stall_transitions_total"] == 0
    status = requests.get(f"{server.web}/api/runs/{trace.hex()}", timeout=30).json()["status"]
    assert status == "running"
