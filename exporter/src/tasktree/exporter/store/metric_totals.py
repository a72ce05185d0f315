"""The finished tasks and runs of every fold, added up in ``metric_totals`` (read by /metrics).

Whichever ``tasktree serve`` process folds a task adds it here, so every process shows the same
totals (``tasktree.exporter.metrics``).  The label space is bounded where it is written:

* the first ``names_per_job`` task names a job finishes keep their own name; later ones are
  counted as ``OTHER`` (the overflow series of OpenTelemetry's cardinality limits: stable, a
  series never changes its meaning);
* the first ``max_jobs`` jobs keep their own name; the tasks and runs of later ones are counted
  under the job ``OTHER`` (all their task names as ``OTHER``);
* a job unseen for ``job_ttl_s`` seconds has its totals deleted and frees its place (if it comes
  back its counters start again, as a new series).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg
import psycopg_pool

from tasktree.exporter.receiver.records import MAX_NAME_BYTES, cut
from tasktree.exporter.store import locks
from tasktree.exporter.store.fold import DURATION_BUCKETS, FinishedTask, FoldResult
from tasktree.exporter.store.pool import connection

logger = logging.getLogger(__name__)

__all__ = ["OTHER", "FoldTotals", "Total", "TotalKey"]

OTHER = "__other__"
"""The task name of every name beyond a job's first ``names_per_job``, and the job of every job
beyond the first ``max_jobs``."""

FLUSH_EVERY_S = 1.0
"""Finished tasks wait in memory at most about this long before they are added up in PostgreSQL
(the folder calls its listeners about once a second even when idle).  Without it a trickle of
small folds, as many jobs each sending every second make, paid a transaction of its own per fold
for the totals: about 2.8 ms of the server's CPU each (issue 16)."""

MAX_PENDING = 10_000
"""Distinct (job, task, status) amounts kept in memory while PostgreSQL refuses writes; beyond,
new task names wait as ``OTHER``."""

FORGET_UNSEEN_JOBS = """
DELETE FROM metric_totals m USING jobs j WHERE m.job = j.job AND j.last_seen_ns < %s
"""

ADMITTED_NAMES = """
SELECT job, name FROM metric_totals WHERE job = ANY(%s) AND NOT run GROUP BY job, name
"""

ADMITTED_JOBS = "SELECT DISTINCT job FROM metric_totals WHERE job <> %s"

ADD_TOTALS = """
INSERT INTO metric_totals AS m (job, run, name, status, finished, duration_sum, buckets)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (job, run, name, status) DO UPDATE SET
    finished = m.finished + EXCLUDED.finished,
    duration_sum = m.duration_sum + EXCLUDED.duration_sum,
    buckets = ARRAY(SELECT a + b
                    FROM unnest(m.buckets, EXCLUDED.buckets) WITH ORDINALITY AS u(a, b, i)
                    ORDER BY i)
"""

TotalKey = tuple[str, bool, str, int]
"""(job, run, name, status): the key of ``metric_totals``; a run's name is ``""``."""


@dataclass
class Total:
    """Finished tasks (or runs) of one key: their number, summed duration and histogram."""

    finished: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    """Tasks per bucket of ``DURATION_BUCKETS`` (not cumulative); the last is +Inf."""

    def add(self, seconds: float, count: int = 1, bucket: int | None = None) -> None:
        """``count`` tasks of ``seconds`` in all, in ``bucket`` (default: the bucket of
        ``seconds``, for one task)."""
        self.finished += count
        self.duration_sum += seconds
        if bucket is None:
            bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)
        self.buckets[bucket] += count

    def merge(self, other: Total) -> None:
        self.finished += other.finished
        self.duration_sum += other.duration_sum
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


