"""Folds in a store that keeps many days: each run's tasks stay in its own day's partition.

Under the default retention (keep everything) the store gains a ``tasks`` partition a day, and a
run that goes on for days keeps receiving records into the partition of the day it started.  A
batch can hold runs of several days at once; each must find its stored tasks and summary there.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tasktree.exporter.store import partitions
from tasktree.exporter.store.fold import sweep_stalled
from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid
from .fold_support import run, tree

PAST_DAYS = 40


@pytest.fixture
def conn(private_db):
    """A store that has kept PAST_DAYS days of partitions."""
    with psycopg.connect(private_db, autocommit=True) as conn:
        today = partitions.today()
        for day in range(today - PAST_DAYS, today):
            conn.execute("SELECT tasktree_ensure_day_partition(%s)", (day,))
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
