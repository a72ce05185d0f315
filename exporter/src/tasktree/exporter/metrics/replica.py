"""Replication families (issue 17), built fresh at each scrape.

* ``ReplicaLag`` (with ``--read-database-url``): whether a read replica answers, and how far
  behind it is (``ReadRoute`` measures at most once a second);
* ``SynchronousStandbys``: how many synchronous standbys the primary has now, and whether
  ``TASKTREE_REQUIRE_SYNC_STANDBY`` requires one.  Start-up refuses none when it does; after a
  failover the promoted server often has none, and a 200 is then on one machine only until one
  is attached again (alert TasktreeNoSynchronousStandby).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import psycopg
import psycopg_pool
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.metrics.store_metrics import STORE_WAIT_S
from tasktree.exporter.store.pool import connection
from tasktree.exporter.store.replication import ReadRoute, sync_state

__all__ = ["ReplicaLag", "SynchronousStandbys"]

logger = logging.getLogger(__name__)


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


class SynchronousStandbys(Collector):
    """Whether commits wait for a synchronous standby; read only when ``store_up()`` says this
    scrape's read of PostgreSQL worked (a second wait for a dead database would make the scrape
    outlast Prometheus's timeout)."""

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, required: bool, store_up: Callable[[], bool]
    ):
        self._pool = pool
        self._required = required
        self._store_up = store_up

    def collect(self) -> Iterator[GaugeMetricFamily]:
        required = GaugeMetricFamily(
            "tasktree_database_synchronous_standbys_required",
            "1 when TASKTREE_REQUIRE_SYNC_STANDBY is set: the primary must have a synchronous "
            "standby for a 200 to mean two machines.",
        )
        required.add_metric([], 1.0 if self._required else 0.0)
        yield required
        if not self._store_up():
            return
        try:
            with connection(self._pool, STORE_WAIT_S) as conn:
                state = sync_state(conn)
        except (StoreUnavailable, psycopg.Error) as exc:  # tasktree_store_up says it already
            logger.debug("synchronous standbys not read: %s", exc)
            return
        family = GaugeMetricFamily(
            "tasktree_database_synchronous_standbys",
            "Synchronous standbys streaming from the primary tasktree writes to, that commits "
            "wait for; 0: a 200 means the spans are on one machine only.",
        )
        family.add_metric([], state.synchronous_standbys if state.protected else 0)
        yield family
