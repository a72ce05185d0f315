"""Ingest admission and concurrent folding by several processes."""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from urllib.parse import urlencode

import psycopg
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tasktree.exporter.api.params import MAX_JOB
from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.ingest import Ingestor
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.settings import Settings, SettingsError
from tasktree.exporter.store import locks
from tasktree.exporter.store.fold import FoldResult, fold_batch, lanes_with_records
from tasktree.exporter.store.locks import LANES
from tasktree.exporter.store.pool import open_pool
from tasktree.exporter.tree import status as st

from ..spans import sid, span, tid
from .faults_support import otlp_request
from .fold_support import run, tree


def settings(**kw) -> Settings:
    return dataclasses.replace(Settings(), **kw)


def test_spans_of_a_run_over_its_cap_are_refused_with_a_reason_and_counted(pool, clean_store_db):
    ingest = Ingestor(pool, settings(max_spans_per_run=2))
    t, other = tid(1), tid(2)
    ingest(DecodedBatch([span(t, sid(1)), span(t, sid(2), sid(1))]))
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        fold_batch(conn, limit=100, stall_after_s=30)
    batch = DecodedBatch([span(t, sid(3), sid(1)), span(other, sid(1))])
    ingest(batch)
    assert batch.rejected == 1
    assert "TASKTREE_MAX_SPANS_PER_RUN" in batch.messages[0]
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        fold_batch(conn, limit=100, stall_after_s=30)
        assert conn.execute(
            "SELECT task_count, dropped_spans FROM runs WHERE trace_id = %s", (t,)
        ).fetchone() == (2, 1)
        assert run(conn, other)[9] == 1  # the other run's span was stored


def test_ingest_answers_overloaded_when_the_unfolded_backlog_is_over_its_limit(pool):
    ingest = Ingestor(pool, settings(max_backlog_spans=3))
    ingest(DecodedBatch([span(tid(3), sid(i)) for i in range(5)]))
    time.sleep(1.1)  # the backlog figure is cached for one second
    with pytest.raises(Overloaded) as caught:
        ingest(DecodedBatch([span(tid(3), sid(9))]))
    assert caught.value.retry_after and "TASKTREE_MAX_BACKLOG_SPANS" in caught.value.message


def test_ingest_reports_store_unavailable_when_postgresql_cannot_be_reached():
    pool = open_pool("postgresql://postgres@127.0.0.1:1/none", max_size=1, timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            Ingestor(pool, settings())(DecodedBatch([span(tid(4), sid(1))]))
        assert caught.value.status == 503 and caught.value.retry_after
    finally:
        pool.close()


def test_two_folders_on_the_same_runs_neither_deadlock_nor_lose_rollup_updates(
    pool, clean_store_db
):
    ingest = Ingestor(pool, settings())
    rng = random.Random(5)
    runs = [tid(10 + r) for r in range(3)]
    spans = []
    for t in runs:  # each run: a root, 20 branches, 10 leaves each
        spans.append(span(t, sid(0), None, start=1))
        for b in range(1, 21):
            spans.append(span(t, sid(b), sid(0), start=2))
            spans += [span(t, sid(100 * b + k), sid(b), start=3) for k in range(10)]
    rng.shuffle(spans)
    for at in range(0, len(spans), 37):
        ingest(DecodedBatch(spans[at : at + 37]))

    errors = []

    def folder():
        try:
            with psycopg.connect(clean_store_db, autocommit=True) as conn:
                while fold_batch(conn, limit=rng.randint(5, 40), stall_after_s=30).records:
                    pass
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=folder) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        for t in runs:
            nodes = tree(conn, t)
            assert nodes[sid(0)] == (None, False, 3, 20, 220, 0, 0, 0)
            assert all(nodes[sid(b)][3:5] == (10, 10) for b in range(1, 21))
            assert run(conn, t)[9] == 221


