"""The part of /metrics read from PostgreSQL: the same in every process (``max by`` them).

Computed from small tables and partial indexes, never by scanning the span tables, and cached
for ``STORE_TTL_S`` so that several scrapes in a row cost one set of queries.  Jobs are bounded
as in ``metric_totals`` (``store/metric_totals.py``): the first ``max_jobs`` get their own
``job_name``, the running, stalled and missing-parent tasks of later ones are counted as
``__other__`` and their timestamps are not shown (how many jobs that is is shown, for an alert);
a job unseen for ``job_ttl_s`` is not shown.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import psycopg
import psycopg_pool

from tasktree.exporter.metrics.exposition import StoreRows, render_store_down, render_store_text
from tasktree.exporter.store import migrate, quarantine
from tasktree.exporter.store.metric_totals import OTHER
from tasktree.exporter.store.replication import ReadRoute
from tasktree.exporter.tree import status as st

logger = logging.getLogger(__name__)

__all__ = ["STORE_TTL_S", "STORE_WAIT_S", "StoreMetrics", "bounded_jobs", "read_store"]

STORE_TTL_S = 1.0
"""Seconds the PostgreSQL-backed values are reused between scrapes."""
STORE_WAIT_S = 4.0
"""At most this long waiting for a connection (less when the pool's own timeout is less), and
at most this long again for the read's statements together: with PostgreSQL down, or holding
them up (a lock on a table, a server too busy), a scrape must still end well within
Prometheus's 10 s, so that it records ``tasktree_store_up 0`` (the alert
TasktreeStoreUnreachable), not a failed scrape."""

TOTALS = """
SELECT job, run, name, status, finished, duration_sum, buckets FROM metric_totals
ORDER BY job, run, name, status
"""

JOBS = """
SELECT job, last_start_ns, last_success_ns, last_failure_ns, last_seen_ns FROM jobs ORDER BY job
"""

# LIVE and MISSING read partial indexes only (tasks_live_heartbeat, tasks_missing) and look each
# row's job up by key: the cost follows the live tasks and placeholders, not the tasks or runs
# stored.  The statuses are written into the text, not passed as parameters: the planner uses a
# partial index only when it can prove the index's predicate (the live statuses) from the query's.
LIVE = f"""
SELECT coalesce(res.job, ''), t.status, count(*), max(t.heartbeat_ns)
FROM tasks t LEFT JOIN resources res ON res.id = t.resource_id
WHERE t.status IN {st.sql_list(st.LIVE)} GROUP BY 1, 2 ORDER BY 1, 2
"""  # noqa: S608 (constant: the status enum's live codes)

MISSING = """
SELECT coalesce((SELECT r.job FROM runs r WHERE r.trace_id = t.trace_id), ''), count(*)
FROM tasks t WHERE t.missing GROUP BY 1 ORDER BY 1
"""

# Through the live tasks' partial index again (status = RUNNING implies its predicate), then one
# runs lookup per run with a task running: the cost follows what runs now, not the runs stored.
# The run's own job (its root's), not the running task's.
LIVE_RUNS = f"""
SELECT r.job, min(r.start_ns)
FROM runs r
WHERE r.trace_id IN (SELECT t.trace_id FROM tasks t WHERE t.status = {st.RUNNING:d})
  AND r.job IS NOT NULL AND r.start_ns IS NOT NULL
GROUP BY 1 ORDER BY 1
"""  # noqa: S608 (constant: the running status code)

LANDING = """
SELECT (SELECT received_ns FROM span_landing ORDER BY id LIMIT 1),
       (SELECT max(id) - min(id) + 1 FROM span_landing)
"""


_Label = Callable[[str], "str | None"]
"""A job's label in /metrics (``OTHER`` beyond the cap), or None when it is not shown."""


