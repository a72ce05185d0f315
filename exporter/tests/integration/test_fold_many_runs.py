"""Days of many small runs, through a real ``tasktree serve`` (issue 18, parts 1 and 2).

A fold's cost must follow its batch, never the runs of the day; the locks it holds at once must
not grow with its batch (PostgreSQL's lock table is shared by every database of the server); a
fold the statement timeout cancels is split, never retried as it was for ever.
"""

from __future__ import annotations

import os
import random
import threading
import time

import psycopg
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from tasktree.exporter.store.locks import LANES

pytestmark = pytest.mark.slow

REQUEST_SPANS = 5_000  # one-span runs per request, as a busy scheduler's exporter sends them


def one_span_runs(count: int, *, lane: int | None = None) -> list[bytes]:
    """Random trace ids of ``count`` runs (all in fold lane ``lane`` when given)."""
    ids = [os.urandom(16) for _ in range(count)]
    if lane is not None:
        ids = [bytes([lane + LANES * (t[0] % (256 // LANES))]) + t[1:] for t in ids]
    return ids


def send_runs(server, traces: list[bytes], job: str = "many-small-runs") -> None:
    """One finished root task per trace, in requests of REQUEST_SPANS, each answered 200."""
    now = time.time_ns()
    for at in range(0, len(traces), REQUEST_SPANS):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = job
        scope = rs.scope_spans.add()
        for trace in traces[at:at + REQUEST_SPANS]:
            span = scope.spans.add(trace_id=trace, span_id=os.urandom(8), name="small-job",
                                   start_time_unix_nano=now - 1_000_000, end_time_unix_nano=now)
            span.status.code = trace_pb2.Status.STATUS_CODE_OK
        answer = requests.post(server.otlp_http + "/v1/traces", data=request.SerializeToString(),
                               headers={"Content-Type": "application/x-protobuf"}, timeout=120)
        assert answer.status_code == 200, answer.text


def assert_all_folded_ok(server, count: int, timeout: float) -> None:
    """Every run is in the tree, finished ``ok`` (a liveness bound, not a speed figure)."""
    server.wait_folded(timeout)
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        by_status = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status"))
    assert by_status == {3: count}


def test_a_day_of_many_small_runs_keeps_folding(start_tasktree, private_db):
    """A fresh day partition (no statistics, autovacuum off): the plans a connection keeps are
    made while the day is small.  The root summary walked every top-level task of the day for
    each run of a batch, so folding slowed as the day filled and then never ended (each batch
    cancelled by the statement timeout and retried as it was).  Now each run's top-level tasks
    are found by its trace id, whatever the plan: 40,000 runs fold in seconds."""
    server = start_tasktree(database=private_db)
    traces = one_span_runs(40_000)
    send_runs(server, traces)
    assert_all_folded_ok(server, len(traces), timeout=150)
    with psycopg.connect(private_db, autocommit=True) as conn:
        roots = conn.execute("SELECT count(*) FROM runs WHERE root_count = 1 AND name IS NOT NULL"
                             " AND job = 'many-small-runs' AND end_ns IS NOT NULL").fetchone()[0]
    assert roots == len(traces)
    assert "statement timeout" not in server.log_path.read_text()


class LockWatcher(threading.Thread):
    """Samples, every few milliseconds, the most advisory locks one backend of ``database``
    holds (or waits for) at once."""

    def __init__(self, admin_url: str, database: str):
        super().__init__(daemon=True)
        self.admin_url, self.database = admin_url, database
        self.most = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self.stop.wait(0.005):
                held = conn.execute(
                    "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_locks l"
                    " JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND d.datname = %s GROUP BY l.pid) AS x",
                    (self.database,),
                ).fetchone()[0]
                self.most = max(self.most, held)


def test_one_request_of_24000_runs_holds_a_handful_of_locks(start_tasktree, private_db):
    """One advisory lock per run in one transaction filled PostgreSQL's shared lock table
    ("out of shared memory"), for every database of the server.  A fold now holds its lane's
    lock only: never more than LANES."""
    admin = psycopg.conninfo.make_conninfo(private_db, dbname="postgres")
    database = psycopg.conninfo.conninfo_to_dict(private_db)["dbname"]
    server = start_tasktree(database=private_db)
    watcher = LockWatcher(admin, database)
    watcher.start()
    traces = one_span_runs(24_000)
    try:
        send_runs(server, traces, job="one-big-request")
        assert_all_folded_ok(server, len(traces), timeout=150)
    finally:
        watcher.stop.set()
        watcher.join()
    assert 1 <= watcher.most <= LANES
    log = server.log_path.read_text()
    assert "out of shared memory" not in log and "max_locks_per_transaction" not in log


def test_a_fold_cancelled_by_the_statement_timeout_is_split_until_it_fits(
    start_tasktree, private_db
):
    """A batch too large to fold within TASKTREE_FOLD_TIMEOUT used to roll back and be retried
    as it was, for ever.  Now it is retried in halves: said in the log and in /metrics, and
    every run reaches the tree."""
    server = start_tasktree(database=private_db, env={"TASKTREE_FOLD_TIMEOUT": "0.05"})
    traces = one_span_runs(20_000, lane=3)  # one lane: a first fold of 10,000 runs
    send_runs(server, traces, job="too-big-a-batch")
    assert_all_folded_ok(server, len(traces), timeout=150)
    log = server.log_path.read_text()
    assert "of lane 3 was cancelled" in log and "at a time" in log
    metrics = requests.get(server.web + "/metrics", timeout=30).text
    timeouts = [line for line in metrics.splitlines()
                if line.startswith("tasktree_fold_timeouts_total")]
    assert timeouts and float(timeouts[0].split()[-1]) >= 1


def test_a_fold_of_every_lane_cancelled_by_the_timeout_goes_lane_by_lane(
    start_tasktree, private_db
):
    """A backlog of one fold's worth in several lanes is folded at once; if that fold is
    cancelled, the lanes are folded one by one (and split), and every run still arrives."""
    server = start_tasktree(
        database=private_db, env={"TASKTREE_FOLD_TIMEOUT": "0.05", "TASKTREE_FOLD_BATCH": "8000"}
    )
    traces = one_span_runs(4_000, lane=1) + one_span_runs(4_000, lane=6)
    random.shuffle(traces)
    send_runs(server, traces, job="two-lanes-at-once")
    assert_all_folded_ok(server, len(traces), timeout=150)
    log = server.log_path.read_text()
    assert "of every lane at once was cancelled" in log and "lane by lane" in log
