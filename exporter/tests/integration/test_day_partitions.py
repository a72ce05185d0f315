"""Folds and reads in a store that keeps many days: each run's tasks stay in its own day's
partition.

Under the default retention (keep everything) the store gains a ``tasks`` partition a day, and a
run that goes on for days keeps receiving records into the partition of the day it started.  A
batch can hold runs of several days at once; each must find its stored tasks and summary there,
and a fold must not reach the other days' partitions: reaching them all (planned, locked and set
up at every fold) made a small fold about 15 times dearer with a year of days.  The same holds for
the reads behind the API and the pages (a run page took 75 ms instead of 3), and for the stall
sweep, which reads only the days whose runs have running tasks.  The locks a fold, a read or a
sweep holds show which partitions it reached.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tasktree.exporter import ingest
from tasktree.exporter.app import create_app
from tasktree.exporter.metrics import store_metrics
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import partitions, queries
from tasktree.exporter.store.fold import fold_batch, sweep_stalled
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.store.pool import open_pool
from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid
from .fold_support import run, tree

PAST_DAYS = 40

_LOCKED_DAY_PARTITIONS = """
SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND c.relname ~ '^tasks_d[0-9]+$'
"""


@pytest.fixture
def conn(private_db):
    """A store that has kept PAST_DAYS days of partitions."""
    with psycopg.connect(private_db, autocommit=True) as conn:
        today = partitions.today()
        for day in range(today - PAST_DAYS, today):
            partitions.ensure_day(conn, day)
        yield conn


def move_run_to_day(conn, trace: bytes, day: int) -> None:
    """Make ``trace`` a run first received on ``day`` (its tasks move to that day's partition)."""
    with conn.transaction():
        conn.execute("UPDATE tasks SET run_day = %s WHERE trace_id = %s", (day, trace))
        conn.execute("UPDATE runs SET run_day = %s WHERE trace_id = %s", (day, trace))


def test_a_batch_of_runs_of_three_days_folds_each_in_its_day(conn):
    old, older, new, now = tid(2), tid(3), tid(4), time.time_ns()
    deliver(conn, [span(old, sid(1), None, name="old-root", start=10, end=100),
                   span(older, sid(1), None, name="older-root", start=10, end=100)])
    move_run_to_day(conn, old, partitions.today() - 3)
    move_run_to_day(conn, older, partitions.today() - 5)
    # One batch: a child and a running task of one earlier run, a second top-level task of
    # another (its run's summary read back from its stored top-level tasks), a run of today.
    deliver(conn, [span(old, sid(2), sid(1), start=20),
                   span(old, sid(3), sid(1), status=st.RUNNING, start=30, heartbeat=now),
                   span(older, sid(2), None, name="second", start=20, end=90),
                   span(new, sid(1), None, name="new-root", start=10, end=50)])
    assert tree(conn, old)[sid(1)] == (None, False, st.OK, 2, 1, 0, 1, 0)
    assert run(conn, old)[:3] == ("test-job", "old-root", st.OK)
    assert run(conn, older) == ("test-job", "older-root", st.OK, 10, 100, 2, 0, 0, 0, 2, 2)
    assert run(conn, new)[:3] == ("test-job", "new-root", st.OK)
    days = conn.execute("SELECT trace_id, run_day FROM tasks GROUP BY 1, 2").fetchall()
    assert sorted(days) == sorted([(old, partitions.today() - 3), (older, partitions.today() - 5),
                                   (new, partitions.today())])
    # The stall sweep, too, writes into the run's own day.
    assert sweep_stalled(conn, stall_after_s=0.0).records == 1
    assert tree(conn, old)[sid(3)][2] == st.STALLED
    assert tree(conn, old)[sid(1)] == (None, False, st.OK, 2, 1, 0, 0, 1)


def test_a_fold_locks_no_partition_of_another_day(conn):
    t, now = tid(1), time.time_ns()
    # Children first (their parent a placeholder), one failed and one running, as is common;
    # and a running task under a parent that no other record names.
    deliver(conn, [span(t, sid(3), sid(2), status=st.ERROR, start=30),
                   span(t, sid(4), sid(2), status=st.RUNNING, start=40, heartbeat=now),
                   span(t, sid(5), sid(9), status=st.RUNNING, start=50, heartbeat=now)])
    # Then their parent and the root: the placeholder filled and moved with its flagged tasks,
    # the chains loaded, the run's summary read back from its stored top-level tasks; and the
    # running task's final record naming the root as its parent, so its placeholder goes.
    land(conn, [span(t, sid(2), sid(1), start=20), span(t, sid(1), None, name="root", start=10),
                span(t, sid(5), sid(1), start=50)], ResourceIds(), time.time_ns())
    # As the service's statements run, once prepared: a plan for any day, pruned only as it runs
    # (and then every partition in it is locked first).
    conn.execute("SET plan_cache_mode = force_generic_plan")
    with conn.transaction():
        assert fold_batch(conn, limit=10_000, stall_after_s=3600.0).records == 3
        locked = {name for (name,) in conn.execute(_LOCKED_DAY_PARTITIONS)}
    today = partitions.today()
    assert locked <= {f"tasks_d{today}", f"tasks_d{today + 1}"}, sorted(locked)
    assert tree(conn, t)[sid(2)][:3] == (sid(1), False, st.OK)
    assert tree(conn, t)[sid(5)][:3] == (sid(1), False, st.OK) and sid(9) not in tree(conn, t)
    assert run(conn, t)[2] == st.OK


def a_run_of_an_earlier_day(conn, trace: bytes, day: int) -> None:
    """A root, its failed child and that child's running child, first received on ``day``; and a
    run of today beside it."""
    deliver(conn, [span(trace, sid(1), None, name="root-task", start=10, end=100),
                   span(trace, sid(2), sid(1), name="child-task", status=st.ERROR, start=20),
                   span(trace, sid(3), sid(2), name="leaf-task", status=st.RUNNING, start=30,
                        heartbeat=time.time_ns()),
                   span(tid(9), sid(1), None, name="today's run", start=10, end=100)])
    move_run_to_day(conn, trace, day)


def test_reads_of_a_run_lock_no_partition_of_another_day(conn):
    t, day = tid(1), partitions.today() - 3
    a_run_of_an_earlier_day(conn, t, day)
    with conn.transaction():  # the locks of every read stay until its end
        assert [r["name"] for r in queries.run_roots(conn, t).rows] == ["root-task"]
        assert queries.get_task(conn, t, sid(2))["status"] == st.ERROR
        assert queries.task_exists(conn, t, sid(3))
        assert [r["span_id"] for r in queries.children(conn, t, sid(1)).rows] == [sid(2)]
        failed = queries.subtree_tasks(conn, t, None, st.ERROR, oldest_first=True)
        assert [r["span_id"] for r in failed.rows] == [sid(2)]
        running = queries.subtree_tasks(conn, t, sid(2), st.RUNNING)
        assert [r["span_id"] for r in running.rows] == [sid(3)]
        locked = {name for (name,) in conn.execute(_LOCKED_DAY_PARTITIONS)}
    assert locked == {f"tasks_d{day}"}


def test_the_stall_sweep_reads_only_the_days_with_running_tasks(conn):
    t, day = tid(1), partitions.today() - 3
    a_run_of_an_earlier_day(conn, t, day)  # its leaf runs; today's run is over
    assert partitions.running_days(conn) == [day]
    with conn.transaction():
        assert sweep_stalled(conn, stall_after_s=0.0).records == 1
        locked = {name for (name,) in conn.execute(_LOCKED_DAY_PARTITIONS)}
    assert locked == {f"tasks_d{day}"}
    assert queries.get_task(conn, t, sid(3))["status"] == st.STALLED
    assert run(conn, t)[7:9] == (0, 1)  # the run counts it stalled, no longer running
    assert partitions.running_days(conn) == []
    with conn.transaction():  # nothing runs now: the sweep reads no day at all
        assert sweep_stalled(conn, stall_after_s=0.0).records == 0
        assert not conn.execute(_LOCKED_DAY_PARTITIONS).fetchall()


@pytest.mark.parametrize("days_ago", [3, PAST_DAYS + 10], ids=["own partition", "default one"])
def test_the_api_and_the_pages_show_a_run_of_an_earlier_day(conn, private_db, days_ago):
    """A day with a partition of its own, and one without (its rows in the default partition, as
    for a day older than the partitions, or before its partition was made)."""
    t = tid(1)
    a_run_of_an_earlier_day(conn, t, partitions.today() - days_ago)
    in_default = conn.execute("SELECT count(*) FROM tasks_default WHERE trace_id = %s", (t,))
    assert in_default.fetchone()[0] == (3 if days_ago > PAST_DAYS else 0)
    pool = open_pool(private_db, max_size=2)
    try:
        client = create_app(Settings(), pool).test_client()
        run, page = f"/api/runs/{t.hex()}", f"/runs/{t.hex()}"
        child, task, leaf, absent = sid(1).hex(), sid(2).hex(), sid(3).hex(), sid(8).hex()
        assert [r["name"] for r in client.get(run).json["roots"]] == ["root-task"]
        assert client.get(f"{run}/tasks/{task}").json["status"] == "error"
        children = client.get(f"{run}/tasks/{child}/children").json["children"]
        assert [c["span_id"] for c in children] == [task]
        failed = client.get(f"{run}/tasks?status=error").json["tasks"]
        assert [f["span_id"] for f in failed] == [task]
        running = client.get(f"{run}/tasks/{task}/subtree?status=running").json["tasks"]
        assert [r["span_id"] for r in running] == [leaf]
        # The pages: a subtree with its breadcrumbs, a task's page, a list of failures.
        for url in (f"{page}?node={leaf}", f"{page}/tasks/{leaf}"):
            html = client.get(url).get_data(as_text=True)
            assert "root-task" in html and "child-task" in html and "leaf-task" in html, url
        html = client.get(f"{page}/tasks?status=error&node={child}").get_data(as_text=True)
        assert "child-task" in html
        # A run that is not stored, or a task not in the run, is "not found" on every route.
        for url in (f"/api/runs/{tid(7).hex()}", f"/api/runs/{tid(7).hex()}/tasks?status=error",
                    f"{run}/tasks/{absent}", f"{run}/tasks/{absent}/children",
                    f"{page}/tasks/{absent}", f"{page}?node={absent}"):
            assert client.get(url).status_code == 404, url
    finally:
        pool.close()


def test_at_its_cap_a_run_of_an_earlier_day_keeps_its_tasks_records(conn, private_db):
    """Ingest's check of a full run's spans reads the run's day partition, and only that one."""
    t, day = tid(1), partitions.today() - 3
    a_run_of_an_earlier_day(conn, t, day)  # 3 tasks
    pool = open_pool(private_db, max_size=2)
    try:
        batch = DecodedBatch([span(t, sid(3), sid(2), name="leaf-task", start=30, end=40),
                              span(t, sid(4), sid(2), name="a new task", start=50)])
        ingest.Ingestor(pool, Settings(max_spans_per_run=3))(batch)
    finally:
        pool.close()
    assert batch.rejected == 1 and [s.span_id for s in batch.spans] == [sid(3)]
    deliver(conn)  # folds what was landed
    assert tree(conn, t)[sid(3)][2] == st.OK and sid(4) not in tree(conn, t)
    with conn.transaction():
        kept = ingest._kept_spans(conn, batch.spans, {t: day})
        locked = {name for (name,) in conn.execute(_LOCKED_DAY_PARTITIONS)}
    assert kept == {(t, sid(3))} and locked == {f"tasks_d{day}"}


_LOCKED_TASKS_RELATIONS = """
SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND c.relname LIKE 'tasks%'
"""


def test_the_lock_demand_is_what_a_statement_over_every_day_locks(conn):
    demand, per_slot, slots = partitions.lock_demand(conn)
    with conn.transaction():
        conn.execute(store_metrics.LIVE).fetchall()  # reads every day's partition
        locked = conn.execute(_LOCKED_TASKS_RELATIONS).fetchone()[0]
    assert locked == demand > 8 * PAST_DAYS  # each day's partition and its 7 indexes
    assert per_slot >= 64 and slots >= 100  # this server's settings: not crowded at 40 days
    assert not partitions.warn_when_crowded(demand, per_slot, slots)


def test_a_store_whose_days_take_half_the_lock_table_is_warned_about(caplog):
    assert not partitions.warn_when_crowded(3200, 64, 100)
    assert not caplog.records
    assert partitions.warn_when_crowded(3300, 64, 100)
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert "locks 3300 tables and indexes" in message and "6400" in message
    assert "TASKTREE_RETENTION_DAYS" in message and "max_locks_per_transaction to 132" in message
