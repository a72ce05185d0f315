"""Ingest: admission control in front of landing, and the wake-up call to the folder.

``Ingestor`` is the ``ingest(batch)`` callable both OTLP receivers use.  It refuses work it cannot
take (429 when the unfolded backlog is over its limit, 503 when PostgreSQL is unreachable), drops
spans of runs over the per-run cap with a visible reason (``partial_success``), and returns only
after the rest is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg_pool

from tasktree.exporter.errors import Overloaded
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.store.pool import connection

_BACKLOG_TTL_S = 1.0


class Ingestor:
    """Thread-safe; one per process.  ``on_landed`` is called after each successful commit."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        settings: Settings,
        on_landed: Callable[[int], None] = lambda n: None,
    ):
        self._pool = pool
        self._settings = settings
        self._on_landed = on_landed
        self._resource_ids = ResourceIds()
        self._backlog = (0.0, 0)  # (measured at, spans)
        self._lock = threading.Lock()

    def __call__(self, batch: DecodedBatch) -> None:
        if not batch.spans:
            return
        with connection(self._pool) as conn:
            self._refuse_when_backlogged(conn)
            self._drop_over_run_cap(conn, batch)
            land(conn, batch.spans, self._resource_ids, time.time_ns())
        self._on_landed(len(batch.spans))

    def _refuse_when_backlogged(self, conn) -> None:
        measured_at, backlog = self._backlog
        if time.monotonic() - measured_at > _BACKLOG_TTL_S:
            row = conn.execute("SELECT max(id) - min(id) + 1 FROM span_landing").fetchone()
            backlog = row[0] or 0
            self._backlog = (time.monotonic(), backlog)
        if backlog > self._settings.max_backlog_spans:
            raise Overloaded(
                f"{backlog} received spans are waiting to be folded into the tree "
                "(limit TASKTREE_MAX_BACKLOG_SPANS="
                f"{self._settings.max_backlog_spans}); retry later",
                retry_after=2.0,
            )

    def _drop_over_run_cap(self, conn, batch: DecodedBatch) -> None:
        """Refuse spans of runs that already hold ``max_spans_per_run`` tasks, and count them."""
        cap = self._settings.max_spans_per_run
        traces = list({s.trace_id for s in batch.spans})
        rows = conn.execute(
            "SELECT trace_id, task_count FROM runs WHERE trace_id = ANY(%s) AND task_count >= %s",
            (traces, cap),
        ).fetchall()
        full = {bytes(t) for t, _ in rows}
        if not full:
            return
        dropped = [s.trace_id for s in batch.spans if s.trace_id in full]
        batch.spans = [s for s in batch.spans if s.trace_id not in full]
        batch.reject(
            len(dropped),
            f"run over the limit of {cap} tasks (TASKTREE_MAX_SPANS_PER_RUN); "
            "its further spans are refused",
        )
        with conn.transaction():
            conn.execute(
                "UPDATE runs SET dropped_spans = dropped_spans + c.n FROM "
                "(SELECT t, count(*) AS n FROM unnest(%s::bytea[]) t GROUP BY t) c"
                " WHERE trace_id = c.t",
                (dropped,),
            )
