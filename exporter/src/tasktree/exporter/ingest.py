"""Ingest: admission control in front of landing, and the wake-up call to the folder.

``Ingestor`` is the ``ingest(batch)`` callable both OTLP receivers use.  It refuses work it cannot
take (429 when the unfolded backlog is over its limit, 503 when PostgreSQL is unreachable), drops
the spans of new tasks of runs at the per-run cap with a visible reason (``partial_success``), and
returns only after the rest is committed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import psycopg_pool

from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.receiver.records import DecodedBatch, SpanRow
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import partitions
from tasktree.exporter.store.landing import ResourceIds, land, waiting_at_most
from tasktree.exporter.store.pool import connection

_BACKLOG_TTL_S = 1.0
# Once a request found the store unavailable, the next ones for this long wait at most
# _DOWN_WAIT_S for a connection (not the pool's timeout, 5 s) and are told to retry after
# _DOWN_RETRY_AFTER_S: OpenTelemetry's exporters retry only within their export timeout (10 s by
# default), and 5 s of waiting plus "Retry-After: 5" made them give a batch up after its first
# attempt, losing the spans of any outage (a probe lost 900 of 2,400 to 30 s of it).
_DOWN_FOR_S = 5.0
_DOWN_WAIT_S = 0.5
_DOWN_RETRY_AFTER_S = 1.0

# Runs of a batch that may pass their cap of tasks with it: those holding more folded tasks than
# the cap less the batch's largest number of records of one run (refined per run in Python), with
# the day partition their tasks live in.  The batch's trace ids travel as one bytea of 16-byte ids
# (the decoder admits no other length): psycopg dumps a list param one element at a time in
# Python, 4 µs a span for a request of thousands of one-span runs.
_RUNS_NEAR_CAP = """
SELECT trace_id, run_day, task_count FROM runs
WHERE trace_id = ANY(ARRAY(SELECT substring(%(ids)s::bytea FROM i * 16 + 1 FOR 16)
                           FROM generate_series(0, length(%(ids)s::bytea) / 16 - 1) AS i))
  AND task_count > %(cap)s - %(most)s
"""

# How many new tasks of a run wait in the landing, not folded yet: counted up to ``room`` (all
# a run near its cap may still take), so the cost follows the batch, not the backlog.
_LANDED_NEW_TASKS = f"""
SELECT count(*) FROM (
    SELECT DISTINCT l.span_id FROM span_landing l
    WHERE l.trace_id = %(trace)s
      AND NOT EXISTS (SELECT FROM {partitions.TASKS_OF_DAY} t
                      WHERE t.span_id = l.span_id AND t.trace_id = l.trace_id
                        AND t.run_day = %(day)s)
    LIMIT %(room)s) AS new
"""  # noqa: S608 (the partition's name: see partitions.of_day)
_LANDED_TASKS_OF_NEW_RUN = """
SELECT count(*) FROM (SELECT DISTINCT span_id FROM span_landing WHERE trace_id = %(trace)s
                      LIMIT %(room)s) AS new
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

_LANDED_SPANS = """
SELECT k.trace_id, k.span_id
FROM unnest(%(traces)s::bytea[], %(spans)s::bytea[]) AS k(trace_id, span_id)
WHERE EXISTS (SELECT FROM span_landing l WHERE l.trace_id = k.trace_id AND l.span_id = k.span_id)
"""

