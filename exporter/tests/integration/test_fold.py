"""Folding landed spans into the tree: statuses, placeholders, rollups, run summaries."""

from __future__ import annotations

import time

import psycopg
import pytest

from tasktree.exporter.store.fold import fold_batch, sweep_stalled
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid
from .fold_support import run, tree

NOW = time.time_ns()


@pytest.fixture
def conn(clean_store_db):
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        yield conn


def test_children_before_parent_end_up_under_it_with_rollups(conn):
    t = tid(1)
    deliver(
        conn,
        [span(t, sid(3), sid(2), status=st.ERROR, start=30), span(t, sid(4), sid(2), start=40)],
        [span(t, sid(2), sid(1), start=20)],
        [span(t, sid(1), None, name="root", start=10, end=100)],
    )
    assert tree(conn, t) == {
        sid(1): (None, False, st.OK, 1, 2, 1, 0, 0),
        sid(2): (sid(1), False, st.OK, 2, 1, 1, 0, 0),
        sid(3): (sid(2), False, st.ERROR, 0, 0, 0, 0, 0),
        sid(4): (sid(2), False, st.OK, 0, 0, 0, 0, 0),
    }
    assert run(conn, t) == ("test-job", "root", st.OK, 10, 100, 3, 1, 0, 0, 4, 1)


def test_missing_parent_is_a_placeholder_at_the_top_until_it_arrives(conn):
    t = tid(2)
    deliver(conn, [span(t, sid(5), sid(9), start=50)])
    assert tree(conn, t)[sid(9)] == (None, True, st.NONE, 1, 1, 0, 0, 0)
    deliver(conn, [span(t, sid(9), None, start=5, end=60)])
    assert tree(conn, t)[sid(9)] == (None, False, st.OK, 1, 1, 0, 0, 0)


def test_final_record_beats_a_later_running_snapshot(conn):
    t = tid(3)
    deliver(
        conn,
        [span(t, sid(1), None, start=10, end=20)],
        [span(t, sid(1), None, status=st.RUNNING, start=10, heartbeat=NOW)],
    )
    assert tree(conn, t)[sid(1)][2] == st.OK
    assert run(conn, t)[2] == st.OK


def test_running_task_turns_stalled_when_heartbeats_stop_and_back_with_a_fresh_one(conn):
    t = tid(4)
    old = NOW - 120 * 10**9
    deliver(
        conn,
        [
            span(t, sid(1), None, status=st.RUNNING, start=old, heartbeat=old + 1),
            span(t, sid(2), sid(1), status=st.RUNNING, start=old, heartbeat=old + 1),
        ],
        stall_after=3600,
    )
    assert tree(conn, t)[sid(1)][2] == st.RUNNING
    assert sweep_stalled(conn, stall_after_s=60).records == 2
    assert tree(conn, t)[sid(1)] == (None, False, st.STALLED, 1, 0, 0, 0, 1)
    assert run(conn, t)[2] == st.STALLED
    deliver(
        conn,
        [span(t, sid(2), sid(1), status=st.RUNNING, start=old, heartbeat=time.time_ns())],
        stall_after=60,
    )
    assert tree(conn, t)[sid(1)] == (None, False, st.STALLED, 1, 0, 0, 1, 0)


def test_finished_leaves_are_reported_in_the_duration_buckets_one_task_at_a_time_would_get(conn):
    """Stored leaves are grouped in SQL; the groups must add up to what counting each task does."""
    import bisect

    from tasktree.exporter.store.fold import DURATION_BUCKETS

    t = tid(6)
    seconds = [0, 0.01, 0.0100001, 1.0, 1.0, 0.999999999, 2.5, 86400.0, 90000.0, 3 * 86400.0]
    leaves = [
        span(
            t,
            sid(10 + i),
            sid(1),
            start=10**9,
            end=10**9 + round(s * 1e9),
            status=st.ERROR if i % 3 == 0 else st.OK,
            name=f"n{i % 2}",
        )
        for i, s in enumerate(seconds)
    ]
    land(
        conn,
        [span(t, sid(1), None, status=st.RUNNING, start=10, heartbeat=NOW), *leaves],
        ResourceIds(),
        NOW,
    )
    finished = fold_batch(conn, limit=100, stall_after_s=3600).finished

    def per_bucket(items):
        out = {}
        for key, bucket, count, total in items:
            n, s = out.get((key, bucket), (0, 0.0))
            out[(key, bucket)] = (n + count, s + total)
        return {k: (n, round(s, 6)) for k, (n, s) in out.items()}

    reported = per_bucket(
        ((f.job, f.name, f.status), f.bucket, f.count, f.duration_s) for f in finished
    )
    expected = per_bucket(
        (
            ("test-job", s.name, s.status),
            bisect.bisect_left(DURATION_BUCKETS, (s.end_ns - s.start_ns) / 1e9),
            1,
            (s.end_ns - s.start_ns) / 1e9,
        )
        for s in leaves
    )
    assert reported == expected
    assert sum(f.count for f in finished) == len(seconds)


