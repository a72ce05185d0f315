"""The read replica's families (issue 17): whether one answers, and how far behind it is.

Shown only when ``--read-database-url`` is set; built fresh at each scrape from ``ReadRoute``
(which measures at most once a second).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasktree.exporter.store.replication import ReadRoute

__all__ = ["ReplicaLag"]


class ReplicaLag(Collector):
    def __init__(self, reads: ReadRoute):
        self._reads = reads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = self._reads.lag()
        up = GaugeMetricFamily(
            "tasktree_read_replica_up",
            "Whether a read replica (TASKTREE_READ_DATABASE_URL) answers: 1; 0 while the API, "
            "pages and /metrics read from the primary instead.",
        )
        up.add_metric([], 0.0 if lag is None else 1.0)
        yield up
        if lag is not None:
            behind = GaugeMetricFamily(
                "tasktree_read_replica_lag_seconds",
                "How far what the API, pages and /metrics show is behind the primary: the age of "
                "the last transaction the read replica replayed, 0 when it replayed all it "
                "received.",
            )
            behind.add_metric([], lag)
            yield behind