def test_a_lane_folds_only_its_own_runs_and_a_held_lane_is_skipped(pool, clean_store_db):
    ingest = Ingestor(pool, settings())
    runs = [bytes([lane, 7]) + bytes(14) for lane in (1, 2 + LANES)]  # lanes 1 and 2
    ingest(DecodedBatch([span(t, sid(i)) for t in runs for i in range(3)]))
    with (
        psycopg.connect(clean_store_db, autocommit=True) as holder,
        psycopg.connect(clean_store_db, autocommit=True) as conn,
    ):
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", locks.lane(1))
            assert fold_batch(conn, limit=100, stall_after_s=30, lane=1).records == 0
            folded = fold_batch(conn, limit=100, stall_after_s=30, lane=2)
        assert (folded.records, folded.trace_ids) == (3, (runs[1],))
        assert lanes_with_records(conn) == {1}  # what a folder's pass looks at first
        assert fold_batch(conn, limit=100, stall_after_s=30, lane=1).trace_ids == (runs[0],)
        assert lanes_with_records(conn) == set()


def test_fold_threads_of_one_process_fold_every_lane_and_report_each_fold_once(
    pool, clean_store_db
):
    from tasktree.exporter.background import Folder

    ingest = Ingestor(pool, settings())
    runs = [bytes([n, 9]) + bytes(14) for n in range(2 * LANES)]  # two runs in every lane
    for t in runs:  # a root with 30 children each, in requests of 10
        spans = [span(t, sid(0), None)] + [span(t, sid(k), sid(0)) for k in range(1, 31)]
        for at in range(0, len(spans), 10):
            ingest(DecodedBatch(spans[at : at + 10]))
    reported, changed = [], []
    folder = Folder(pool, settings(fold_threads=3, pool_size=4))
    folder.subscribe_folds(lambda result: reported.append(result.records))
    folder.subscribe(changed.extend)
    folder.start()
    try:
        deadline = time.monotonic() + 30
        while folder.folded_total < 31 * len(runs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        folder.stop()
    assert folder.folded_total == sum(reported) == 31 * len(runs)
    assert set(changed) == set(runs)
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        assert lanes_with_records(conn) == set()
        for t in runs:
            assert tree(conn, t)[sid(0)] == (None, False, 3, 30, 30, 0, 0, 0)
            assert run(conn, t)[9] == 31


def _fold_in_background(pool, spans_in_requests, expected: int, **kw) -> list[FoldResult]:
    """Land the requests, then let a Folder fold them; the folds it reported."""
    from tasktree.exporter.background import Folder

    ingest = Ingestor(pool, settings())
    for request in spans_in_requests:
        ingest(DecodedBatch(request))
    reported: list[FoldResult] = []
    folder = Folder(pool, settings(**kw))
    folder.subscribe_folds(lambda result: result.records and reported.append(result))
    folder.start()
    try:
        deadline = time.monotonic() + 30
        while folder.folded_total < expected and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        folder.stop()
    assert sum(r.records for r in reported) == expected
    return reported


def test_a_few_records_in_every_lane_are_folded_in_one_fold(pool, clean_store_db):
    """A request of many runs lands in every lane; folding each lane on its own paid a fold's
    fixed costs once per lane (issue 16)."""
    runs = [bytes([n, 3]) + bytes(14) for n in range(2 * LANES)]
    request = [s for t in runs for s in (span(t, sid(0)), span(t, sid(1), sid(0)))]
    reported = _fold_in_background(pool, [request], len(request), fold_threads=2, pool_size=4)
    assert [(r.records, set(r.trace_ids)) for r in reported] == [(len(request), set(runs))]
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        for t in runs:
            assert tree(conn, t)[sid(0)] == (None, False, 3, 1, 1, 0, 0, 0)


def test_a_backlog_larger_than_a_fold_is_folded_lane_by_lane(pool, clean_store_db):
    """Beyond one fold's worth, lanes fold side by side (threads, processes), each its own."""
    runs = [bytes([n, 4]) + bytes(14) for n in range(LANES)]
    request = [span(t, sid(k), sid(0) if k else None) for t in runs for k in range(10)]
    reported = _fold_in_background(
        pool, [request], len(request), fold_threads=2, pool_size=4, fold_batch=40
    )
    # The first folds of each thread take one lane each (later ones may meet a backlog that one
    # fold takes whole).
    assert [len({locks.lane_of(t) for t in r.trace_ids}) for r in reported[:2]] == [1, 1]
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        for t in runs:
            assert tree(conn, t)[sid(0)] == (None, False, 3, 9, 9, 0, 0, 0)


def test_the_folder_vacuums_the_landing_after_folding_many_records(
    pool, clean_store_db, monkeypatch
):
    """Folded records leave dead rows behind where every claim starts; with autovacuum off
    (as on these machines) nothing else would ever remove them."""
    from tasktree.exporter import background

    monkeypatch.setattr(background, "VACUUM_LANDING_AFTER", 100)
    runs = [bytes([n, 5]) + bytes(14) for n in range(LANES)]
    Ingestor(pool, settings())(
        DecodedBatch([span(t, sid(k), sid(0) if k else None) for t in runs for k in range(20)])
    )
    folder = background.Folder(pool, settings(fold_threads=1, pool_size=4))
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        before = _landing_vacuums(conn)
        folder.start()
        try:
            deadline = time.monotonic() + 15
            while _landing_vacuums(conn) == before and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            folder.stop()
        assert folder.folded_total == 160 and _landing_vacuums(conn) > before
        assert lanes_with_records(conn) == set()


def _landing_vacuums(conn) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'span_landing'"
    ).fetchone()[0]


