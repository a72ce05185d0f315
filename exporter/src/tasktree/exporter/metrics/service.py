"""``ServiceMetrics``: everything ``/metrics`` shows for one ``tasktree serve`` process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg_pool
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

from tasktree.exporter.metrics.process import IngestMetrics, LiveBusUp, ProcessStats
from tasktree.exporter.metrics.replica import ReplicaLag, SynchronousStandbys
from tasktree.exporter.metrics.store_metrics import StoreMetrics
from tasktree.exporter.receiver._common import Ingest
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.metric_totals import FoldTotals
from tasktree.exporter.store.replication import ReadRoute

if TYPE_CHECKING:
    from tasktree.exporter.background import Folder
    from tasktree.exporter.fold_workers import FoldWorkers
    from tasktree.exporter.live import LocalBus

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Everything ``/metrics`` shows for one ``tasktree serve`` process, on its own registry.

    Subscribes to ``folder`` (when given) so finished tasks reach ``metric_totals``.
    """

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        settings: Settings,
        folder: Folder | None = None,
        registry: CollectorRegistry = REGISTRY,
        reads: ReadRoute | None = None,
    ):
        self.registry = registry
        self.totals = FoldTotals(
            pool, settings.metrics_task_names, settings.metrics_max_jobs, settings.metrics_job_ttl
        )
        if folder is not None:
            folder.subscribe_folds(self.totals)
        self.ingest = IngestMetrics(registry)
        self.store = StoreMetrics(
            pool,
            max_jobs=settings.metrics_max_jobs,
            job_ttl_s=settings.metrics_job_ttl,
            reads=reads,
        )
        if reads is not None and reads.standby is not None:  # issue 17: --read-database-url
            registry.register(ReplicaLag(reads))
        # issue 17: a synchronous standby lost (after a failover) shows
        registry.register(
            SynchronousStandbys(pool, settings.require_sync_standby, lambda: self.store.up)
        )
        self._process = ProcessStats(pool, folder, self.totals)
        registry.register(self._process)
        if registry is not REGISTRY:  # the global registry has these already
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._extra: list[Collector] = []

    def exposition(self) -> bytes:
        """The /metrics page (text format 0.0.4): this process's registry, then the store's (read
        first: the registry's collectors that read PostgreSQL skip it when the store is down)."""
        store = self.store.text()
        return generate_latest(self.registry) + store

    def add_fold_workers(self, workers: FoldWorkers) -> None:
        """Count the folding (and failed job-series writes) of the fold workers this process
        started (``--workers``) as its own: they serve no /metrics."""
        self._process.add_fold_workers(workers)

    def watch_live_bus(self, bus: LocalBus) -> None:
        """Show whether the live pages hear of other processes' changes (Redis lost: not)."""
        self.registry.register(LiveBusUp(bus))

    def instrument_ingest(self, ingest: Ingest, protocol: str) -> Ingest:
        return self.ingest.instrument(ingest, protocol)

    def add_collector(self, collector: Collector) -> None:
        """Show another collector's families too (e.g. the docker hosts'), once."""
        if collector not in self._extra:
            self._extra.append(collector)
            self.registry.register(collector)