class FoldTotals:
    """Adds each fold's finished tasks and runs to ``metric_totals`` (a ``Folder`` fold listener).

    Runs on the folder thread after the fold committed; never raises.  Amounts are written at
    most every ``FLUSH_EVERY_S`` (``flush`` writes at once); when PostgreSQL refuses, they are
    kept and added with the next fold's.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        names_per_job: int,
        max_jobs: int = 100,
        job_ttl_s: int = 0,
    ):
        self._pool = pool
        self._names_per_job = names_per_job
        self._max_jobs = max_jobs
        self._job_ttl_s = job_ttl_s
        self._pending: dict[TotalKey, Total] = {}
        self._next_flush = 0.0  # monotonic: no write before, unless asked (``flush``)
        self.write_errors = 0

    def __call__(self, result: FoldResult) -> None:
        for task in result.finished:
            self._add_pending(task)
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        """Add the pending amounts to ``metric_totals`` now (at shutdown, too); never raises."""
        if not self._pending:
            return
        try:
            self._flush()
            self._next_flush = time.monotonic() + FLUSH_EVERY_S
        except Exception:  # the folder must go on; the amounts stay pending
            self.write_errors += 1
            logger.exception(
                "could not add finished tasks to the metrics; retrying with the next fold"
            )

    def _add_pending(self, task: FinishedTask) -> None:
        job = task.job or ""
        self._add((job, False, cut(task.name, MAX_NAME_BYTES), task.status), task)
        if task.root:
            self._add((job, True, "", task.status), task)

    def _add(self, key: TotalKey, task: FinishedTask) -> None:
        total = self._pending.get(key)
        if total is None:
            if len(self._pending) >= MAX_PENDING and not key[1]:
                key = (key[0], False, OTHER, key[3])  # PostgreSQL is away: bound what waits
                total = self._pending.get(key)
            if total is None:
                total = self._pending[key] = Total()
        total.add(task.duration_s, task.count, task.bucket)

    def _flush(self) -> None:
        with connection(self._pool) as conn, conn.transaction():
            # One write at a time across processes: each decides which names the cap admits.
            conn.execute(locks.TAKE_XACT, locks.METRICS)
            if self._job_ttl_s:  # jobs unseen for the TTL give their place up
                conn.execute(FORGET_UNSEEN_JOBS, (time.time_ns() - self._job_ttl_s * 10**9,))
            admitted, known = self._admitted(conn)
            rows = self._bounded(self._pending, admitted, known)
            with conn.cursor() as cur:
                cur.executemany(
                    ADD_TOTALS,
                    [
                        (*key, t.finished, t.duration_sum, t.buckets)
                        for key, t in sorted(rows.items())
                    ],
                )
        self._pending = {}

    def _admitted(self, conn: psycopg.Connection) -> tuple[dict[str, set[str]], set[str]]:
        """The task names with their own totals, by job (of the pending jobs), and the jobs."""
        jobs = sorted({job for job, run, _, _ in self._pending if not run})
        admitted: dict[str, set[str]] = defaultdict(set)
        for job, name in conn.execute(ADMITTED_NAMES, (jobs,)):
            admitted[job].add(name)
        known = {job for (job,) in conn.execute(ADMITTED_JOBS, (OTHER,))}
        return admitted, known

    def _bounded(
        self, pending: dict[TotalKey, Total], admitted: dict[str, set[str]], known: set[str]
    ) -> dict[TotalKey, Total]:
        """The pending amounts with jobs beyond the job cap and names beyond each job's cap
        counted as ``OTHER`` (``known``: the jobs with their own totals already)."""
        rows: dict[TotalKey, Total] = {}
        for (job, run, name, status), total in sorted(pending.items()):
            job = self._job_label(job, known)
            if not run:
                name = self._name_label(job, name, admitted)
            key = (job, run, name, status)
            if key not in rows:
                rows[key] = Total()
            rows[key].merge(total)  # a copy: the pending amounts stay as they were if this fails
        return rows

    def _job_label(self, job: str, known: set[str]) -> str:
        """``job``, admitted (added to ``known``) while there is room; else ``OTHER``."""
        if job in known or job == OTHER:
            return job
        if len(known) < self._max_jobs:
            known.add(job)
            return job
        return OTHER

    def _name_label(self, job: str, name: str, admitted: dict[str, set[str]]) -> str:
        """``name`` of a task of ``job``, admitted while the job has room; else ``OTHER``."""
        if job == OTHER:
            return OTHER
        if name in admitted[job]:
            return name
        if len(admitted[job] - {OTHER}) < self._names_per_job and name != OTHER:
            admitted[job].add(name)
            return name
        return OTHER