# The refused spans of new tasks, counted on their runs (``runs.dropped_spans``); a run not
# folded yet gets its row now (the fold fills in the rest, keeping its day).
# Each refused task counted once: a resend, or a later record of a task refused before, adds 0.
_COUNT_DROPPED = """
WITH refused AS (
    INSERT INTO refused_over_cap (trace_id, span_id)
    SELECT * FROM unnest(%s::bytea[], %s::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING trace_id
)
INSERT INTO runs AS r (trace_id, dropped_spans)
SELECT trace_id, count(*) FROM refused GROUP BY trace_id
ON CONFLICT (trace_id) DO UPDATE SET dropped_spans = r.dropped_spans + EXCLUDED.dropped_spans
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
        self._down_until = 0.0  # monotonic: until then the store counts as just found down
        self._lock = threading.Lock()

    def __call__(self, batch: DecodedBatch) -> None:
        if not batch.spans:
            return
        down = time.monotonic() < self._down_until
        try:
            with connection(self._pool, timeout=_DOWN_WAIT_S if down else None) as conn:
                self._refuse_when_backlogged(conn)
                self._drop_over_run_cap(conn, batch)
                land(conn, batch.spans, self._resource_ids, time.time_ns())
        except StoreUnavailable as exc:
            self._down_until = time.monotonic() + _DOWN_FOR_S
            raise StoreUnavailable(exc.message, retry_after=_DOWN_RETRY_AFTER_S) from exc
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
        """Refuse the new tasks a run has no room for under ``max_spans_per_run``, and count
        them.  Its room is the cap less its folded tasks and its new tasks landed and not folded
        yet; a batch's new tasks take it in their order.  Records of the tasks a run keeps
        (final records, snapshots, heartbeats) are accepted: refusing them left those tasks
        running, then stalled, for ever."""
        cap = self._settings.max_spans_per_run
        near = _runs_near_cap(conn, batch, cap)
        if not near:
            return
        kept = _kept_spans(conn, [s for s in batch.spans if s.trace_id in near],
                           {t: day for t, (day, _) in near.items()})  # fmt: skip
        room = {t: cap - folded - _landed_new_tasks(conn, t, day, cap - folded)
                for t, (day, folded) in near.items()}  # fmt: skip
        taken: set[tuple[bytes, bytes]] = set()

        def refused(s: SpanRow) -> bool:
            key = (s.trace_id, s.span_id)
            if s.trace_id not in near or key in kept or key in taken:
                return False
            if room[s.trace_id] <= 0:
                return True
            room[s.trace_id] -= 1
            taken.add(key)
            return False

        keep = [not refused(s) for s in batch.spans]  # in order: the first new tasks fit
        dropped = [s for s, k in zip(batch.spans, keep, strict=True) if not k]
        if not dropped:
            return
        batch.spans = [s for s, k in zip(batch.spans, keep, strict=True) if k]
        batch.reject(
            len(dropped),
            f"run holds its limit of {cap} tasks (TASKTREE_MAX_SPANS_PER_RUN); "
            "spans of new tasks are refused (those of its tasks are still accepted)",
        )
        with conn.transaction():
            conn.execute(
                _COUNT_DROPPED, ([s.trace_id for s in dropped], [s.span_id for s in dropped])
            )


def _runs_near_cap(conn, batch: DecodedBatch, cap: int) -> dict[bytes, tuple[int | None, int]]:
    """The batch's runs whose folded tasks and records in the batch add up to more than ``cap``:
    trace id → (day of their tasks, None for a run not folded yet; folded tasks)."""
    per_run = Counter(s.trace_id for s in batch.spans)
    rows = conn.execute(
        _RUNS_NEAR_CAP, {"ids": b"".join(per_run), "cap": cap, "most": max(per_run.values())}
    )
    known = {bytes(t): (day, folded) for t, day, folded in rows}
    near = {t: known[t] for t in known if known[t][1] + per_run[t] > cap}
    near.update((t, (None, 0)) for t, n in per_run.items() if n > cap and t not in known)
    return near


def _landed_new_tasks(conn, trace: bytes, day: int | None, room: int) -> int:
    """How many new tasks of run ``trace`` wait in the landing, counted up to ``room``."""
    if room <= 0:
        return 0
    params = {"trace": trace, "day": day, "room": room}
    if day is None:
        return conn.execute(_LANDED_TASKS_OF_NEW_RUN, params).fetchone()[0]
    return conn.execute(partitions.of_day(conn, _LANDED_NEW_TASKS, day), params).fetchone()[0]


def _kept_spans(
    conn, spans: list[SpanRow], run_days: dict[bytes, int | None]
) -> set[tuple[bytes, bytes]]:
    """(trace id, span id) of ``spans`` whose task their run keeps already: a task row, or a
    record landed (a run not folded yet, day None, has only the latter)."""
    by_day: dict[int | None, list[SpanRow]] = defaultdict(list)
    for s in spans:
        by_day[run_days[s.trace_id]].append(s)
    kept: set[tuple[bytes, bytes]] = set()
    for day, of_day in by_day.items():
        statement = _LANDED_SPANS if day is None else partitions.of_day(conn, _KEPT_SPANS, day)
        rows = conn.execute(
            statement,
            {"traces": [s.trace_id for s in of_day], "spans": [s.span_id for s in of_day],
             "day": day},
        )  # fmt: skip
        kept.update((bytes(t), bytes(s)) for t, s in rows)
    return kept