def test_fold_threads_must_leave_connections_for_requests():
    with pytest.raises(
        SettingsError,
        match=r"TASKTREE_FOLD_THREADS \(4\) must be below "
        r"TASKTREE_POOL_SIZE \(4\)",
    ):
        Settings.from_env(fold_threads=4, pool_size=4)


def test_at_the_cap_records_of_kept_tasks_are_accepted_and_new_tasks_refused(pool, clean_store_db):
    """Records landed and not folded yet are tasks the run keeps, and take room under its cap."""
    ingest = Ingestor(pool, settings(max_spans_per_run=2))
    t = tid(5)
    now = time.time_ns()
    ingest(DecodedBatch([span(t, sid(k), status=st.RUNNING, heartbeat=now) for k in (1, 2)]))
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        fold_batch(conn, limit=1, stall_after_s=30)  # the run holds 1 task; sid(2) waits
        assert run_counts(conn, t) == (st.RUNNING, 1, 0)
    batch = DecodedBatch([span(t, sid(k)) for k in (1, 2, 3)])  # finals, and a new task
    ingest(batch)
    assert batch.rejected == 1 and [s.span_id for s in batch.spans] == [sid(1), sid(2)]
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        while fold_batch(conn, limit=100, stall_after_s=30).records:
            pass
        assert run_counts(conn, t) == (st.OK, 2, 1)


def test_one_request_cannot_take_a_run_past_its_cap(pool, clean_store_db):
    ingest = Ingestor(pool, settings(max_spans_per_run=3))
    t, other = tid(6), tid(7)
    spans = [span(t, sid(1))] + [span(t, sid(k), sid(1)) for k in (2, 3, 4, 5)]
    batch = DecodedBatch([*spans, span(t, sid(2), sid(1)), span(other, sid(1))])  # sid(2) twice
    ingest(batch)
    assert batch.rejected == 2 and "TASKTREE_MAX_SPANS_PER_RUN" in batch.messages[0]
    assert [(s.trace_id, s.span_id) for s in batch.spans] == [
        (t, sid(1)), (t, sid(2)), (t, sid(3)), (t, sid(2)), (other, sid(1))]  # fmt: skip
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        while fold_batch(conn, limit=100, stall_after_s=30).records:
            pass
        assert run_counts(conn, t) == (st.OK, 3, 2)  # counted on the run, folded after
        assert run_counts(conn, other)[1:] == (1, 0)


