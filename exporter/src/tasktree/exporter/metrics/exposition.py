"""``/metrics``: what tasktree knows about batch jobs, in Prometheus form (design.md §5).

Two kinds of series, so that several ``tasktree serve`` processes on one database are right:

* **Read from PostgreSQL** (every process shows the same value; aggregate with ``max by``):
  finished tasks and runs and their durations (``metric_totals``, added to by whichever process
  folded them), running/stalled/missing-parent tasks, the per-job timestamps, the ingest backlog
  and lag.  Computed from small tables and partial indexes, never by scanning the span tables,
  written straight to the text format (``StoreMetrics``) and cached for ``STORE_TTL_S`` so that
  several scrapes in a row cost one set of queries.
* **Per process** (each shows what it alone did; aggregate with ``sum by``): ingest requests,
  accepted and rejected spans and request latency, spans folded, the connection pool, ``process_*``.

Task names are bounded per job: the first ``TASKTREE_METRICS_TASK_NAMES`` names a job finishes get
their own ``task`` label value, shared by all processes through PostgreSQL; later names are counted
as ``__other__`` (the overflow series of OpenTelemetry's cardinality limits, and stable: a series
never changes its meaning).  Jobs are bounded the same way: the first ``TASKTREE_METRICS_MAX_JOBS``
jobs get their own ``job_name``; the finished tasks and runs of later ones are counted under
``job_name="__other__"`` (all their task names as ``__other__``), their running, stalled and
missing-parent tasks too, and their timestamps are not shown.  A job tasktree has not seen for
``TASKTREE_METRICS_JOB_TTL`` seconds leaves /metrics and frees its place (its totals are deleted:
if it comes back its counters start again, as a new series).

The label for the job is ``job_name``: ``job`` is Prometheus's own target label.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg_pool
from flask import Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from tasktree.exporter.auth import VIEWER, require
from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.receiver._common import Ingest
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import locks
from tasktree.exporter.store.fold import DURATION_BUCKETS, FinishedTask, FoldResult
from tasktree.exporter.store.pool import connection
from tasktree.exporter.tree import status as st

logger = logging.getLogger(__name__)

__all__ = ["DURATION_BUCKETS", "OTHER", "ServiceMetrics", "StoreMetrics", "metrics_view"]

OTHER = "__other__"
"""The ``task`` label value of every task name beyond a job's first ``metrics_task_names``, and
the ``job_name`` of every job beyond the first ``metrics_max_jobs``."""

STORE_TTL_S = 1.0
"""Seconds the PostgreSQL-backed values are reused between scrapes."""

INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_STATUS_LABEL = {st.OK: "ok", st.ERROR: "error"}
_MAX_PENDING = 10_000  # distinct (job, task, status) amounts kept while PostgreSQL refuses writes


# -- writing: what each fold finished ---------------------------------------------------------


@dataclass
class _Total:
    finished: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def add(self, seconds: float, count: int = 1, bucket: int | None = None) -> None:
        """``count`` tasks of ``seconds`` in all, in ``bucket`` (default: the bucket of
        ``seconds``, for one task)."""
        self.finished += count
        self.duration_sum += seconds
        if bucket is None:
            bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)
        self.buckets[bucket] += count

    def merge(self, other: _Total) -> None:
        self.finished += other.finished
        self.duration_sum += other.duration_sum
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


_Key = tuple[str, bool, str, int]  # (job, run, name, status), the metric_totals key

_ADMITTED = """
SELECT job, name FROM metric_totals WHERE job = ANY(%s) AND NOT run GROUP BY job, name
"""
_ADMITTED_JOBS = "SELECT DISTINCT job FROM metric_totals WHERE job <> %s"
_FORGET = """
DELETE FROM metric_totals m USING jobs j WHERE m.job = j.job AND j.last_seen_ns < %s
"""

_ADD = """
INSERT INTO metric_totals AS m (job, run, name, status, finished, duration_sum, buckets)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (job, run, name, status) DO UPDATE SET
    finished = m.finished + EXCLUDED.finished,
    duration_sum = m.duration_sum + EXCLUDED.duration_sum,
    buckets = ARRAY(SELECT a + b
                    FROM unnest(m.buckets, EXCLUDED.buckets) WITH ORDINALITY AS u(a, b, i)
                    ORDER BY i)
