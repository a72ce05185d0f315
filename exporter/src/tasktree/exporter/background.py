"""The service's background work: folding landed spans into the tree and sweeping stalled tasks.

Runs on ``TASKTREE_FOLD_THREADS`` daemon threads per process, each on its own connection; several
processes (or hosts) can run it against the same database at once.  Runs are spread over fold
lanes by trace id and a folder holds a lane while it folds it, so folders work on different runs
side by side (claims use SKIP LOCKED; a run's tree is written under its lane's lock).
PostgreSQL does most of a fold's work, so threads fold in parallel even though Python runs one at
a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
import psycopg_pool

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import locks, partitions
from tasktree.exporter.store.fold import (
    FoldResult,
    fold_batch,
    lanes_with_records,
    sweep_stalled,
)
from tasktree.exporter.store.landing import vacuum, waiting_at_most
from tasktree.exporter.store.locks import LANES
from tasktree.exporter.store.pool import connection, scalar
from tasktree.exporter.store.quarantine import describe, is_record_fault

logger = logging.getLogger(__name__)

# Thread 0's poll, between passes that did not fold a full batch: it finds what other processes
# landed (a landing in this process rings the doorbell and wakes a thread at once).
_IDLE_WAIT_S = 0.25
# The other threads wait for a ring: a landing in this process, or a thread that found several
# lanes with records.  When they polled too, they found only what thread 0 finds, at 2 × 4 probes
# a second (an idle service spent about 8 ms of its CPU and 2 ms of PostgreSQL's a second).
_HELPER_IDLE_WAIT_S = 2.5
_GATHER_S = 0.02  # after a wake: the requests in flight land too, for fewer and larger folds
_SWEEP_EVERY_S = 1.0
_RETENTION_EVERY_S = 600.0
_MAX_BACKOFF_S = 5.0
_LANE_BY_LANE_AFTER_FAULT_S = 60.0
VACUUM_LANDING_AFTER = 100_000
"""Records folded by one process between two VACUUMs of ``span_landing`` it makes.  A VACUUM
reads what the folds left since the one before: about 0.5 µs of PostgreSQL CPU a record
(50 ms after 100,000)."""


class _Doorbell:
    """Wakes one waiting folder thread per ring.

    A landing used to wake every folder thread; each then probed the lanes, and all but one
    found nothing to do (issue 16, bench/README.md "What one small request costs").  A ring that
    no thread is waiting for is kept for the next one to wait, so a landing during a fold is
    never missed.  A thread that finds records in several lanes rings too, so that an idle
    thread folds the lanes it has not reached yet; and a thread that folded a full batch goes
    again at once without waiting.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._rung = False
        self._closed = False

    def ring(self) -> None:
        with self._condition:
            self._rung = True
            self._condition.notify()

    def close(self) -> None:
        """Wake every thread, now and at every later ``wait``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def wait(self, timeout: float) -> bool:
        """Whether a ring (or ``close``) ended the wait, rather than ``timeout`` seconds."""
        with self._condition:
            if not (self._rung or self._closed):
                self._condition.wait(timeout)
            rung, self._rung = self._rung or self._closed, False
            return rung


class Folder:
    """Folds until stopped; ``wake()`` after landing makes new spans show within milliseconds."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, settings: Settings):
        self._pool = pool
        self._settings = settings
        self._doorbell = _Doorbell()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"tasktree-folder-{i}", daemon=True)
            for i in range(settings.fold_threads)
        ]
        self.folded_total = 0
        self.stalled_total = 0
        self._listeners: list[Callable[[tuple[bytes, ...]], None]] = []
        self._fold_listeners: list[Callable[[FoldResult], None]] = []  # issue 5: /metrics
        self._after_fold = threading.Lock()  # totals and listeners: one folder thread at a time
        self._lanes_in_use: set[int] = set()  # lanes a thread of this process is folding
        self._lanes_lock = threading.Lock()
        self._lane_limits = [settings.fold_batch] * LANES  # smaller after a statement timeout
        self._together_after = 0.0  # monotonic: no fold of every lane before (after a timeout)
        self._folded_at_vacuum = 0  # folded_total at the last VACUUM of span_landing
        self.timeouts_total = 0  # folds cancelled by the statement timeout (then split)
        self._resumed_at = -float("inf")  # monotonic: when folding last resumed after an outage

    def subscribe(self, listener: Callable[[tuple[bytes, ...]], None]) -> None:
        """Call ``listener(trace_ids)`` on a folder thread after each commit that changed runs.

        Listeners are called one at a time; they must be quick and must not raise (a raise is
        logged and ignored).
        """
        self._listeners.append(listener)

    def subscribe_folds(self, listener: Callable[[FoldResult], None]) -> None:
        """Call ``listener(result)`` on a folder thread after each committed fold of records,
        and about once a second with an empty result (so that a listener that gathers results
        can write them out when folds stop); one at a time, like ``subscribe``."""
        self._fold_listeners.append(listener)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self, _count: int = 0) -> None:
        self._doorbell.ring()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._doorbell.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, number: int) -> None:
        """One folder thread; the first also sweeps stalled tasks and applies retention."""
        backoff, last_sweep, last_retention = 0.0, 0.0, 0.0
        paused_at: float | None = None  # monotonic: the first failure of the current outage
        next_lane = number * LANES // len(self._threads)  # threads start on different lanes
        while not self._stop.is_set():
            failed: Exception | None = None
            try:
                next_lane = (next_lane + 1) % LANES
                folded = self._fold_once(next_lane)
                backoff = 0.0
            except (StoreUnavailable, psycopg.Error) as exc:
                failed = exc
            if failed is None and paused_at is not None:  # the log shows the outage end
                logger.warning("folding resumed after %.1fs", time.monotonic() - paused_at)
                paused_at = None
                self._resumed_at = time.monotonic()
            if number == 0:  # also when folds fail: killed tasks must still turn stalled
                store_away = isinstance(failed, StoreUnavailable)
                last_sweep, last_retention = self._housekeep(last_sweep, last_retention, store_away)
            if failed is not None:
                paused_at = paused_at or time.monotonic()
                backoff = min(_MAX_BACKOFF_S, backoff * 2 or 0.1)
                logger.warning("folding paused for %.1fs: %s", backoff, failed)
                self._stop.wait(backoff)
                continue
            # A full batch: go again at once.  Otherwise what this process landed since the pass
            # began has rung the doorbell (the ring is kept), and thread 0's poll finds the rest.
            if folded < self._settings.fold_batch:
                idle_wait = _IDLE_WAIT_S if number == 0 else _HELPER_IDLE_WAIT_S
                if self._doorbell.wait(idle_wait):
                    self._stop.wait(_GATHER_S)

    def _housekeep(
        self, last_sweep: float, last_retention: float, store_away: bool
    ) -> tuple[float, float]:
        """Thread 0's work beside folding, when due: the stall sweep and the landing's vacuum,
        and retention; returns when each last ran."""
        try:
            if time.monotonic() - last_sweep >= _SWEEP_EVERY_S:
                self._sweep_once(store_away)
                self._vacuum_landing_when_due()
                last_sweep = time.monotonic()
            if time.monotonic() - last_retention >= _RETENTION_EVERY_S:
                last_retention = time.monotonic()
                self.apply_retention()
        except (StoreUnavailable, psycopg.Error) as exc:
            logger.warning("stall sweep or retention failed: %s", exc)
        except Exception:  # a fault of tasktree's: logged, and the folder thread goes on
            logger.exception("stall sweep or retention failed")
        return last_sweep, last_retention

    def _fold_once(self, first_lane: int) -> int:
        """One pass over the lanes, from ``first_lane`` on; returns the most records folded from
        one lane, so a full batch means "go again at once"."""
        most = 0
        with connection(self._pool) as conn:
            busy = lanes_with_records(conn)
            together = self._few_in_several_lanes(conn, busy)
        if together:
            folded = self._fold_lanes_together(busy)
            if folded is not None:
                return folded
        if len(busy) > 1:
            self._doorbell.ring()  # an idle thread takes the lanes this one has not reached
        for lane in [(first_lane + i) % LANES for i in range(LANES)]:
            if lane in busy and self._take_lane(lane):
                try:
                    most = max(most, self._fold_lane(lane))
                finally:
                    with self._lanes_lock:
                        self._lanes_in_use.discard(lane)
        return most

    def _few_in_several_lanes(self, conn: psycopg.Connection, busy: set[int]) -> bool:
        """Whether one fold should take every lane's records: a request of many runs lands in up
        to ``LANES`` lanes, and a fold per lane paid a fold's fixed costs (about 3 ms of the
        server's CPU and 4 ms of PostgreSQL's) that many times over for it (issue 16).  Only for
        a backlog one fold takes whole, and never for a lane whose folds were cut short."""
        if len(busy) < 2 or time.monotonic() < self._together_after:
            return False
        if any(self._lane_limits[lane] < self._settings.fold_batch for lane in busy):
            return False
        return waiting_at_most(conn) <= self._settings.fold_batch

    def _fold_lanes_together(self, busy: set[int]) -> int | None:
        """One fold of every lane (``None``: another thread of this process holds one of them,
        so fold lane by lane)."""
        taken = [lane for lane in sorted(busy) if self._take_lane(lane)]
        try:
            return self._fold_lane(None) if len(taken) == len(busy) else None
        finally:
            with self._lanes_lock:
                self._lanes_in_use.difference_update(taken)

    def _take_lane(self, lane: int) -> bool:
        """Whether this thread may fold ``lane``: not while another thread of this process does
        (the lane's lock would refuse it, after a transaction's worth of round trips)."""
        with self._lanes_lock:
            if lane in self._lanes_in_use:
                return False
            self._lanes_in_use.add(lane)
            return True

    def _fold_lane(self, lane: int | None) -> int:
        """Fold ``lane``'s records (``None``: every lane's, in one fold)."""
        limit = self._settings.fold_batch if lane is None else self._lane_limits[lane]
        with connection(self._pool) as conn:
            try:  # inside the block: connection() would report a timeout as an outage
                result = fold_batch(
                    conn,
                    limit=limit,
                    timeout_s=self._settings.fold_timeout,
                    stall_after_s=self._settings.stall_after,
                    max_depth=self._settings.max_depth,
                    lane=lane,
                    set_aside=limit == 1 and lane is not None,
                )
            except psycopg.errors.QueryCanceled as exc:
                with self._after_fold:
                    self.timeouts_total += 1
                self._split(lane, limit, f"was cancelled ({str(exc).strip()})")
                return self._settings.fold_batch  # as a full batch: again at once, smaller
            except Exception as exc:
                if not is_record_fault(exc):
                    raise
                self._split(lane, limit, f"failed ({describe(exc)})")
                return self._settings.fold_batch
        if result.set_aside:
            logger.error(
                "lane %s: a record that fails to fold alone was set aside (`tasktree quarantine`"
                " lists it; fix the cause, then `tasktree quarantine --requeue`): %s",
                lane,
                result.fault,
            )
            return self._settings.fold_batch  # the next at once, alone: more bad ones may follow
        if lane is not None:
            self._lane_limits[lane] = min(self._settings.fold_batch, limit * 2)
        with self._after_fold:
            self.folded_total += result.records
            self._notify(result.trace_ids)
            if result.records:
                self._call(self._fold_listeners, result)
        # A batch as large as this lane's limit (smaller after a split) is a full one: go again
        # at once, or the lane would wait out an idle poll per batch.
        return self._settings.fold_batch if result.records >= limit else result.records

    def _split(self, lane: int | None, limit: int, what_happened: str) -> None:
        """A fold that the statement timeout cancelled, or that failed for a reason its records
        may cause, is retried in halves (down to one record, which is set aside if it fails
        alone: ``store/quarantine.py``), so that neither a batch too large to fold in time nor
        one bad record blocks its lane for ever; after a fold of every lane, lane by lane for a
        while."""
        if lane is None:
            self._together_after = time.monotonic() + _LANE_BY_LANE_AFTER_FAULT_S
            logger.warning(
                "folding %d records of every lane at once %s; lane by lane for the next %.0f s",
                limit,
                what_happened,
                _LANE_BY_LANE_AFTER_FAULT_S,
            )
            return
        self._lane_limits[lane] = max(1, limit // 2)
        logger.warning(
            "folding %d records of lane %d %s; folding them %d at a time",
            limit,
            lane,
            what_happened,
            self._lane_limits[lane],
        )

    def apply_retention(self) -> list[int]:
        """Drop expired day partitions (when TASKTREE_RETENTION_DAYS is set); returns the days."""
        if self._settings.retention_days is None:
            return []
        with connection(self._pool) as conn:
            # A session lock: retention drops partitions in many short transactions.
            if not scalar(conn, locks.TRY_SESSION, locks.RETENTION):
                return []  # another process is at it
            try:
                return partitions.drop_expired(conn, self._settings.retention_days)
            finally:
                conn.execute(locks.RELEASE_SESSION, locks.RETENTION)

    def _sweep_once(self, store_away: bool) -> None:
        # Heartbeats sent while PostgreSQL was away were refused, not late: a task is stalled
        # only once it has missed them for stall_after since the store came back (a probe saw a
        # job that ran on shown stalled for 16 s after an outage of 75 s).
        result = FoldResult(0)
        recovering = time.monotonic() - self._resumed_at < self._settings.stall_after
        if not (store_away or recovering):
            with connection(self._pool) as conn:
                result = sweep_stalled(conn, stall_after_s=self._settings.stall_after)
        with self._after_fold:
            self.stalled_total += result.records
            self._notify(result.trace_ids)
            self._call(self._fold_listeners, FoldResult(0))

    def _vacuum_landing_when_due(self) -> None:
        """Vacuum ``span_landing`` after every ``VACUUM_LANDING_AFTER`` records this process
        folded (``store/landing.py`` says why: with autovacuum off, the cost of finding the next
        records grew with every record ever landed)."""
        if self.folded_total - self._folded_at_vacuum < VACUUM_LANDING_AFTER:
            return
        self._folded_at_vacuum = self.folded_total
        with connection(self._pool) as conn:
            vacuum(conn)

    def _notify(self, trace_ids: tuple[bytes, ...]) -> None:
        if trace_ids:
            self._call(self._listeners, trace_ids)

    @staticmethod
    def _call(listeners, arg) -> None:
        for listener in listeners:
            try:
                listener(arg)
            except Exception:  # a broken listener must not stop folding
                logger.exception("fold listener failed")