def run_counts(conn, trace: bytes) -> tuple[int, int, int]:
    return conn.execute(
        "SELECT status, task_count, dropped_spans FROM runs WHERE trace_id = %s", (trace,)
    ).fetchone()


def test_through_the_server_a_run_at_its_cap_keeps_its_tasks_heartbeats_and_ends_ok(
    start_tasktree, private_db
):
    """Issue 18: at TASKTREE_MAX_SPANS_PER_RUN, the kept tasks' heartbeats and final records are
    accepted (the run neither stalls nor stays running for ever); only new tasks are refused."""
    server = start_tasktree(
        extra_args=("--stall-after", "3"),
        database=private_db,
        env={"TASKTREE_MAX_SPANS_PER_RUN": "10"},
    )
    trace = os.urandom(16)
    tasks = [(sid(0), None)] + [(sid(k), sid(0)) for k in range(1, 10)]

    def send(records, running: bool) -> ExportTraceServiceResponse:
        spans = [(s, p, f"task-{s.hex()}", running) for s, p in records]
        body = otlp_request(trace, spans, "capped-job")
        answer = requests.post(
            server.otlp_http + "/v1/traces",
            data=body,
            timeout=30,
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert answer.status_code == 200, answer.text
        return ExportTraceServiceResponse.FromString(answer.content)

    assert not send(tasks, running=True).HasField("partial_success")
    server.wait_folded()
    for _ in range(4):  # heartbeats past --stall-after: the run stays running
        assert not send(tasks, running=True).HasField("partial_success")
        time.sleep(1)
    server.wait_folded()
    assert server.get(f"/api/runs/{trace.hex()}")["status"] == "running"
    refused = send([(sid(10), sid(0))], running=False).partial_success
    assert refused.rejected_spans == 1 and "TASKTREE_MAX_SPANS_PER_RUN" in refused.error_message
    assert not send(tasks, running=False).HasField("partial_success")
    server.wait_folded()
    run = server.get(f"/api/runs/{trace.hex()}")
    assert (run["status"], run["roots"][0]["status"]) == ("ok", "ok")
    assert (run["task_count"], run["dropped_spans"], run["counts"]["ok"]) == (10, 1, 10)


def test_through_the_server_one_big_request_keeps_only_what_fits_under_the_cap(
    start_tasktree, private_db
):
    server = start_tasktree(database=private_db, env={"TASKTREE_MAX_SPANS_PER_RUN": "10"})
    trace = os.urandom(16)
    spans = [(sid(0), None, "root", False)] + [(sid(k), sid(0), f"t{k}", False)
                                               for k in range(1, 1000)]  # fmt: skip
    def send(spans) -> int:
        answer = requests.post(
            server.otlp_http + "/v1/traces",
            data=otlp_request(trace, spans, "big"),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        refused = ExportTraceServiceResponse.FromString(answer.content).partial_success
        assert "TASKTREE_MAX_SPANS_PER_RUN" in refused.error_message
        return refused.rejected_spans

    assert send(spans) == 990
    server.wait_folded()
    run = server.get(f"/api/runs/{trace.hex()}")
    assert (run["task_count"], run["dropped_spans"]) == (10, 990)
    assert run["status"] == "ok" and run["roots"][0]["child_count"] == 9
    # The client resends the request, and a refused task sends its running snapshot and its final
    # record: each refused again, but the run's count is of tasks refused, not of records.
    assert send(spans) == 990
    assert send([(sid(500), sid(0), "t500", True), (sid(500), sid(0), "t500", False)]) == 2
    server.wait_folded()
    assert server.get(f"/api/runs/{trace.hex()}")["dropped_spans"] == 990


def test_job_and_task_names_of_thousands_of_characters_are_cut_and_stop_nothing(
    start_tasktree, private_db
):
    """A name is a key of btree indexes (runs, resources, metric_totals), which PostgreSQL caps at
    2,704 bytes an entry: a longer one made its request a 503, and once folded, stopped every
    fold (or every write of the job series) for every job, for good."""
    server = start_tasktree(database=private_db)
    chance = random.Random(16)
    long_job = "".join(chance.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=2800))
    long_task = "".join(chance.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=3000))
    poisoned, after = os.urandom(16), os.urandom(16)
    for trace, spans, job in (
        (poisoned, [(sid(1), None, long_task, False)], long_job),
        (after, [(sid(1), None, "ordinary", False)], "after-long-names"),
    ):
        answer = requests.post(
            server.otlp_http + "/v1/traces",
            data=otlp_request(trace, spans, job),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert not ExportTraceServiceResponse.FromString(answer.content).HasField("partial_success")
    server.wait_folded()

    run = server.get(f"/api/runs/{poisoned.hex()}")
    assert run["job"] == long_job[:1000] + "…[truncated by tasktree: kept 1000 of 2800 bytes]"
    assert run["name"] == long_task  # a task's own name is kept whole (the value limit applies)
    by_job = {"job": run["job"]}  # the job's runs and tasks can be listed by its stored name
    assert [r["trace_id"] for r in server.get("/api/runs?" + urlencode(by_job))["runs"]] == [
        poisoned.hex()
    ]
    assert len(server.get("/api/search?" + urlencode(by_job))["tasks"]) == 1
    openapi = server.get("/api/openapi.json")["components"]["parameters"]["job"]["schema"]
    assert openapi["maxLength"] == MAX_JOB >= len(run["job"])
    assert server.get(f"/api/runs/{after.hex()}")["status"] == "ok"
    finished = 'tasktree_runs_finished_total{job_name="after-long-names",status="ok"} 1'
    deadline = time.monotonic() + 20  # the job series are written at most once a second
    while finished not in (metrics := requests.get(server.web + "/metrics", timeout=30).text):
        assert time.monotonic() < deadline, metrics[-3000:]
        time.sleep(0.5)
    assert "tasktree_metrics_write_errors_total 0.0" in metrics


def test_killed_tasks_still_turn_stalled_while_a_batch_cannot_be_folded(
    start_tasktree, private_db
):
    """The stall sweep goes on when folds fail: a batch PostgreSQL refuses (here a constraint
    the database was given refuses one job's runs) must not keep every killed task running."""
    server = start_tasktree(database=private_db, extra_args=("--stall-after", "2"))

    def send(trace: bytes, job: str, running: bool) -> None:
        answer = requests.post(
            server.otlp_http + "/v1/traces",
            data=otlp_request(trace, [(sid(1), None, "work", running)], job),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    killed = os.urandom(16)
    send(killed, "killed-job", running=True)  # its last heartbeat: now
    server.wait_folded()
    assert server.get(f"/api/runs/{killed.hex()}")["status"] == "running"
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE runs ADD CONSTRAINT no_poison CHECK (job <> 'poison') NOT VALID")
    send(os.urandom(16), "poison", running=False)  # accepted, then every fold of it fails
    deadline = time.monotonic() + 30
    while server.get(f"/api/runs/{killed.hex()}")["status"] != "stalled":
        assert time.monotonic() < deadline, "the killed task never turned stalled"
        time.sleep(0.5)


def test_a_request_past_a_limit_of_postgresql_is_a_500_not_a_503_to_retry_for_ever(
    start_tasktree, private_db
):
    """Here a site's own index on resources refuses a big resource: 503 asked the exporter to
    send the same request again, for ever; the request, not the database, is what fails."""
    server = start_tasktree(database=private_db)
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX site_resources_by_attributes ON resources ((attributes::text))")
    body = otlp_request(os.urandom(16), [(sid(1), None, "work", False)], "x" * 3000 + "".join(
        random.Random(5).choices("abcdefghijklmnopqrstuvwxyz", k=4000)))  # fmt: skip
    answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                           headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    assert answer.status_code == 500, (answer.status_code, answer.text)
    assert "Retry-After" not in answer.headers
