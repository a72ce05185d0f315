"""Retention drops whole day partitions, and never cuts a run that is still going."""

from __future__ import annotations

import time

import psycopg
import pytest

from tasktree.exporter.store import partitions
from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid

TODAY = partitions.today()


@pytest.fixture
def conn(clean_store_db):
    """The store database with no partitions of past days (other tests may have left some)."""
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c"
                                    " ON c.oid = i.inhrelid WHERE i.inhparent = 'tasks'::regclass"
                                    " AND c.relname ~ '^tasks_d[0-9]+$'").fetchall():
            if int(name[len("tasks_d"):]) < TODAY:
                conn.execute(f'DROP TABLE "{name}"')
        partitions._ensured.clear()
        yield conn


def deliver_on(conn, day: int, monkeypatch, *spans) -> None:
    """Fold ``spans`` as if they were first received on ``day``."""
    with monkeypatch.context() as m:
        m.setattr(partitions, "today", lambda now_ns=None: day)
        deliver(conn, list(spans))


def age_runs(conn, days: int, traces) -> None:
    """Pretend the runs last received something ``days`` ago."""
    conn.execute("UPDATE runs SET last_received_ns = last_received_ns - %s * 86400 * 10^9::bigint"
                 " WHERE trace_id = ANY(%s)", (days, traces))


def run_task_counts(conn) -> dict[bytes, int]:
    return {bytes(t): n for t, n in conn.execute("SELECT trace_id, count(*) FROM tasks GROUP BY 1")}


def test_expired_days_are_dropped_whole_while_a_run_still_going_keeps_its_day(conn, monkeypatch):
    now = time.time_ns()
    finished, also_finished, going, recent = tid(1), tid(2), tid(3), tid(4)
    deliver_on(conn, TODAY - 40, monkeypatch,
               span(finished, sid(1)), span(finished, sid(2), sid(1)),
               span(also_finished, sid(1), status=st.ERROR))
    deliver_on(conn, TODAY - 39, monkeypatch,
               span(going, sid(1), status=st.RUNNING, heartbeat=now), span(going, sid(2), sid(1)))
    deliver_on(conn, TODAY, monkeypatch, span(recent, sid(1)))
    age_runs(conn, days=40, traces=[finished, also_finished, going])
    for trace in (finished, going):  # a task each refused over the run cap, counted on the run
        conn.execute("INSERT INTO refused_over_cap VALUES (%s, %s)", (trace, sid(9)))

    dropped = partitions.drop_expired(conn, retention_days=30)

    assert dropped == [TODAY - 40, TODAY - 38]  # -38: the empty partition made ahead of -39
    assert run_task_counts(conn) == {going: 2, recent: 1}
    runs = {bytes(t) for (t,) in conn.execute("SELECT trace_id FROM runs")}
    assert runs == {going, recent}
    assert conn.execute("SELECT to_regclass(%s)", (f"tasks_d{TODAY - 40}",)).fetchone()[0] is None
    refused = {bytes(t) for (t,) in conn.execute("SELECT trace_id FROM refused_over_cap")}
    assert refused == {going}  # gone with its run


def test_nothing_is_dropped_within_the_retention_window(conn, monkeypatch):
    deliver_on(conn, TODAY - 5, monkeypatch, span(tid(5), sid(1)))
    age_runs(conn, days=5, traces=[tid(5)])
    assert partitions.drop_expired(conn, retention_days=30) == []
    assert run_task_counts(conn) == {tid(5): 1}


def test_rows_of_a_day_caught_by_the_default_partition_expire_with_their_runs(conn, monkeypatch):
    day = TODAY - 50
    partitions.ensure_day(conn, day)
    conn.execute(f"DROP TABLE tasks_d{day}")  # as if that day's partition had never been made
    with monkeypatch.context() as m:
        m.setattr(partitions, "ensure_current", lambda conn: None)
        deliver_on(conn, day, monkeypatch, span(tid(6), sid(1)))
    age_runs(conn, days=50, traces=[tid(6)])
    assert conn.execute("SELECT count(*) FROM tasks_default").fetchone()[0] == 1
    assert partitions.drop_expired(conn, retention_days=30) == [day]
    assert run_task_counts(conn) == {}