"""


class FoldTotals:
    """Adds each fold's finished tasks and runs to ``metric_totals`` (a ``Folder`` fold listener).

    Runs on the folder thread after the fold committed; never raises.  When PostgreSQL refuses,
    the amounts are kept and added with the next fold's.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        names_per_job: int,
        max_jobs: int = 100,
        job_ttl_s: int = 0,
    ):
        self._pool = pool
        self._cap = names_per_job
        self._max_jobs = max_jobs
        self._job_ttl_s = job_ttl_s
        self._pending: dict[_Key, _Total] = {}
        self.write_errors = 0

    def __call__(self, result: FoldResult) -> None:
        if not result.finished and not self._pending:
            return
        try:
            for task in result.finished:
                job = task.job or ""
                self._add((job, False, task.name, task.status), task)
                if task.root:
                    self._add((job, True, "", task.status), task)
            self._flush()
        except Exception:  # the folder must go on; the amounts stay pending
            self.write_errors += 1
            logger.exception(
                "could not add finished tasks to the metrics; retrying with the next fold"
            )

    def _add(self, key: _Key, task: FinishedTask) -> None:
        total = self._pending.get(key)
        if total is None:
            if len(self._pending) >= _MAX_PENDING and not key[1]:
                key = (key[0], False, OTHER, key[3])  # PostgreSQL is away: bound what waits
                total = self._pending.get(key)
            if total is None:
                total = self._pending[key] = _Total()
        total.add(task.duration_s, task.count, task.bucket)

    def _flush(self) -> None:
        with connection(self._pool) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", locks.METRICS)
            if self._job_ttl_s:  # jobs unseen for the TTL give their place up
                conn.execute(_FORGET, (time.time_ns() - self._job_ttl_s * 10**9,))
            jobs = sorted({job for job, run, _, _ in self._pending if not run})
            admitted: dict[str, set[str]] = defaultdict(set)
            for job, name in conn.execute(_ADMITTED, (jobs,)):
                admitted[job].add(name)
            known = {job for (job,) in conn.execute(_ADMITTED_JOBS, (OTHER,))}
            rows = self._bounded(self._pending, admitted, known)
            with conn.cursor() as cur:
                cur.executemany(
                    _ADD,
                    [
                        (*key, t.finished, t.duration_sum, t.buckets)
                        for key, t in sorted(rows.items())
                    ],
                )
        self._pending = {}

    def _bounded(
        self, pending: dict[_Key, _Total], admitted: dict[str, set[str]], known: set[str]
    ) -> dict[_Key, _Total]:
        """The pending amounts with jobs beyond the job cap and names beyond each job's cap
        counted as ``OTHER`` (``known``: the jobs with their own totals already)."""
        rows: dict[_Key, _Total] = {}
        for (job, run, name, status), total in sorted(pending.items()):
            if job not in known and job != OTHER:
                if len(known) < self._max_jobs:
                    known.add(job)
                else:
                    job = OTHER
            if job == OTHER and not run:
                name = OTHER
            elif not run and name not in admitted[job]:
                if len(admitted[job] - {OTHER}) < self._cap and name != OTHER:
                    admitted[job].add(name)
                else:
                    name = OTHER
            key = (job, run, name, status)
            if key not in rows:
                rows[key] = _Total()
            rows[key].merge(total)  # a copy: the pending amounts stay as they were if this fails
        return rows


# -- reading: the values shared by every process ----------------------------------------------

_TOTALS = """
SELECT job, run, name, status, finished, duration_sum, buckets FROM metric_totals
ORDER BY job, run, name, status
"""
_JOBS = """
SELECT job, last_start_ns, last_success_ns, last_failure_ns, last_seen_ns FROM jobs ORDER BY job
"""
# Both read partial indexes only (tasks_live_heartbeat, tasks_missing) and look each row's job up
# by key: the cost follows the live tasks and placeholders, not the tasks or runs stored.
_LIVE = """
SELECT coalesce(res.job, ''), t.status, count(*), max(t.heartbeat_ns)
FROM tasks t LEFT JOIN resources res ON res.id = t.resource_id
WHERE t.status IN (1, 2) GROUP BY 1, 2 ORDER BY 1, 2
"""
_MISSING = """
SELECT coalesce((SELECT r.job FROM runs r WHERE r.trace_id = t.trace_id), ''), count(*)
FROM tasks t WHERE t.missing GROUP BY 1 ORDER BY 1
"""
_LANDING = """
SELECT (SELECT received_ns FROM span_landing ORDER BY id LIMIT 1),
       (SELECT max(id) - min(id) + 1 FROM span_landing)
"""


