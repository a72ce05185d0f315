"""The per-process part of /metrics: each process shows what it alone did (``sum by`` them).

Ingest requests by outcome, accepted and rejected spans and request latency
(``IngestMetrics``); spans folded, stall transitions and fold timeouts (the serving process's
folder threads and the fold workers it started: ``--workers``), metrics write errors, the fold
workers running and restarted, and the connection pool (``ProcessStats``); whether live updates
reach the pages (``LiveBusUp``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg_pool
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.receiver._common import INVALID_OUTCOMES, Ingest
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.store.metric_totals import FoldTotals

if TYPE_CHECKING:
    from tasktree.exporter.fold_workers import FoldWorkers
    from tasktree.exporter.live import LocalBus

__all__ = ["INGEST_BUCKETS", "FoldCounters", "IngestMetrics", "LiveBusUp", "ProcessStats"]

INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the ingest request duration histogram."""

REJECT_REASONS = ("refused", "overloaded", "unavailable", "error", "unauthenticated")
REQUEST_OUTCOMES = (
    "stored", "overloaded", "unavailable", "error", "unauthenticated",
    *sorted(set(INVALID_OUTCOMES.values())),
)  # fmt: skip
"""What became of an export request: ``stored`` (answered 200, its good spans stored), or the
reason it was refused whole."""


class FoldCounters(Protocol):
    """What folded: a ``Folder``'s running totals, or the sums of a server's fold workers'."""

    @property
    def folded_total(self) -> int: ...

    @property
    def stalled_total(self) -> int: ...

    @property
    def timeouts_total(self) -> int: ...


class ProcessStats:
    """This process's folding and connection pool (per-process values: ``sum by`` across them).

    The fold counters add up the folders given: the process's own and, in a server started with
    ``--workers``, its fold workers' (``add_fold_workers``), which serve no /metrics of their own.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        folder: FoldCounters | None = None,
        totals: FoldTotals | None = None,
    ):
        self._pool = pool
        self._folders = [] if folder is None else [folder]
        self._writers: list[FoldTotals | FoldWorkers] = [] if totals is None else [totals]
        self._fold_workers: FoldWorkers | None = None

    def add_fold_workers(self, workers: FoldWorkers) -> None:
        """Count the fold workers' folding and failed job-series writes as this process's too,
        and show how many run."""
        self._folders = [*self._folders, workers]  # a scrape may be reading the lists
        self._writers = [*self._writers, workers]
        self._fold_workers = workers

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        if self._folders:
            yield from _folder_families(self._folders)
        if self._writers:
            errors = CounterMetricFamily(
                "tasktree_metrics_write_errors",
                "Failed writes of finished tasks to the metrics (the amounts are kept, retried),"
                " by this process and its fold workers (--workers).",
            )
            errors.add_metric([], sum(w.write_errors for w in self._writers))
            yield errors
        if self._fold_workers is not None:
            yield from _fold_worker_families(self._fold_workers)
        yield from _pool_families(self._pool.get_stats())


class LiveBusUp:
    """Whether this process's live pages hear of every process's changes now (``LocalBus.up``):
    0 while its Redis (or PostgreSQL LISTEN) is lost, when pages show its own changes only."""

    def __init__(self, bus: LocalBus):
        self._bus = bus

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "tasktree_live_bus_up",
            "1 when this process's live pages hear of every process's changes (through Redis"
            " with --redis-url, PostgreSQL LISTEN with --workers, or in-process), 0 while that"
            " bus is lost and they show this process's changes only.",
        )
        up.add_metric([], 1 if self._bus.up else 0)
        yield up


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text)
    family.add_metric([], value)
    return family


def _folder_families(folders: list[FoldCounters]) -> list[Metric]:
    return [
        _counter(
            "tasktree_folded_spans",
            "Span records this process and its fold workers (--workers) folded into the tree.",
            sum(f.folded_total for f in folders),
        ),
        _counter(
            "tasktree_stall_transitions",
            "Running tasks this process and its fold workers turned stalled for lack of"
            " heartbeats.",
            sum(f.stalled_total for f in folders),
        ),
        _counter(
            "tasktree_fold_timeouts",
            "Folds cancelled by the statement timeout (this process's and its fold workers');"
            " each is retried in batches half as large.",
            sum(f.timeouts_total for f in folders),
        ),
    ]


def _fold_worker_families(workers: FoldWorkers) -> list[Metric]:
    running = GaugeMetricFamily(
        "tasktree_fold_workers",
        "Fold worker processes this server runs now (--workers N: N - 1 when none is missing; one"
        " that died is replaced after a wait that grows while they keep dying).",
    )
    running.add_metric([], workers.running)
    restarts = _counter(
        "tasktree_fold_worker_restarts",
        "Fold workers this server started in place of one that died (SIGKILL, out of memory,"
        " a crash): growing steadily, they die as they start.",
        workers.restarts,
    )
    return [running, restarts]


def _pool_families(stats: dict[str, Any]) -> list[Metric]:
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
    errors = _counter(
        "tasktree_db_pool_errors",
        "Requests for a database connection "
        "that failed (TASKTREE_POOL_TIMEOUT passed, or the pool closed).",
        stats.get("requests_errors", 0),
    )
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
            "unauthenticated (401, missing or wrong ingest token; 403, an open server named by"
            " another host) counts requests, not spans: the body of such a request is never"
            " decoded.",
            ["protocol", "reason"],
            registry=registry,
        )
        self.requests = Counter(
            "tasktree_ingest_requests",
            "OTLP export requests, by outcome: stored (answered 200; spans refused alone in"
            " partial_success are counted in tasktree_ingest_spans_rejected_total), or refused"
            " whole: overloaded (429), unavailable (503), error (500), unauthenticated (401 or"
            " 403, the body never read), malformed (400 or 415: not OTLP, or an unsupported"
            " content type or encoding), too_large (413, over TASKTREE_MAX_BODY_BYTES).  Compare"
            " refused requests with all requests, spans with spans.",
            ["protocol", "outcome"],
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
            for reason in REJECT_REASONS:
                self.rejected.labels(protocol, reason)
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(protocol, outcome)

    def count_refused(self, protocol: str, outcome: str) -> None:
        """One request refused whole before ingest (``receiver._common.RefusedExports``): its
        spans are not known.  Those refused for their token count in the spans counter too, as
        they always have (README: ``reason="unauthenticated"`` counts requests)."""
        if outcome == "unauthenticated":
            self.rejected.labels(protocol, outcome).inc()
        self.requests.labels(protocol, outcome).inc()

    def instrument(self, ingest: Ingest, protocol: str) -> Ingest:
        """``ingest`` that also counts and times each call; raises what ``ingest`` raises."""
        accepted, latency = self.accepted.labels(protocol), self.latency.labels(protocol)
        stored = self.requests.labels(protocol, "stored")

        def instrumented(batch: DecodedBatch) -> None:
            started = time.perf_counter()
            try:
                ingest(batch)
            except Exception as exc:
                reason = _reject_reason(exc)
                self.rejected.labels(protocol, reason).inc(len(batch.spans) + batch.rejected)
                self.requests.labels(protocol, reason).inc()
                raise
            finally:
                latency.observe(time.perf_counter() - started)
            stored.inc()
            accepted.inc(len(batch.spans))
            if batch.rejected:
                self.rejected.labels(protocol, "refused").inc(batch.rejected)

        return instrumented


def _reject_reason(exc: Exception) -> str:
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    return "error"
