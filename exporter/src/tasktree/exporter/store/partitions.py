"""Day partitions of ``tasks``: created ahead of need, dropped whole when they expire.

A run belongs to the day it was first received (``runs.run_day``, Unix days, UTC) and all its
tasks live in that day's partition, so retention removes whole runs.  A partition is dropped only
when it is older than the retention *and* none of its runs is still going: a run that is still
running, or that received anything within the retention window, keeps its partition.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from tasktree.exporter.store.pool import scalar
from tasktree.exporter.tree.status import RUNNING

logger = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9
_ensured: set[tuple[Any, ...]] = set()  # (database, day) whose partition exists (this process)
_ensured_lock = threading.Lock()

# Creates the partition of a day unless it exists, under its advisory lock (migration 0005).
_ENSURE_DAY = "SELECT tasktree_ensure_day_partition(%s)"
_DAY_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'tasks'::regclass AND c.relname ~ '^tasks_d[0-9]+$'
"""
_DAYS_IN_DEFAULT = "SELECT DISTINCT run_day FROM tasks_default"
# A day's rows in batches of at most %s (see _delete_in_batches).
_DELETE_STRAY_TASKS_OF_DAY = """
DELETE FROM tasks_default
WHERE ctid IN (SELECT ctid FROM tasks_default WHERE run_day = %s LIMIT %s)
"""
_DELETE_REFUSED_OF_DAY = """
DELETE FROM refused_over_cap WHERE ctid IN (
    SELECT s.ctid FROM refused_over_cap s JOIN runs r USING (trace_id)
    WHERE r.run_day = %s LIMIT %s
)
"""
_DELETE_RUNS_OF_DAY = """
DELETE FROM runs WHERE trace_id IN (SELECT trace_id FROM runs WHERE run_day = %s LIMIT %s)
"""

# A day's runs that keep its partition: still running (a stalled run does not), or heard from
# since the cutoff.
_HAS_LIVE_RUNS = f"""
SELECT EXISTS (SELECT 1 FROM runs WHERE run_day = %s
               AND (status = {RUNNING:d} OR last_received_ns >= %s))
"""  # noqa: S608 (a constant)


TASKS_OF_DAY = "{tasks_of_day}"
"""Where a statement names one day's partition of ``tasks``; ``of_day`` fills it in.

For statements that join tasks to a batch on ``run_day``: through the parent table a join keeps
every day partition in the plan, planned or locked and set up at each run, so a small fold cost
about 15 times as much with a year of days (365 partitions) as with one.  Naming the partition
keeps the join's conditions as they are (a constant day would let the planner scan the whole
partition by its primary key, a plan that stayed cached while the day's partition grew)."""

_HAS_PARTITION = "SELECT to_regclass(%s) IS NOT NULL"

# The distinct days of the runs with running tasks, as a loose scan of the partial index
# runs_running_day (migration 0013): one descent a day, however many of its runs are running.
_DAYS_WITH_RUNNING = """
WITH RECURSIVE d (day) AS (
    (SELECT run_day FROM runs WHERE n_running > 0 ORDER BY run_day LIMIT 1)
    UNION ALL
    SELECT (SELECT run_day FROM runs WHERE n_running > 0 AND run_day > d.day
            ORDER BY run_day LIMIT 1)
    FROM d WHERE d.day IS NOT NULL
)
SELECT day FROM d WHERE day IS NOT NULL
"""

# The locks a statement over every day of ``tasks`` takes (the task search, /metrics' live
# tasks and placeholders): the parent, and each partition with all its indexes (the planner
# opens them all); then what PostgreSQL's shared lock table is sized by:
# max_locks_per_transaction for each connection slot, all sessions together.
_LOCK_DEMAND = """
SELECT 1 + (SELECT count(*) FROM pg_inherits WHERE inhparent = 'tasks'::regclass)
         + (SELECT count(*) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid
            WHERE i.inhparent = 'tasks'::regclass),
       current_setting('max_locks_per_transaction')::int,
       current_setting('max_connections')::int
       + current_setting('max_prepared_transactions')::int
"""


def _database(conn: psycopg.Connection) -> tuple[Any, ...]:
    """The key of ``conn``'s database in ``_ensured``."""
    return (conn.info.host, conn.info.port, conn.info.dbname)


def of_day(conn: psycopg.Connection, statement: str, day: int) -> str:
    """``statement`` with its ``TASKS_OF_DAY`` naming ``day``'s partition, or ``tasks`` itself
    for a day without one (its rows are in the default partition)."""
    name, database = f"tasks_d{int(day)}", _database(conn)
    with _ensured_lock:
        known = (database, day) in _ensured
    if not known:
        if not scalar(conn, _HAS_PARTITION, (name,)):
            name = "tasks"
        else:
            with _ensured_lock:
                _ensured.add((database, day))
    return statement.replace(TASKS_OF_DAY, sql.Identifier(name).as_string(conn))


