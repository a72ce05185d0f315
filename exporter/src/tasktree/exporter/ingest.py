"""Ingest: admission control in front of landing, and the wake-up call to the folder.

``Ingestor`` is the ``ingest(batch)`` callable both OTLP receivers use.  It refuses work it cannot
take (429 when the unfolded backlog is over its limit, 503 when PostgreSQL is unreachable), drops
the spans of new tasks of runs at the per-run cap with a visible reason (``partial_success``), and
returns only after the rest is committed.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

import psycopg_pool

from tasktree.exporter.errors import Overloaded
from tasktree.exporter.receiver.records import DecodedBatch, SpanRow
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import partitions
from tasktree.exporter.store.landing import ResourceIds, land, waiting_at_most
from tasktree.exporter.store.pool import connection

_BACKLOG_TTL_S = 1.0

# Runs of a batch that hold their cap of tasks, and the day partition their tasks live in.
# task_count counts folded tasks only: records landed and not folded yet may add a few (soft cap).
# The batch's trace ids travel as one bytea of 16-byte ids (the decoder admits no other length):
# psycopg dumps a list param one element at a time in Python, 4 µs a span for a request of
# thousands of one-span runs.
_FULL_RUNS = """
SELECT trace_id, run_day FROM runs
WHERE trace_id = ANY(ARRAY(SELECT substring(%(ids)s::bytea FROM i * 16 + 1 FOR 16)
                           FROM generate_series(0, length(%(ids)s::bytea) / 16 - 1) AS i))
  AND task_count >= %(cap)s
"""

# Which spans of full runs of one day are tasks the run keeps: a row in ``tasks`` (its primary
# key, in the day's partition, named: see partitions.TASKS_OF_DAY) or a record landed and not
# folded yet (index ``span_landing_span``).  One index probe per span, so the cost follows the
# batch, never the size of the run, the backlog or the days kept.  A missing-parent placeholder is
# a row too: the record that fills it in is accepted.
_KEPT_SPANS = f"""
SELECT k.trace_id, k.span_id
FROM unnest(%(traces)s::bytea[], %(spans)s::bytea[]) AS k(trace_id, span_id)
WHERE EXISTS (SELECT FROM {partitions.TASKS_OF_DAY} t
              WHERE t.span_id = k.span_id AND t.trace_id = k.trace_id AND t.run_day = %(day)s)
   OR EXISTS (SELECT FROM span_landing l WHERE l.trace_id = k.trace_id AND l.span_id = k.span_id)
"""  # noqa: S608 (the partition's name: see partitions.of_day)

# The refused spans of new tasks, counted on their runs (``runs.dropped_spans``).
_COUNT_DROPPED = """
UPDATE runs SET dropped_spans = dropped_spans + c.n
FROM (SELECT t, count(*) AS n FROM unnest(%s::bytea[]) t GROUP BY t) c
WHERE trace_id = c.t
"""


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
            backlog = waiting_at_most(conn)
            self._backlog = (time.monotonic(), backlog)
        if backlog > self._settings.max_backlog_spans:
            raise Overloaded(
                f"{backlog} received spans are waiting to be folded into the tree "
                "(limit TASKTREE_MAX_BACKLOG_SPANS="
                f"{self._settings.max_backlog_spans}); retry later",
                retry_after=2.0,
            )

    def _drop_over_run_cap(self, conn, batch: DecodedBatch) -> None:
        """Refuse the new tasks of runs that already hold ``max_spans_per_run`` tasks, and count
        them.  Records of the tasks such a run keeps (final records, snapshots, heartbeats) are
        accepted: refusing them left those tasks running, then stalled, for ever."""
        cap = self._settings.max_spans_per_run
        traces = b"".join({s.trace_id for s in batch.spans})
        full = {bytes(t): day for t, day in conn.execute(_FULL_RUNS, {"ids": traces, "cap": cap})}
        if not full:
            return
        kept = _kept_spans(conn, [s for s in batch.spans if s.trace_id in full], full)

        def new_task(s: SpanRow) -> bool:
            return s.trace_id in full and (s.trace_id, s.span_id) not in kept

        dropped = [s.trace_id for s in batch.spans if new_task(s)]
        if not dropped:
            return
        batch.spans = [s for s in batch.spans if not new_task(s)]
        batch.reject(
            len(dropped),
            f"run holds its limit of {cap} tasks (TASKTREE_MAX_SPANS_PER_RUN); "
            "spans of new tasks are refused (those of its tasks are still accepted)",
        )
        with conn.transaction():
            conn.execute(_COUNT_DROPPED, (dropped,))


def _kept_spans(conn, spans: list[SpanRow], run_days: dict[bytes, int]) -> set[tuple[bytes, bytes]]:
    """(trace id, span id) of ``spans`` whose task their run keeps already."""
    by_day: dict[int, list[SpanRow]] = defaultdict(list)
    for s in spans:
        by_day[run_days[s.trace_id]].append(s)
    kept: set[tuple[bytes, bytes]] = set()
    for day, of_day in by_day.items():
        rows = conn.execute(
            partitions.of_day(conn, _KEPT_SPANS, day),
            {"traces": [s.trace_id for s in of_day], "spans": [s.span_id for s in of_day],
             "day": day},
        )
        kept.update((bytes(t), bytes(s)) for t, s in rows)
    return kept