class StoreMetrics:
    """The PostgreSQL-backed part of /metrics, as exposition text at most ``ttl`` seconds old.

    These families hold most of the samples (a histogram per job and task name), so they are
    written straight to the text format: prometheus_client's generic exposition costs ~10 µs a
    sample, over 200 ms for 100 jobs of 10 task names.  ``promtool check metrics`` checks the
    result in the tests.  Blocks at most the pool timeout plus the queries; when PostgreSQL
    cannot be read the text says ``tasktree_store_up 0`` and nothing else (no stale values).
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        ttl: float = STORE_TTL_S,
        max_jobs: int = 100,
        job_ttl_s: int = 0,
    ):
        self._pool = pool
        self._ttl = ttl
        self._max_jobs = max_jobs
        self._job_ttl_s = job_ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None  # (time.monotonic(), text)

    def text(self) -> bytes:
        with self._lock:  # concurrent scrapes wait for one read instead of each querying
            if self._cached is not None and time.monotonic() - self._cached[0] < self._ttl:
                return self._cached[1]
            out = _Exposition()
            try:
                started = time.perf_counter()
                rows = _bounded_jobs(self._query(), self._max_jobs, self._job_ttl_s)
                read_s = time.perf_counter() - started
            except Exception:  # noqa: BLE001 (the scrape shows store_up 0 instead of failing)
                logger.warning("metrics: could not read PostgreSQL", exc_info=True)
                out.single("tasktree_store_up", "gauge", _UP_HELP, 0)
            else:
                out.single("tasktree_store_up", "gauge", _UP_HELP, 1)
                _write_totals(out, rows["totals"])
                _write_jobs(out, rows["jobs"], rows["live"], rows["missing"])
                _write_ingest(out, rows, read_s)
            text = out.render()
            self._cached = (time.monotonic(), text)
            return text

    def _query(self) -> dict:
        with connection(self._pool) as conn:
            rows = {
                name: conn.execute(query).fetchall()
                for name, query in (
                    ("totals", _TOTALS),
                    ("jobs", _JOBS),
                    ("live", _LIVE),
                    ("missing", _MISSING),
                )
            }
            rows["oldest_received_ns"], rows["backlog"] = conn.execute(_LANDING).fetchone()
        rows["now_s"] = time.time()
        return rows


def _bounded_jobs(rows: dict, max_jobs: int, job_ttl_s: int) -> dict:
    """``rows`` without the jobs unseen for ``job_ttl_s`` and with the jobs beyond the first
    ``max_jobs`` as ``OTHER``: those with totals first (their series must keep their label), then
    the others by name.  Timestamps are shown for the jobs with their own label only."""
    cutoff = (rows["now_s"] - job_ttl_s) * 1e9 if job_ttl_s else None
    expired = {
        job
        for job, *_, last_seen in rows["jobs"]
        if cutoff is not None and last_seen is not None and last_seen < cutoff
    }
    shown = {row[0] for row in rows["totals"]} - expired - {OTHER}
    for job in sorted(
        {row[0] for row in rows["jobs"]}
        | {row[0] for row in rows["live"]}
        | {row[0] for row in rows["missing"]}
    ):
        if len(shown) >= max_jobs:
            break
        if job not in expired:
            shown.add(job)

    def label(job: str) -> str | None:
        return None if job in expired else job if job in shown else OTHER

    live: dict[tuple[str, int], list] = {}
    for job, status, count, newest in rows["live"]:
        if label(job) is not None:
            seen = live.setdefault((label(job), status), [0, None])
            seen[0] += count
            if newest is not None:
                seen[1] = newest if seen[1] is None else max(seen[1], newest)
    missing: dict[str, int] = defaultdict(int)
    for job, count in rows["missing"]:
        if label(job) is not None:
            missing[label(job)] += count
    return {
        **rows,
        "totals": [row for row in rows["totals"] if row[0] not in expired],
        "jobs": [row for row in rows["jobs"] if row[0] in shown],
        "live": [(job, status, n, newest) for (job, status), (n, newest) in sorted(live.items())],
        "missing": sorted(missing.items()),
    }


_UP_HELP = "Whether tasktree could read PostgreSQL for this scrape (1) or not (0)."


class _Exposition:
    """Prometheus text format 0.0.4, written directly."""

    def __init__(self):
        self._parts: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self._parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: str, value) -> None:
        self._parts.append(
            f"{name}{{{labels}}} {_number(value)}\n" if labels else f"{name} {_number(value)}\n"
        )

    def single(self, name: str, kind: str, help_text: str, value) -> None:
        self.family(name, kind, help_text)
        self.sample(name, "", value)

    def render(self) -> bytes:
        return "".join(self._parts).encode()


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value) -> str:
    if isinstance(value, int):
        return str(value)
    return floatToGoString(value)


_LE = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]


def _write_totals(out: _Exposition, rows: list[tuple]) -> None:
    tasks, runs = [], []
    task_hist: dict[tuple[str, str], _Total] = {}
    run_hist: dict[str, _Total] = {}
    for job, run, name, status, finished, duration_sum, buckets in rows:
        total = _Total(finished, duration_sum, list(buckets))
        status_label = _STATUS_LABEL.get(status, str(status))
        if run:
            runs.append((f'job_name="{_label(job)}",status="{status_label}"', finished))
            _merge_into(run_hist, job, total)
        else:
            labels = f'job_name="{_label(job)}",status="{status_label}",task="{_label(name)}"'
            tasks.append((labels, finished))
            _merge_into(task_hist, (job, name), total)
    out.family(
        "tasktree_tasks_finished_total",
        "counter",
        "Tasks that finished, by job, task name (the "
        "first TASKTREE_METRICS_TASK_NAMES of each job; the rest are __other__) and status.",
    )
    for labels, value in tasks:
        out.sample("tasktree_tasks_finished_total", labels, value)
    out.family(
        "tasktree_runs_finished_total",
        "counter",
        "Runs (root tasks) that finished, by job and status.",
    )
    for labels, value in runs:
        out.sample("tasktree_runs_finished_total", labels, value)
    _write_histogram(
        out,
        "tasktree_task_duration_seconds",
        "How long finished tasks took, by job and task name.",
        {f'job_name="{_label(j)}",task="{_label(n)}",': t for (j, n), t in task_hist.items()},
    )
    _write_histogram(
        out,
        "tasktree_run_duration_seconds",
        "How long finished runs (root tasks) took, by job.",
        {f'job_name="{_label(j)}",': t for j, t in run_hist.items()},
    )


def _merge_into(totals: dict, key, total: _Total) -> None:
    if key in totals:
        totals[key].merge(total)
    else:
        totals[key] = total


def _write_histogram(
    out: _Exposition, name: str, help_text: str, totals: dict[str, _Total]
) -> None:
    out.family(name, "histogram", help_text)
    parts = out._parts
    for prefix, total in totals.items():
        running = 0
        for le, count in zip(_LE, total.buckets, strict=True):
            running += count
            parts.append(f'{name}_bucket{{{prefix}le="{le}"}} {running}\n')
        labels = prefix.rstrip(",")
        parts.append(
            f"{name}_sum{{{labels}}} {floatToGoString(total.duration_sum)}\n"
            f"{name}_count{{{labels}}} {running}\n"
        )


_JOB_TIMES = (
    ("tasktree_job_last_start_timestamp_seconds", "When the job's latest run started (Unix time)."),
    (
        "tasktree_job_last_success_timestamp_seconds",
        "When a run of the job last finished ok (Unix time); absent if none ever did.",
    ),
    (
        "tasktree_job_last_failure_timestamp_seconds",
        "When a run of the job last finished in error (Unix time); absent if none ever did.",
    ),
    (
        "tasktree_job_last_heartbeat_timestamp_seconds",
        "When tasktree last folded anything of the job: a task or a running task's heartbeat "
        "(Unix time).",
    ),
)


def _write_jobs(
    out: _Exposition, jobs: list[tuple], live: list[tuple], missing: list[tuple]
) -> None:
    for i, (name, help_text) in enumerate(_JOB_TIMES):
        out.family(name, "gauge", help_text)
        for job, *stamps in jobs:
            if stamps[i] is not None:
                out.sample(name, f'job_name="{_label(job)}"', stamps[i] / 1e9)
    counts = {(job, status): n for job, status, n, _ in live}
    known = sorted({job for job, *_ in jobs} | {job for job, _ in counts})
    for status, name, help_text in (
        (st.RUNNING, "tasktree_tasks_running", "Tasks running now, by job."),
        (
            st.STALLED,
            "tasktree_tasks_stalled",
            "Tasks that stopped sending heartbeats "
            "(TASKTREE_STALL_AFTER) without finishing, by job.",
        ),
    ):
        out.family(name, "gauge", help_text)
        for job in known:
            out.sample(name, f'job_name="{_label(job)}"', counts.get((job, status), 0))
    name = "tasktree_tasks_stalled_last_heartbeat_timestamp_seconds"
    out.family(
        name,
        "gauge",
        "The newest last heartbeat among the job's stalled tasks (Unix time): "
        "when the latest stall began.",
    )
    for job, status, _, newest in live:
        if status == st.STALLED and newest is not None:
            out.sample(name, f'job_name="{_label(job)}"', newest / 1e9)
    name = "tasktree_tasks_missing_parent"
    out.family(
        name,
        "gauge",
        "Placeholders for parent tasks that were named by a child but not (yet) received, by job.",
    )
    for job, n in missing:
        out.sample(name, f'job_name="{_label(job)}"', n)


def _write_ingest(out: _Exposition, rows: dict, read_s: float) -> None:
    out.single(
        "tasktree_ingest_backlog_spans",
        "gauge",
        "Spans received and stored but not yet folded into the tree.",
        int(rows["backlog"] or 0),
    )
    oldest = rows["oldest_received_ns"]
    lag = 0.0 if oldest is None else max(0.0, rows["now_s"] - oldest / 1e9)
    out.single(
        "tasktree_ingest_lag_seconds",
        "gauge",
        "Age of the oldest received span not yet folded "
        "into the tree (0 when the tree is up to date).",
        lag,
    )
    out.single(
        "tasktree_metrics_store_read_seconds",
        "gauge",
        "How long the last read of the PostgreSQL-backed metrics took.",
        read_s,
    )


# -- per process ------------------------------------------------------------------------------


class ProcessStats:
    """This process's folder and connection pool (per-process values: ``sum by`` across them)."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, folder=None, totals: FoldTotals | None = None
    ):
        self._pool = pool
        self._folder = folder
        self._totals = totals

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        if self._folder is not None:
            folded = CounterMetricFamily(
                "tasktree_folded_spans", "Span records this process folded into the tree."
            )
            folded.add_metric([], self._folder.folded_total)
            stalled = CounterMetricFamily(
                "tasktree_stall_transitions",
                "Running tasks this process turned stalled for lack of heartbeats.",
            )
            stalled.add_metric([], self._folder.stalled_total)
            split = CounterMetricFamily(
                "tasktree_fold_timeouts",
                "Folds cancelled by the statement timeout; each is retried in batches half as"
                " large.",
            )
            split.add_metric([], self._folder.timeouts_total)
            yield from (folded, stalled, split)
        if self._totals is not None:
            errors = CounterMetricFamily(
                "tasktree_metrics_write_errors",
                "Folds whose finished tasks could not be added to the metrics at once (retried).",
            )
            errors.add_metric([], self._totals.write_errors)
            yield errors
        yield from _pool_families(self._pool.get_stats())


