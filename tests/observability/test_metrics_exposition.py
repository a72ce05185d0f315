"""The exact text of /metrics's PostgreSQL-backed families for a known database state (a golden
test, as prometheus client_python's own exposition tests are): any change to a name, a help
text, a label, the order or a number's spelling shows here first."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tasktree.exporter.metrics.exposition import render_store_text
from tasktree.exporter.metrics.store_metrics import StoreMetrics, bounded_jobs, read_store
from tasktree.exporter.store.pool import open_pool
from tasktree.exporter.tree import status as st

S = 10**9  # nanoseconds a second
NOW_S = 1_700_000_000.0
WEIRD = 'we"ird\\job\nx'  # every character the text format escapes in a label value


def _buckets(**counts: int) -> list[int]:
    """17 duration buckets (16 bounds and +Inf), ``b3=2``: two tasks in the 4th."""
    buckets = [0] * 17
    for name, count in counts.items():
        buckets[int(name[1:])] = count
    return buckets


TOTALS = [
    ("etl", False, "extract", st.OK, 2, 1.5, _buckets(b3=2)),
    ("etl", False, "extract", st.ERROR, 1, 20.0, _buckets(b6=1)),
    ("etl", False, "load", st.OK, 1, 0.25, _buckets(b2=1)),
    ("etl", True, "", st.OK, 1, 21.75, _buckets(b6=1)),
    (WEIRD, False, "t", st.OK, 1, 0.005, _buckets(b0=1)),
    ("__other__", False, "__other__", st.ERROR, 3, 4000.0, _buckets(b12=3)),
    ("__other__", True, "", st.ERROR, 1, 3600.0, _buckets(b11=1)),
    ("old", True, "", st.OK, 1, 10.0, _buckets(b4=1)),  # unseen for the TTL: not shown
]
JOBS = [  # (job, last start, success, failure, seen)
    ("etl", (NOW_S - 300) * S, (NOW_S - 60) * S, None, (NOW_S - 5) * S),
    ("nightly", (NOW_S - 7200) * S, None, (NOW_S - 3600) * S, (NOW_S - 30) * S),
    ("old", (NOW_S - 90 * 86400) * S, (NOW_S - 90 * 86400) * S, None, (NOW_S - 90 * 86400) * S),
]
RESOURCES = [(1, "etl"), (2, "nightly"), (3, "zz-extra"), (4, None)]
LIVE_TASKS = [  # (span id, status, heartbeat, resource)
    (1, st.RUNNING, (NOW_S - 2) * S, 1),
    (2, st.RUNNING, (NOW_S - 1) * S, 1),
    (3, st.STALLED, (NOW_S - 120) * S, 1),
    (4, st.STALLED, (NOW_S - 400) * S, 2),
    (5, st.RUNNING, (NOW_S - 3) * S, 3),
    (6, st.STALLED, (NOW_S - 100) * S, 3),
    (7, st.OK, (NOW_S - 1) * S, 1),  # finished: not counted
]


CREATED_S = NOW_S - 400 * 86400  # the database was created (migrated) 400 days ago


def _load_state(conn: psycopg.Connection) -> None:
    conn.execute(  # the first migration is the database's creation
        "UPDATE schema_migrations SET applied_at = to_timestamp(%s + version - 1)", (CREATED_S,)
    )
    conn.cursor().executemany(
        "INSERT INTO metric_totals (job, run, name, status, finished, duration_sum, buckets)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        TOTALS,
    )
    conn.cursor().executemany(
        "INSERT INTO jobs VALUES (%s, %s, %s, %s, %s)",
        [
            tuple(None if v is None else v if isinstance(v, str) else int(v) for v in row)
            for row in JOBS
        ],
    )
    conn.cursor().executemany(
        "INSERT INTO resources (id, digest, job, attributes) VALUES (%s, %s, %s, '{}')",
        [(rid, bytes([rid]), job) for rid, job in RESOURCES],
    )
    trace = bytes(16)
    conn.cursor().executemany(
        "INSERT INTO tasks (trace_id, span_id, status, heartbeat_ns, resource_id)"
        " VALUES (%s, %s, %s, %s, %s)",
        [
            (trace, bytes([span]) * 8, status, int(beat), rid)
            for span, status, beat, rid in LIVE_TASKS
        ],
    )
    # Runs with a task running now: the live tasks' run of "etl" (started 5 min ago), an older
    # one of "etl" (2 h ago) whose running task keeps the oldest time, one of "nightly" whose
    # only live task stalled (not running: not shown), one of a job beyond those shown.
    conn.cursor().executemany(
        "INSERT INTO runs (trace_id, job, start_ns) VALUES (%s, %s, %s)",
        [(trace, "etl", int((NOW_S - 300) * S)), (b"\x03" * 16, "etl", int((NOW_S - 7200) * S)),
         (b"\x04" * 16, "nightly", int((NOW_S - 100) * S)),
         (b"\x05" * 16, "zzz", int((NOW_S - 9000) * S))],
    )  # fmt: skip
    conn.cursor().executemany(
        "INSERT INTO tasks (trace_id, span_id, status, heartbeat_ns, resource_id)"
        " VALUES (%s, %s, %s, %s, %s)",
        [(b"\x03" * 16, b"\x13" * 8, st.RUNNING, int((NOW_S - 4) * S), 1),
         (b"\x04" * 16, b"\x14" * 8, st.STALLED, int((NOW_S - 500) * S), 2),
         (b"\x05" * 16, b"\x15" * 8, st.RUNNING, int((NOW_S - 4) * S), 1)],
    )  # fmt: skip
    # Two placeholders for parents of a run of "nightly", one of a run tasktree has no row of.
    nightly_run, unknown_run = b"\x01" * 16, b"\x02" * 16
    conn.execute("INSERT INTO runs (trace_id, job) VALUES (%s, 'nightly')", (nightly_run,))
    conn.cursor().executemany(
        "INSERT INTO tasks (trace_id, span_id, status, missing) VALUES (%s, %s, %s, true)",
        [
            (nightly_run, b"\x0a" * 8, st.NONE),
            (nightly_run, b"\x0b" * 8, st.NONE),
            (unknown_run, b"\x0c" * 8, st.NONE),
        ],
    )
    conn.cursor().executemany(
        "INSERT INTO span_landing (received_ns, trace_id, span_id, name, kind, start_ns, status,"
        " resource_id, attributes, events, links)"
        " VALUES (%s, %s, %s, 'x', 1, 0, %s, 1, '{}', '[]', '[]')",
        [
            (int((NOW_S - 2.5) * S), trace, b"\x21" * 8, st.RUNNING),
            (int((NOW_S - 1) * S), trace, b"\x22" * 8, st.OK),
        ],
    )
    conn.cursor().executemany(  # three records set aside because their folds failed
        "INSERT INTO span_quarantine (landing_id, quarantined_ns, error, received_ns, trace_id,"
        " span_id, name, kind, start_ns, status, status_message, resource_id, scope, attributes,"
        " events, links, truncated)"
        " VALUES (%s, 1, 'refused', 1, %s, %s, 'x', 1, 0, 3, '', 1, '', '{}', '[]', '[]', false)",
        [(n, trace, bytes([0x30 + n]) * 8) for n in range(3)],
    )


@pytest.fixture
def known_state(clean_store_db):
    with psycopg.connect(clean_store_db) as conn:
        _load_state(conn)
    return clean_store_db


def test_the_store_families_of_a_known_database_state_are_exactly_this_text(known_state):
    with psycopg.connect(known_state) as conn:
        rows = dataclasses.replace(read_store(conn), now_s=NOW_S)
    text = render_store_text(bounded_jobs(rows, max_jobs=4, job_ttl_s=35 * 86400), read_s=0.125)
    assert text.decode() == EXPECTED


def test_no_bare_status_numbers_in_the_metrics_sql():
    """The statuses in the metrics' statements come from ``tree.status`` (its own test checks the
    other SQL sources)."""
    exporter = Path(st.__file__).parents[1]
    sources = [*sorted((exporter / "metrics").glob("*.py")), exporter / "store/metric_totals.py"]
    bare = re.compile(r"status\s*(?:=|<>|!=|IN\s*\()\s*\d|THEN\s+\d\s+ELSE\s+\d", re.I)
    found = [
        f"{path.name}: {m.group(0)}" for path in sources for m in bare.finditer(path.read_text())
    ]
    assert found == []


def test_a_store_that_cannot_be_read_shows_store_up_0_and_nothing_else():
    pool = open_pool("postgresql://postgres@127.0.0.1:1/none", max_size=1, timeout=0.2)
    try:
        text = StoreMetrics(pool).text()
    finally:
        pool.close()
    assert text.decode() == (
        "# HELP tasktree_store_up Whether tasktree could read PostgreSQL for this scrape (1) or"
        " not (0).\n"
        "# TYPE tasktree_store_up gauge\n"
        "tasktree_store_up 0\n"
    )


def test_a_table_held_by_a_lock_makes_every_scrape_say_store_up_0_within_the_wait(known_state):
    # A site's migration or a stuck session holding a table: a scrape that waited on it (and
    # the scrapes queued behind) outlasted Prometheus's timeout, and the alert was "tasktree is
    # down" instead of "tasktree cannot read its store".
    pool = open_pool(known_state, max_size=4, timeout=5)
    metrics = StoreMetrics(pool, ttl=0, wait=0.5)
    answers: list[tuple[bytes, float]] = []

    def scrape() -> None:
        started = time.monotonic()
        answers.append((metrics.text(), time.monotonic() - started))

    try:
        with psycopg.connect(known_state) as holder:
            holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            scrapes = [threading.Thread(target=scrape, daemon=True) for _ in range(3)]
            for thread in scrapes:
                thread.start()
            for thread in scrapes:
                thread.join(timeout=10)
            assert len(answers) == 3, "a scrape waited on the lock"
        for text, took in answers:
            assert b"tasktree_store_up 0" in text and took < 2.5, (took, text[:80])
        assert b"tasktree_store_up 1" in metrics.text()  # the lock gone, read again at once
    finally:
        pool.close()


EXPECTED = r"""# HELP tasktree_store_up Whether tasktree could read PostgreSQL for this scrape (1) or not (0).
# TYPE tasktree_store_up gauge
tasktree_store_up 1
# HELP tasktree_store_created_timestamp_seconds When tasktree's database was created (its first migration, Unix time): tasktree has watched jobs since, across its restarts.
# TYPE tasktree_store_created_timestamp_seconds gauge
tasktree_store_created_timestamp_seconds 1.66544e+09
# HELP tasktree_tasks_finished_total Tasks that finished, by job, task name (the first TASKTREE_METRICS_TASK_NAMES of each job; the rest are __other__) and status.
# TYPE tasktree_tasks_finished_total counter
tasktree_tasks_finished_total{job_name="__other__",status="ok",task="__other__"} 0
tasktree_tasks_finished_total{job_name="__other__",status="error",task="__other__"} 3
tasktree_tasks_finished_total{job_name="etl",status="ok",task="extract"} 2
tasktree_tasks_finished_total{job_name="etl",status="error",task="extract"} 1
tasktree_tasks_finished_total{job_name="etl",status="ok",task="load"} 1
tasktree_tasks_finished_total{job_name="etl",status="error",task="load"} 0
tasktree_tasks_finished_total{job_name="we\"ird\\job\nx",status="ok",task="t"} 1
tasktree_tasks_finished_total{job_name="we\"ird\\job\nx",status="error",task="t"} 0
# HELP tasktree_runs_finished_total Runs (root tasks) that finished, by job and status.
# TYPE tasktree_runs_finished_total counter
tasktree_runs_finished_total{job_name="__other__",status="ok"} 0
tasktree_runs_finished_total{job_name="__other__",status="error"} 1
tasktree_runs_finished_total{job_name="etl",status="ok"} 1
tasktree_runs_finished_total{job_name="etl",status="error"} 0
tasktree_runs_finished_total{job_name="nightly",status="ok"} 0
tasktree_runs_finished_total{job_name="nightly",status="error"} 0
tasktree_runs_finished_total{job_name="we\"ird\\job\nx",status="ok"} 0
tasktree_runs_finished_total{job_name="we\"ird\\job\nx",status="error"} 0
# HELP tasktree_task_duration_seconds How long finished tasks took, by job and task name.
# TYPE tasktree_task_duration_seconds histogram
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="0.01"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="0.1"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="0.5"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="1.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="5.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="15.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="30.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="60.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="300.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="900.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="1800.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="3600.0"} 0
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="7200.0"} 3
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="14400.0"} 3
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="28800.0"} 3
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="86400.0"} 3
tasktree_task_duration_seconds_bucket{job_name="__other__",task="__other__",le="+Inf"} 3
tasktree_task_duration_seconds_sum{job_name="__other__",task="__other__"} 4000.0
tasktree_task_duration_seconds_count{job_name="__other__",task="__other__"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="0.01"} 0
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="0.1"} 0
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="0.5"} 0
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="1.0"} 2
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="5.0"} 2
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="15.0"} 2
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="30.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="60.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="300.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="900.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="1800.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="3600.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="7200.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="14400.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="28800.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="86400.0"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="extract",le="+Inf"} 3
tasktree_task_duration_seconds_sum{job_name="etl",task="extract"} 21.5
tasktree_task_duration_seconds_count{job_name="etl",task="extract"} 3
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="0.01"} 0
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="0.1"} 0
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="0.5"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="1.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="5.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="15.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="30.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="60.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="300.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="900.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="1800.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="3600.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="7200.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="14400.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="28800.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="86400.0"} 1
tasktree_task_duration_seconds_bucket{job_name="etl",task="load",le="+Inf"} 1
tasktree_task_duration_seconds_sum{job_name="etl",task="load"} 0.25
tasktree_task_duration_seconds_count{job_name="etl",task="load"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="0.01"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="0.1"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="0.5"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="1.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="5.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="15.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="30.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="60.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="300.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="900.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="1800.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="3600.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="7200.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="14400.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="28800.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="86400.0"} 1
tasktree_task_duration_seconds_bucket{job_name="we\"ird\\job\nx",task="t",le="+Inf"} 1
tasktree_task_duration_seconds_sum{job_name="we\"ird\\job\nx",task="t"} 0.005
tasktree_task_duration_seconds_count{job_name="we\"ird\\job\nx",task="t"} 1
# HELP tasktree_run_duration_seconds How long finished runs (root tasks) took, by job.
# TYPE tasktree_run_duration_seconds histogram
tasktree_run_duration_seconds_bucket{job_name="__other__",le="0.01"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="0.1"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="0.5"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="1.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="5.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="15.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="30.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="60.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="300.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="900.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="1800.0"} 0
tasktree_run_duration_seconds_bucket{job_name="__other__",le="3600.0"} 1
tasktree_run_duration_seconds_bucket{job_name="__other__",le="7200.0"} 1
tasktree_run_duration_seconds_bucket{job_name="__other__",le="14400.0"} 1
tasktree_run_duration_seconds_bucket{job_name="__other__",le="28800.0"} 1
tasktree_run_duration_seconds_bucket{job_name="__other__",le="86400.0"} 1
tasktree_run_duration_seconds_bucket{job_name="__other__",le="+Inf"} 1
tasktree_run_duration_seconds_sum{job_name="__other__"} 3600.0
tasktree_run_duration_seconds_count{job_name="__other__"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="0.01"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="0.1"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="0.5"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="1.0"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="5.0"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="15.0"} 0
tasktree_run_duration_seconds_bucket{job_name="etl",le="30.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="60.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="300.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="900.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="1800.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="3600.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="7200.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="14400.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="28800.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="86400.0"} 1
tasktree_run_duration_seconds_bucket{job_name="etl",le="+Inf"} 1
tasktree_run_duration_seconds_sum{job_name="etl"} 21.75
tasktree_run_duration_seconds_count{job_name="etl"} 1
# HELP tasktree_job_last_start_timestamp_seconds When the job's latest run started (Unix time).
# TYPE tasktree_job_last_start_timestamp_seconds gauge
tasktree_job_last_start_timestamp_seconds{job_name="etl"} 1.6999997e+09
tasktree_job_last_start_timestamp_seconds{job_name="nightly"} 1.6999928e+09
# HELP tasktree_job_last_success_timestamp_seconds When a run of the job last finished ok (Unix time); absent if none ever did.
# TYPE tasktree_job_last_success_timestamp_seconds gauge
tasktree_job_last_success_timestamp_seconds{job_name="etl"} 1.69999994e+09
# HELP tasktree_job_last_failure_timestamp_seconds When a run of the job last finished in error (Unix time); absent if none ever did.
# TYPE tasktree_job_last_failure_timestamp_seconds gauge
tasktree_job_last_failure_timestamp_seconds{job_name="nightly"} 1.6999964e+09
# HELP tasktree_job_last_heartbeat_timestamp_seconds When tasktree last folded anything of the job: a task or a running task's heartbeat (Unix time).
# TYPE tasktree_job_last_heartbeat_timestamp_seconds gauge
tasktree_job_last_heartbeat_timestamp_seconds{job_name="etl"} 1.699999995e+09
tasktree_job_last_heartbeat_timestamp_seconds{job_name="nightly"} 1.69999997e+09
# HELP tasktree_job_oldest_running_run_start_timestamp_seconds When the job's oldest run with a task running now (heartbeating, not stalled) started (Unix time); absent when none is: a run that hangs while later runs of the job come and go shows here.
# TYPE tasktree_job_oldest_running_run_start_timestamp_seconds gauge
tasktree_job_oldest_running_run_start_timestamp_seconds{job_name="etl"} 1.6999928e+09
# HELP tasktree_tasks_running Tasks running now, by job.
# TYPE tasktree_tasks_running gauge
tasktree_tasks_running{job_name="__other__"} 1
tasktree_tasks_running{job_name="etl"} 4
tasktree_tasks_running{job_name="nightly"} 0
tasktree_tasks_running{job_name="we\"ird\\job\nx"} 0
# HELP tasktree_tasks_stalled Tasks that stopped sending heartbeats (TASKTREE_STALL_AFTER) without finishing, by job.
# TYPE tasktree_tasks_stalled gauge
tasktree_tasks_stalled{job_name="__other__"} 1
tasktree_tasks_stalled{job_name="etl"} 1
tasktree_tasks_stalled{job_name="nightly"} 2
tasktree_tasks_stalled{job_name="we\"ird\\job\nx"} 0
# HELP tasktree_tasks_stalled_last_heartbeat_timestamp_seconds The newest last heartbeat among the job's stalled tasks (Unix time): when the latest stall began.
# TYPE tasktree_tasks_stalled_last_heartbeat_timestamp_seconds gauge
tasktree_tasks_stalled_last_heartbeat_timestamp_seconds{job_name="__other__"} 1.6999999e+09
tasktree_tasks_stalled_last_heartbeat_timestamp_seconds{job_name="etl"} 1.69999988e+09
tasktree_tasks_stalled_last_heartbeat_timestamp_seconds{job_name="nightly"} 1.6999996e+09
# HELP tasktree_tasks_missing_parent Placeholders for parent tasks that were named by a child but not (yet) received, by job.
# TYPE tasktree_tasks_missing_parent gauge
tasktree_tasks_missing_parent{job_name=""} 1
tasktree_tasks_missing_parent{job_name="nightly"} 2
# HELP tasktree_metrics_max_jobs Jobs with their own job_name in /metrics at most (TASKTREE_METRICS_MAX_JOBS).
# TYPE tasktree_metrics_max_jobs gauge
tasktree_metrics_max_jobs 4
# HELP tasktree_metrics_folded_jobs Jobs beyond TASKTREE_METRICS_MAX_JOBS, counted as job_name="__other__": no job alert watches them (they have no timestamps of their own).
# TYPE tasktree_metrics_folded_jobs gauge
tasktree_metrics_folded_jobs 1
# HELP tasktree_ingest_backlog_spans Spans received and stored but not yet folded into the tree.
# TYPE tasktree_ingest_backlog_spans gauge
tasktree_ingest_backlog_spans 2
# HELP tasktree_ingest_lag_seconds Age of the oldest received span not yet folded into the tree (0 when the tree is up to date).
# TYPE tasktree_ingest_lag_seconds gauge
tasktree_ingest_lag_seconds 2.5
# HELP tasktree_quarantined_spans Spans set aside because folding them failed (`tasktree quarantine` lists them and why).
# TYPE tasktree_quarantined_spans gauge
tasktree_quarantined_spans 3
# HELP tasktree_metrics_store_read_seconds How long the last read of the PostgreSQL-backed metrics took.
# TYPE tasktree_metrics_store_read_seconds gauge
tasktree_metrics_store_read_seconds 0.125
"""  # noqa: E501 (the text format's lines are as long as they are)