def read_store(conn: psycopg.Connection, budget_s: float | None = None) -> StoreRows:
    """Everything the store's families show, as PostgreSQL has it now; with ``budget_s``, its
    statements together are cancelled after that long (``QueryCanceled``)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def limited(conn: psycopg.Connection) -> psycopg.Connection:
        if deadline is not None:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            conn.execute(_STATEMENT_TIMEOUT, [f"{left_ms}ms"])
        return conn

    with conn.transaction():  # the timeouts set are this transaction's only
        totals, jobs, live, missing, live_runs = (
            limited(conn).execute(query).fetchall()
            for query in (TOTALS, JOBS, LIVE, MISSING, LIVE_RUNS)
        )
        landing = limited(conn).execute(LANDING).fetchone()
        oldest_received_ns, backlog = landing if landing is not None else (None, None)
        quarantined = quarantine.count_at_most(limited(conn))
        (created,) = limited(conn).execute(migrate.CREATED).fetchone() or (None,)
    return StoreRows(
        totals, jobs, live, missing, oldest_received_ns, backlog, time.time(), quarantined, created,
        live_runs=live_runs,
    )  # fmt: skip


_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"


class StoreMetrics:
    """The PostgreSQL-backed part of /metrics, as exposition text at most ``ttl`` seconds old.

    Blocks at most the pool timeout plus the queries; when PostgreSQL cannot be read the text
    says ``tasktree_store_up 0`` and nothing else (no stale values).
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        ttl: float = STORE_TTL_S,
        max_jobs: int = 100,
        job_ttl_s: int = 0,
        reads: ReadRoute | None = None,
        wait: float = STORE_WAIT_S,
    ):
        self._reads = reads or ReadRoute(pool, None)  # a read replica's, when configured
        self._ttl = ttl
        self._max_jobs = max_jobs
        self._job_ttl_s = job_ttl_s
        self._wait = min(wait, pool.timeout)
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None  # (time.monotonic(), text)
        self.up = True
        """Whether the last read of PostgreSQL worked (the other collectors skip theirs if not)."""

    def text(self) -> bytes:
        # Concurrent scrapes wait for one read instead of each querying; never longer than that
        # read may take (its connection and its statements, each bounded by the wait).
        if not self._lock.acquire(timeout=2 * self._wait):
            logger.warning("metrics: another scrape's read of PostgreSQL has not ended")
            self.up = False
            return render_store_down()
        try:
            if self._cached is not None and time.monotonic() - self._cached[0] < self._ttl:
                return self._cached[1]
            text = self._read_and_render()
            self._cached = (time.monotonic(), text)
            return text
        finally:
            self._lock.release()

    def _read_and_render(self) -> bytes:
        try:
            started = time.perf_counter()
            rows = self._reads.run(lambda conn: read_store(conn, self._wait), timeout=self._wait)
            rows = bounded_jobs(rows, self._max_jobs, self._job_ttl_s)
            read_s = time.perf_counter() - started
        except Exception:
            logger.warning("metrics: could not read PostgreSQL", exc_info=True)
            self.up = False
            return render_store_down()
        self.up = True
        return render_store_text(rows, read_s)


def bounded_jobs(rows: StoreRows, max_jobs: int, job_ttl_s: int) -> StoreRows:
    """``rows`` without the jobs unseen for ``job_ttl_s`` and with the jobs beyond the first
    ``max_jobs`` as ``OTHER``: those with totals first (their series must keep their label), then
    the others by name.  Timestamps are shown for the jobs with their own label only; how many
    jobs are folded into ``OTHER`` is counted (``folded_jobs``).

    The jobs with totals are the first ``max_jobs`` jobs that finished a task (``metric_totals``
    admits them once, for good): a job keeps its label, and so its alerts, for as long as it is
    seen, whatever number of newer jobs come.  The most recently active jobs would be no better
    choice: a job that stops running, the one TasktreeJobNotStarted must report, would be the
    first to lose its label, and a source of ever new job names would take every label."""
    expired = _expired_jobs(rows, job_ttl_s)
    shown = _shown_jobs(rows, expired, max_jobs)
    known = {row[0] for part in (rows.jobs, rows.live, rows.missing) for row in part}

    def label(job: str) -> str | None:
        return None if job in expired else job if job in shown else OTHER

    return dataclasses.replace(
        rows,
        totals=[row for row in rows.totals if row[0] not in expired],
        jobs=[row for row in rows.jobs if row[0] in shown],
        live_runs=[row for row in rows.live_runs if row[0] in shown],
        live=_relabelled_live(rows.live, label),
        missing=_relabelled_missing(rows.missing, label),
        folded_jobs=len(known - expired - shown - {OTHER}),
        max_jobs=max_jobs,
    )


def _expired_jobs(rows: StoreRows, job_ttl_s: int) -> set[str]:
    if not job_ttl_s:
        return set()
    cutoff = (rows.now_s - job_ttl_s) * 1e9
    return {job for job, *_, last_seen in rows.jobs if last_seen is not None and last_seen < cutoff}


def _shown_jobs(rows: StoreRows, expired: set[str], max_jobs: int) -> set[str]:
    """The jobs with their own label: those with totals, then the others by name up to
    ``max_jobs``."""
    shown = {row[0] for row in rows.totals} - expired - {OTHER}
    others = {row[0] for row in rows.jobs} | {row[0] for row in rows.live}
    for job in sorted(others | {row[0] for row in rows.missing}):
        if len(shown) >= max_jobs:
            break
        if job not in expired:
            shown.add(job)
    return shown


def _relabelled_live(live: list[tuple], label: _Label) -> list[tuple]:
    """``live`` by (label, status): the counts added, the newest heartbeat kept."""
    merged: dict[tuple[str, int], list] = {}
    for job, status, count, newest in live:
        shown_as = label(job)
        if shown_as is None:
            continue
        seen = merged.setdefault((shown_as, status), [0, None])
        seen[0] += count
        if newest is not None:
            seen[1] = newest if seen[1] is None else max(seen[1], newest)
    return [(job, status, n, newest) for (job, status), (n, newest) in sorted(merged.items())]


def _relabelled_missing(missing: list[tuple], label: _Label) -> list[tuple]:
    merged: dict[str, int] = defaultdict(int)
    for job, count in missing:
        shown_as = label(job)
        if shown_as is not None:
            merged[shown_as] += count
    return sorted(merged.items())