def today(now_ns: int | None = None) -> int:
    """The current Unix day (UTC)."""
    return (now_ns if now_ns is not None else time.time_ns()) // _DAY_NS


def ensure_current(conn: psycopg.Connection) -> None:
    """Make sure today's and tomorrow's partitions exist (cheap after the first call of a day).

    Runs in its own short transaction: creating a partition briefly locks ``tasks``, so it must
    never happen inside a fold that holds other locks.
    """
    day, database = today(), _database(conn)
    with _ensured_lock:
        missing = [d for d in (day, day + 1) if (database, d) not in _ensured]
    for d in missing:
        ensure_day(conn, d)
        with _ensured_lock:
            _ensured.add((database, d))
    if missing:  # at start, and once a day: the store keeps one more day each day
        warn_when_crowded(*lock_demand(conn))


def lock_demand(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(locks a statement over every day of ``tasks`` takes, ``max_locks_per_transaction``,
    connection slots): PostgreSQL's shared lock table is sized for the product of the last two."""
    row = conn.execute(_LOCK_DEMAND).fetchone()
    assert row is not None
    demand, per_slot, slots = row
    return int(demand), int(per_slot), int(slots)


def warn_when_crowded(demand: int, per_slot: int, slots: int) -> bool:
    """Log a warning, and return True, when one statement over every day takes more than half
    the lock table: a few of them at once (searches, a /metrics scrape) then fail with "out of
    shared memory" (measured: 730 days kept, 4 at once)."""
    capacity = per_slot * slots
    if 2 * demand <= capacity:
        return False
    enough = -(-4 * demand // slots)  # a quarter of the table for one statement, rounded up
    logger.warning(
        "a statement over every day of tasks (the task search, /metrics) locks "
        "%d tables and indexes, more than half of the %d locks PostgreSQL's lock table is sized "
        "for (max_locks_per_transaction %d x %d connection slots); a few at once will fail with "
        "'out of shared memory'. Keep fewer days (TASKTREE_RETENTION_DAYS), or set "
        "max_locks_per_transaction to %d or more in postgresql.conf (then restart PostgreSQL)",
        demand,
        capacity,
        per_slot,
        slots,
        enough,
    )
    return True


def running_days(conn: psycopg.Connection) -> list[int]:
    """The days whose runs have running tasks, in order: the only partitions the stall sweep
    reads (``run_day = ANY(days)``, planned for its values), whatever the number of days kept.

    A run's counts are written in the transaction that writes its tasks, so a task committed
    running is in a day listed by any later call.
    """
    return [day for (day,) in conn.execute(_DAYS_WITH_RUNNING)]


def ensure_day(conn: psycopg.Connection, day: int) -> None:
    """Create ``day``'s partition unless it exists, in a short transaction of its own."""
    with conn.transaction():
        conn.execute(_ENSURE_DAY, (day,))


def drop_expired(
    conn: psycopg.Connection, retention_days: int, *, now_ns: int | None = None, batch: int = 5000
) -> list[int]:
    """Drop the day partitions older than ``retention_days`` whose runs are all over.

    Returns the days dropped.  Their runs' summary rows are deleted in short batches.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    cutoff_day = today(now_ns) - retention_days
    cutoff_ns = now_ns - retention_days * _DAY_NS
    dropped = []
    for day in sorted(set(_partition_days(conn)) | _days_in_default(conn)):
        if day >= cutoff_day or _has_live_runs(conn, day, cutoff_ns):
            continue
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"tasks_d{day}")))
        with _ensured_lock:
            _ensured.discard((_database(conn), day))
        _delete_in_batches(conn, _DELETE_STRAY_TASKS_OF_DAY, day, batch)
        _delete_in_batches(conn, _DELETE_REFUSED_OF_DAY, day, batch)  # before their runs: a join
        _delete_in_batches(conn, _DELETE_RUNS_OF_DAY, day, batch)
        logger.info(
            "retention: dropped the tasks of day %s (%s)",
            day,
            time.strftime("%Y-%m-%d", time.gmtime(day * 86_400)),
        )
        dropped.append(day)
    return dropped


def _partition_days(conn: psycopg.Connection[Any]) -> list[int]:
    rows = conn.execute(_DAY_PARTITIONS).fetchall()
    return sorted(int(name[len("tasks_d") :]) for (name,) in rows)


def _has_live_runs(conn: psycopg.Connection[Any], day: int, cutoff_ns: int) -> bool:
    return bool(scalar(conn, _HAS_LIVE_RUNS, (day, cutoff_ns)))


def _days_in_default(conn: psycopg.Connection[Any]) -> set[int]:
    """Days with rows in the default partition (normally none: it only catches strays)."""
    return {d for (d,) in conn.execute(_DAYS_IN_DEFAULT)}


def _delete_in_batches(conn: psycopg.Connection[Any], statement: str, day: int, batch: int) -> None:
    """Short DELETE transactions, so retention never holds long locks."""
    while True:
        with conn.transaction():
            deleted = conn.execute(statement, (day, batch)).rowcount
        if deleted < batch:
            return