def _pool_families(stats: dict) -> list[Metric]:
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    connections = GaugeMetricFamily(
        "tasktree_db_pool_connections",
        "Database connections of this process, by state.",
        labels=["state"],
    )
    connections.add_metric(["busy"], max(0, size - idle))
    connections.add_metric(["idle"], idle)
    most = GaugeMetricFamily(
        "tasktree_db_pool_max_connections",
        "The most database connections this process opens (TASKTREE_POOL_SIZE).",
    )
    most.add_metric([], stats.get("pool_max", 0))
    waiting = GaugeMetricFamily(
        "tasktree_db_pool_waiting_requests", "Requests waiting for a database connection now."
    )
    waiting.add_metric([], stats.get("requests_waiting", 0))
    errors = CounterMetricFamily(
        "tasktree_db_pool_errors",
        "Requests for a database connection "
        "that failed (TASKTREE_POOL_TIMEOUT passed, or the pool closed).",
    )
    errors.add_metric([], stats.get("requests_errors", 0))
    return [connections, most, waiting, errors]


class IngestMetrics:
    """Counts and times what the OTLP receivers hand to ingest (per process)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.accepted = Counter(
            "tasktree_ingest_spans_accepted",
            "Spans received and durably stored (answered 200).",
            ["protocol"],
            registry=registry,
        )
        self.rejected = Counter(
            "tasktree_ingest_spans_rejected",
            "Spans not stored, by reason: "
            "refused (alone, in partial_success: invalid or over a limit), "
            "overloaded (429), unavailable (503), error (500); "
            "unauthenticated (401, missing or wrong ingest token) counts requests, not spans: "
            "the body of a request without a valid token is never decoded.",
            ["protocol", "reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "tasktree_ingest_request_duration_seconds",
            "Time to store one OTLP request's spans (after decoding), answered or refused.",
            ["protocol"],
            buckets=INGEST_BUCKETS,
            registry=registry,
        )
        for protocol in ("http", "grpc"):  # series exist at 0 before the first request
            self.accepted.labels(protocol)
            self.latency.labels(protocol)
            for reason in ("refused", "overloaded", "unavailable", "error", "unauthenticated"):
                self.rejected.labels(protocol, reason)

    def count_unauthenticated(self, protocol: str) -> None:
        """One request refused for its token (its spans are not known: its body is not read)."""
        self.rejected.labels(protocol, "unauthenticated").inc()

    def instrument(self, ingest: Ingest, protocol: str) -> Ingest:
        """``ingest`` that also counts and times each call; raises what ``ingest`` raises."""
        accepted, latency = self.accepted.labels(protocol), self.latency.labels(protocol)

        def instrumented(batch: DecodedBatch) -> None:
            started = time.perf_counter()
            try:
                ingest(batch)
            except Exception as exc:
                reason = (
                    "overloaded"
                    if isinstance(exc, Overloaded)
                    else "unavailable"
                    if isinstance(exc, StoreUnavailable)
                    else "error"
                )
                self.rejected.labels(protocol, reason).inc(len(batch.spans) + batch.rejected)
                raise
            finally:
                latency.observe(time.perf_counter() - started)
            accepted.inc(len(batch.spans))
            if batch.rejected:
                self.rejected.labels(protocol, "refused").inc(batch.rejected)

        return instrumented


class ServiceMetrics:
    """Everything ``/metrics`` shows for one ``tasktree serve`` process, on its own registry.

    Subscribes to ``folder`` (when given) so finished tasks reach ``metric_totals``.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        settings: Settings,
        folder=None,
        registry: CollectorRegistry = REGISTRY,
    ):
        self.registry = registry
        self.totals = FoldTotals(
            pool, settings.metrics_task_names, settings.metrics_max_jobs, settings.metrics_job_ttl
        )
        if folder is not None:
            folder.subscribe_folds(self.totals)
        self.ingest = IngestMetrics(registry)
        self.store = StoreMetrics(
            pool, max_jobs=settings.metrics_max_jobs, job_ttl_s=settings.metrics_job_ttl
        )
        registry.register(ProcessStats(pool, folder, self.totals))
        if registry is not REGISTRY:  # the global registry has these already
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._extra: list = []

    def exposition(self) -> bytes:
        """The /metrics page (text format 0.0.4): this process's registry, then the store's."""
        return generate_latest(self.registry) + self.store.text()

    def instrument_ingest(self, ingest: Ingest, protocol: str) -> Ingest:
        return self.ingest.instrument(ingest, protocol)

    def add_collector(self, collector) -> None:
        """Show another collector's families too (e.g. the docker hosts'), once."""
        if collector not in self._extra:
            self._extra.append(collector)
            self.registry.register(collector)


def mount(app) -> None:
    """Serve ``/metrics`` from ``app.extensions["tasktree"]["metrics"]`` (+ the docker hosts')."""
    ext = app.extensions["tasktree"]
    metrics = ext.get("metrics")
    if metrics is None:
        metrics = ext["metrics"] = ServiceMetrics(
            ext["pool"], ext["settings"], ext.get("folder"), registry=CollectorRegistry()
        )
    docker = ext.get("docker")
    if docker is not None and getattr(docker, "metrics", None) is not None:
        metrics.add_collector(docker.metrics)
    app.add_url_rule("/metrics", "metrics", view_func=metrics_view)


@require(VIEWER)
def metrics_view() -> Response:
    """``GET /metrics`` in the Prometheus text format; a viewer may read it."""
    metrics = current_app.extensions["tasktree"]["metrics"]
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