def test_fold_reports_each_task_once_when_it_finishes_and_keeps_job_timestamps(conn):
    t = tid(5)
    land(
        conn,
        [
            span(t, sid(1), None, status=st.RUNNING, start=10, heartbeat=NOW, name="root"),
            span(t, sid(2), sid(1), status=st.ERROR, start=20, end=20 + 3 * 10**9, name="step"),
        ],
        ResourceIds(),
        NOW,
    )
    first = fold_batch(conn, limit=100, stall_after_s=3600)
    assert [(f.job, f.name, f.status, f.duration_s) for f in first.finished] == [
        ("test-job", "step", st.ERROR, 3.0)
    ]
    land(
        conn,
        [
            span(t, sid(1), None, start=10, end=10 + 10**9, name="root"),
            span(t, sid(2), sid(1), status=st.ERROR, start=20, end=20 + 3 * 10**9, name="step"),
        ],
        ResourceIds(),
        NOW,
    )
    second = fold_batch(conn, limit=100, stall_after_s=3600)
    assert [(f.name, f.status) for f in second.finished] == [
        ("root", st.OK)
    ]  # the duplicate is not
    job = conn.execute(
        "SELECT last_start_ns, last_success_ns, last_failure_ns, last_seen_ns IS NOT NULL"
        " FROM jobs WHERE job = 'test-job'"
    ).fetchone()
    assert job == (10, 10 + 10**9, None, True)


def test_a_run_stamped_by_a_clock_ahead_does_not_hide_the_jobs_later_failure(conn):
    # One host's clock a day ahead: its ok run must not keep the job "succeeded" for a day,
    # which would hide every failure after it (TasktreeRunFailed compares the two).
    day = 86_400 * 10**9
    ahead = time.time_ns() + day
    land(conn, [span(tid(7), sid(1), None, start=ahead, end=ahead + 10**9)], ResourceIds(), NOW)
    fold_batch(conn, limit=100, stall_after_s=3600)
    before_failure = time.time_ns()
    failed = time.time_ns()
    land(conn, [span(tid(8), sid(1), None, status=st.ERROR, start=failed, end=failed + 1)],
         ResourceIds(), NOW)  # fmt: skip
    fold_batch(conn, limit=100, stall_after_s=3600)
    start, success, failure = conn.execute(
        "SELECT last_start_ns, last_success_ns, last_failure_ns FROM jobs WHERE job = 'test-job'"
    ).fetchone()
    assert success <= before_failure  # taken as when it was folded
    assert failure > success and start == failed  # the latest start is the failed run's


def test_a_leaf_past_the_depth_limit_is_kept_at_the_top_with_its_link_refused(conn):
    """A new task's one record under a stored parent is written set-based (store/fold.py); the
    depth limit still holds for it, as for a record folded one by one."""
    t = tid(6)
    chain = [span(t, sid(1), None, start=1)] + [
        span(t, sid(i), sid(i - 1), start=i) for i in range(2, 4)
    ]
    deliver(conn, chain, max_depth=3)
    land(
        conn,
        [span(t, sid(4), sid(3), status=st.ERROR, start=4), span(t, sid(5), sid(2), start=5)],
        ResourceIds(),
        NOW,
    )
    assert fold_batch(conn, limit=100, stall_after_s=3600, max_depth=3).records == 2
    nodes = tree(conn, t)
    assert nodes[sid(4)] == (None, False, st.ERROR, 0, 0, 0, 0, 0)  # a fourth level: refused
    assert nodes[sid(5)][0] == sid(2)  # a third level: taken
    assert nodes[sid(1)] == (None, False, st.OK, 1, 3, 0, 0, 0)
    refused = conn.execute(
        "SELECT refused_parent_span_id, refused_reason FROM tasks"
        " WHERE trace_id = %s AND span_id = %s",
        (t, sid(4)),
    ).fetchone()
    assert (bytes(refused[0]), refused[1]) == (sid(3), 2)
    assert run(conn, t)[5:11] == (4, 1, 0, 0, 5, 2)


def test_leaves_of_a_parent_not_yet_received_hang_under_its_placeholder_until_it_comes(conn):
    t = tid(7)
    deliver(
        conn, [span(t, sid(2), sid(1), start=2), span(t, sid(3), sid(1), status=st.ERROR, start=3)]
    )
    assert tree(conn, t)[sid(1)] == (None, True, st.NONE, 2, 1, 1, 0, 0)
    assert run(conn, t)[9:] == (2, 0)  # two tasks, no root yet
    deliver(
        conn,
        [span(t, sid(1), None, name="root", start=1, end=10), span(t, sid(4), sid(3), start=4)],
    )
    assert tree(conn, t) == {
        sid(1): (None, False, st.OK, 2, 2, 1, 0, 0),
        sid(2): (sid(1), False, st.OK, 0, 0, 0, 0, 0),
        sid(3): (sid(1), False, st.ERROR, 1, 1, 0, 0, 0),
        sid(4): (sid(3), False, st.OK, 0, 0, 0, 0, 0),
    }
    assert run(conn, t) == ("test-job", "root", st.OK, 1, 10, 3, 1, 0, 0, 4, 1)
