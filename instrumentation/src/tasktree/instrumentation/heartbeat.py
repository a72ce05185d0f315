"""The span processor behind live tasks: running snapshots, heartbeats and a bounded export queue.

One background thread per process does all the network work.  It sends a running snapshot of
every span still running ``snapshot_delay`` seconds after it started, then one every
``heartbeat_interval`` seconds, and (unless ``export_finals=False``) exports the final records of
ended spans in batches.  The queue of final records is bounded.  A job's thread that ends a task
while it is full waits for the sender to take it, as long as the sink answers (at most the flush
timeout): a sink that is up must not lose records to a tight loop faster than it.  When the sink
is down (or stuck retrying) nothing on the job's threads waits: the oldest records are dropped, a
failed export backs off exponentially, and the number of records not delivered is logged.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import weakref
from collections.abc import Callable
from time import monotonic, sleep

from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tasktree.instrumentation import _settings
from tasktree.instrumentation.environment_variables import (
    TASKTREE_FLUSH_TIMEOUT,
    TASKTREE_HEARTBEAT_INTERVAL,
    TASKTREE_SNAPSHOT_DELAY,
)
from tasktree.instrumentation.snapshot import ABANDONED_MESSAGE, abandoned_record, running_snapshot

_logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_SNAPSHOT_DELAY = 1.0
DEFAULT_FLUSH_TIMEOUT = 5.0
_DEFAULT_SCHEDULE_DELAY = 1.0  # final records reach the sink within about a second
_MAX_BACKOFF = 30.0
_DROP_LOG_INTERVAL = 30.0
_SINK_DOWN_EXIT_WAIT = 1.0  # at exit, one short last attempt when the sink is known to be down
_CUT_EXPORT_WAIT = 0.5  # at exit, for the export that shutdown cut short to count its records
_CLOSE_POLL = 0.05  # how often a flush, or the exit, waiting on an export sees if the sink is down
_ONE_MORE_ATTEMPT = 1.5  # the exporter retries after 1 s (± 20 %): at exit, room for that one
_STUCK_EXPORT = 2.0  # an export still going after this long is retrying: the sink is slow or down
_INF = float("inf")
# How long a hook that wakes the worker, or finds it starved, sleeps so that the worker gets the
# GIL (see LiveSpanProcessor._claim_wake_locked).
_HANDOFF = 0.0001


class _Live:
    __slots__ = ("span", "due")

    def __init__(self, span: Span, due: float):
        self.span = span
        self.due = due


class LiveSpanProcessor(SpanProcessor):
    """Sends running snapshots of live spans and, optionally, their final records.

    ``exporter`` is a ``SpanExporter`` or a zero-argument callable building one; a callable is
    called again in a forked child so that parent and child never share a connection.
    ``export_finals=False`` sends snapshots only, for a ``TracerProvider`` whose own processors
    already export ended spans.  Other settings default to the ``TASKTREE_*`` and ``OTEL_BSP_*``
    environment variables.

    ``on_start`` and ``on_end`` run on the job's threads: they never raise, and they wait for
    nothing but a 0.1 ms sleep that hands the GIL to the worker when they wake it (once per pass
    of the worker) or find it starved.
    """

    def __init__(
        self,
        exporter: SpanExporter | Callable[[], SpanExporter],
        *,
        export_finals: bool = True,
        heartbeat_interval: float | None = None,
        snapshot_delay: float | None = None,
        flush_timeout: float | None = None,
        max_queue_size: int | None = None,
        schedule_delay: float | None = None,
        max_export_batch_size: int | None = None,
        max_live: int = 10_000,
    ):
        # Built now, on the configuring thread: building it lazily on the worker thread could race
        # a fork and leave the child with a half-imported HTTP library.
        self._factory: Callable[[], SpanExporter] | None = None
        self._exporter: SpanExporter | None
        if isinstance(exporter, SpanExporter):
            self._exporter = exporter
        else:
            self._factory = exporter
            self._exporter = exporter()
        self._export_finals = export_finals
        # An exporter that corrects the resource's pid in a fork (tasktree's OTLP exporter) spares
        # each task there a process.pid attribute.
        self._exporter_sends_own_pid = bool(getattr(self._exporter, "sends_own_process_pid", False))
        self._interval = _settings.positive_float(
            heartbeat_interval, TASKTREE_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_INTERVAL
        )
        self._delay = _settings.positive_float(
            snapshot_delay, TASKTREE_SNAPSHOT_DELAY, DEFAULT_SNAPSHOT_DELAY, allow_zero=True
        )
        self._flush_timeout = _settings.positive_float(
            flush_timeout, TASKTREE_FLUSH_TIMEOUT, DEFAULT_FLUSH_TIMEOUT, allow_zero=True
        )
        self._max_queue = max_queue_size or _settings.positive_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = max_export_batch_size or _settings.positive_int(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512
        )
        if schedule_delay is None:
            schedule_delay = (
                _settings.positive_int(
                    "OTEL_BSP_SCHEDULE_DELAY", int(_DEFAULT_SCHEDULE_DELAY * 1000)
                )
                / 1000
            )
        self._schedule_delay = schedule_delay
        self._max_live = max_live
        self._shutdown = False
        self._reset_state()
        self._forked = False
        if hasattr(os, "register_at_fork"):
            weak_reinit = weakref.WeakMethod(self._at_fork_reinit)
            os.register_at_fork(after_in_child=lambda: (m := weak_reinit()) and m())

    # -- state -------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        # Reentrant for held_by_this_thread (a signal handler may interrupt a hook inside it).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._live: dict[int, _Live] = {}
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._queue_since: float | None = None
        self._in_flight = 0
        self._wake_at = _INF  # hooks wake the worker for work due before this (monotonic) time
        self._wake_pending = False  # a hook has woken the worker, which has not run its pass yet
        self._sleep_until = _INF
        self._backing_off = False
        self._flush_requested = 0
        self._flush_done = 0
        self._failures = 0
        self._retry_at = 0.0
        self._dropped_finals = 0
        self._dropped_snapshots = 0
        self._untracked = 0
        self._reported = (0, 0, 0)
        self._last_report = 0.0
        self._last_error = ""
        self._export_started: float | None = None
        self._close_deadline = 0.0

    def _at_fork_reinit(self) -> None:
        """In a forked child: forget the parent's spans, queue, thread and rebuildable exporter."""
        self._reset_state()
        self._forked = True
        if self._factory is not None:
            self._exporter = None

    @property
    def sink_down(self) -> bool:
        """True while the last export failed and the next attempt is not due yet, or while an
        export is retrying: it said so (``otlp.SpanExporter.retrying``), or it has been going on
        for over 2 s."""
        now = monotonic()
        if self._failures > 0 and now < self._retry_at:
            return True
        started = self._export_started
        if started is None:
            return False
        return now - started > _STUCK_EXPORT or getattr(self._exporter, "retrying", False) is True

    def held_by_this_thread(self) -> bool:
        """Whether this thread is inside the processor's lock: a signal handler running there
        interrupted a hook, and must not wait for work that needs the lock (closing, flushing)."""
        return self._lock._is_owned()  # type: ignore[attr-defined]  # (RLock's, as Condition uses)

    # -- hooks on the job's threads ----------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Registers a sampled span as live.  Runs on the job's thread; never raises."""
        try:
            if self._shutdown or not span.context.trace_flags.sampled:
                return
            if self._pid != os.getpid():
                self._at_fork_reinit()
            if self._forked and not self._exporter_sends_own_pid:
                # The resource describes the process that configured tasktree, not this fork.
                span.set_attribute("process.pid", self._pid)
            due = monotonic() + self._delay
            with self._lock:
                if len(self._live) >= self._max_live:
                    self._untracked += 1
                    return
                self._live[span.context.span_id] = _Live(span, due)
                wake = self._claim_wake_locked(due < self._wake_at)
                if self._worker is None:
                    self._start_worker_locked()
            if wake:
                self._wake_worker()
        except Exception:
            _logger.exception("tasktree: on_start failed")

    def on_end(self, span: ReadableSpan) -> None:
        """Forgets the live span and queues its final record.  Never raises."""
        try:
            if self._pid != os.getpid():
                self._at_fork_reinit()
            with self._lock:
                self._live.pop(span.context.span_id, None)
                if not self._export_finals or not span.context.trace_flags.sampled:
                    return
                if self._shutdown:
                    self._dropped_finals += 1
                    return
                self._wait_for_room_locked()
                wake = self._claim_wake_locked(self._enqueue_locked(span))
                starved = self._worker_starved_locked()
            if wake:
                self._wake_worker()
            elif starved:
                sleep(_HANDOFF)
        except Exception:
            _logger.exception("tasktree: on_end failed")

    # Waking the worker: once per pass of the worker, and then the job's thread sleeps 0.1 ms so
    # that the worker gets the GIL at once.  A thread running tasks in a tight loop with a short
    # system call in each (``uuid.uuid4()``, a small read) takes the GIL back after every call
    # before a waiting thread can, for hundreds of milliseconds at a time; meanwhile every task
    # woke the worker again and each system call switched to it in vain.  With an instant
    # exporter such a loop lost a third of its 20,000 records as "queue full", and each task
    # cost 25 µs more CPU.

    def _claim_wake_locked(self, wanted: bool) -> bool:
        """Whether this hook wakes the worker: it is wanted and no wake is pending already."""
        if not wanted or self._wake_pending:
            return False
        self._wake_pending = True
        return True

    def _wake_worker(self) -> None:
        self._wake.set()
        sleep(_HANDOFF)

    def _worker_starved_locked(self) -> bool:
        """A batch queued and the worker neither exporting nor backing off: it was woken and is
        still waiting for the GIL."""
        return (
            len(self._queue) >= self._batch
            and not self._in_flight
            and self._export_started is None
            and not self._backing_off
        )

    def _wait_for_room_locked(self) -> None:
        """While the queue is full and the sink answers, wait (the lock released) for the sender
        to take it, at most the flush timeout; never on the sender's own thread (an exporter
        that makes spans) or once the sink is down: then the oldest record is dropped."""
        if len(self._queue) < self._max_queue or self._failures or self.sink_down:
            return
        if self._worker is None or self._worker is threading.current_thread():
            return
        self._wake_pending = True
        self._wake.set()
        self._cond.wait_for(
            lambda: len(self._queue) < self._max_queue or self._shutdown or self.sink_down,
            self._flush_timeout,
        )

    def _enqueue_locked(self, span: ReadableSpan) -> bool:
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._dropped_finals += 1
            self._last_error = self._last_error or "queue full"
        self._queue.append(span)
        if self._worker is None:
            self._start_worker_locked()
        first = self._queue_since is None
        if self._queue_since is None:
            self._queue_since = monotonic()
        if self._backing_off:
            return False  # the worker wakes up when the backoff ends anyway
        if first and self._queue_since + self._schedule_delay < self._wake_at:
            return True
        return len(self._queue) >= self._batch

    def _start_worker_locked(self) -> None:
        self._worker = threading.Thread(target=self._run, name="tasktree-heartbeat", daemon=True)
        self._worker.start()

    # -- flush and shutdown ------------------------------------------------------------------

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Waits until every final record queued so far is exported, at most the timeout.

        Blocks the caller (bounded); returns at once with False while the sink is known down,
        and, once its backoff is over, until an export succeeds again: the export thread tries
        then, but the job's thread (a pool worker flushes after every task) does not wait out an
        attempt at a sink that was down (the exporter retries for seconds before it gives up).
        """
        timeout = self._flush_timeout if timeout_millis is None else timeout_millis / 1000
        try:
            with self._cond:
                if self._shutdown or self.sink_down:
                    return False
                if not self._queue and not self._in_flight:
                    return True
                self._flush_requested += 1
                target = self._flush_requested
                if self._worker is None:
                    self._start_worker_locked()
                self._wake.set()
                if self._failures:
                    return False
                return self._wait_for_flush(target, timeout)
        except Exception:
            _logger.exception("tasktree: flush failed")
            return False

    def _wait_for_flush(self, target: int, timeout: float) -> bool:
        """Under ``_cond``: wait until the flush ``target`` is done, at most ``timeout``, and no
        longer once the sink turns out to be down meanwhile (the export retrying: nothing
        listening, a 503).  A process's first flush is often the first export: a pool worker
        with ``maxtasksperchild=1`` waited the whole flush timeout for every task (5 s each)."""
        deadline = monotonic() + timeout
        while self._flush_done < target:
            left = deadline - monotonic()
            if left <= 0 or self.sink_down:
                return False
            self._cond.wait(min(left, _CLOSE_POLL))
        return True

    def shutdown(self) -> None:
        """Ends tracking at process exit; see :meth:`close`."""
        self.close()

    def close(self, message: str = ABANDONED_MESSAGE) -> None:
        """Spans still running become final ``error`` records with ``message`` (their process is
        exiting), then everything queued is exported within the flush timeout (1 s if the sink is
        down).  Blocks the caller for at most that long; never raises.  A second call (SIGTERM
        arriving during the exit flush) waits for the first one's export, within the same
        bound, so that the process does not die under it."""
        try:
            self._close_bounded(message)
        except Exception:
            _logger.exception("tasktree: shutdown failed")

    def _close_bounded(self, message: str) -> None:
        with self._lock:
            first = not self._shutdown
            if first:
                self._begin_close_locked(message)
            worker, deadline = self._worker, self._close_deadline
        if first:
            self._wake.set()
        if worker is not None and worker is not threading.current_thread():
            self._join_last_export(worker, deadline)
        if not first:
            return
        exporter = self._exporter
        if exporter is not None:
            exporter.shutdown()  # also cuts short a retry still sleeping in a stuck worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(_CUT_EXPORT_WAIT)  # the export just cut counts what it did not deliver
        with self._lock:
            # Records the worker never got to, or still holds (stuck): not delivered either.
            self._dropped_finals += len(self._queue) + self._in_flight
            self._queue.clear()
        self._report_drops(force=True)

    def _join_last_export(self, worker: threading.Thread, deadline: float) -> None:
        """Wait for the worker's last export until ``deadline``; once the sink turns out to be
        down meanwhile (a short job's first export is often this one), for one more attempt of
        the exporter's at most (its first retry comes about 1 s after the failure)."""
        while worker.is_alive():
            if self.sink_down:
                deadline = min(deadline, monotonic() + _ONE_MORE_ATTEMPT)
                while worker.is_alive() and monotonic() < deadline:
                    worker.join(min(deadline - monotonic(), _CLOSE_POLL))
                return
            left = deadline - monotonic()
            if left <= 0:
                return
            worker.join(min(left, _CLOSE_POLL))

    def _begin_close_locked(self, message: str) -> None:
        self._shutdown = True
        live = [entry.span for entry in self._live.values()]
        self._live.clear()
        for span in live:
            record = abandoned_record(span, message)
            if record is not None:
                self._enqueue_locked(record)
        wait = (
            min(self._flush_timeout, _SINK_DOWN_EXIT_WAIT)
            if self.sink_down
            else self._flush_timeout
        )
        self._close_deadline = monotonic() + wait
        self._stopping = True

    # -- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        with suppress_instrumentation():  # the export's own HTTP calls must not become spans
            if self._exporter is None and self._factory is not None:
                try:
                    self._exporter = self._factory()
                except Exception:
                    _logger.exception(
                        "tasktree: cannot build the span exporter; nothing will be sent"
                    )
                    return
            while True:
                self._wake.clear()
                stopping = self._stopping
                try:
                    self._cycle(stopping)
                except Exception:
                    _logger.exception("tasktree: heartbeat cycle failed")
                    self._failed(0, 0, "internal error")
                if stopping:
                    return
                self._report_drops()
                with self._lock:
                    until = self._sleep_until
                timeout = None if until == _INF else max(0.0, until - monotonic())
                self._wake.wait(timeout)

    def _cycle(self, stopping: bool) -> None:
        """One pass: collect due snapshots and ready finals under the lock, export them outside."""
        now = monotonic()
        with self._lock:
            self._wake_pending = False
            flush_target = self._flush_requested
            backing_off = now < self._retry_at and not stopping
            due: list[Span] = []
            next_due = _INF
            for entry in self._live.values():
                if entry.due <= now and not backing_off:
                    due.append(entry.span)
                    entry.due = now + self._interval
                next_due = min(next_due, entry.due)
            finals: list[ReadableSpan] = []
            if (
                self._queue
                and not backing_off
                and (
                    stopping
                    or flush_target > self._flush_done
                    or len(self._queue) >= self._batch
                    or now >= (self._queue_since or 0.0) + self._schedule_delay
                )
            ):
                finals = list(self._queue)
                self._queue.clear()
                self._queue_since = None
                self._in_flight = len(finals)
                self._cond.notify_all()  # room for the job's threads waiting on a full queue
            self._backing_off = backing_off
            if backing_off:
                # Hooks must not wake a worker that is waiting out a backoff.
                self._wake_at = -_INF
                self._sleep_until = self._retry_at
            else:
                if self._queue_since is not None:
                    next_due = min(next_due, self._queue_since + self._schedule_delay)
                self._wake_at = self._sleep_until = next_due
        snapshots = [record for span in due if (record := running_snapshot(span)) is not None]
        self._export(finals, snapshots)
        with self._cond:
            self._in_flight = 0
            self._flush_done = max(self._flush_done, flush_target)
            self._cond.notify_all()

    def _export(self, finals: list[ReadableSpan], snapshots: list[ReadableSpan]) -> None:
        records = finals + snapshots
        exporter = self._exporter
        if exporter is None:  # never: _run returns before any export when it cannot build one
            return
        for start in range(0, len(records), self._batch):
            chunk = records[start : start + self._batch]
            self._export_started = monotonic()
            try:
                result = exporter.export(chunk)
                error = "" if result is SpanExportResult.SUCCESS else _problem_of(exporter)
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"
            finally:
                self._export_started = None
            if error:
                rest = records[start:]
                lost_finals = max(0, len(finals) - start)
                self._failed(lost_finals, len(rest) - lost_finals, error)
                self._requeue(finals[start:], exporter)
                return
        if records:
            self._succeeded()

    def _requeue(self, finals: list[ReadableSpan], exporter: SpanExporter) -> None:
        """After ``_failed`` counted them lost: put the final records of an export that failed
        after retrying (the sink down or overloaded, ``otlp.SpanExporter.retrying``) back before
        the queue, as many as it has room for (the newest of them), to go again once the
        backoff is over: a sink away for longer than the exporter's own timeout (a database
        outage of 30 s behind it) lost them all.  Not at exit, nor after a failure that sending
        again cannot mend (a 400)."""
        if not finals or self._stopping or getattr(exporter, "retrying", False) is not True:
            return
        with self._lock:
            room = max(0, self._max_queue - len(self._queue))
            kept = finals[len(finals) - room :] if room < len(finals) else finals
            self._queue.extendleft(reversed(kept))
            self._dropped_finals -= len(kept)
            if kept:
                self._queue_since = self._queue_since or monotonic()
                self._sleep_until = min(self._sleep_until, self._retry_at)

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._retry_at = 0.0

    def _failed(self, finals: int, snapshots: int, error: str) -> None:
        """Counts what was not delivered and backs off (1 s, 2 s, 4 s … 30 s, with jitter)."""
        with self._cond:
            self._dropped_finals += finals
            self._dropped_snapshots += snapshots
            self._last_error = error
            self._failures += 1
            backoff = min(_MAX_BACKOFF, 2.0 ** (self._failures - 1)) * random.uniform(0.8, 1.2)
            self._retry_at = monotonic() + backoff
            # Nobody waits for a sink that is down: release every pending flush.
            self._flush_done = self._flush_requested
            self._cond.notify_all()

    def _report_drops(self, force: bool = False) -> None:
        counts = (self._dropped_finals, self._dropped_snapshots, self._untracked)
        if counts == self._reported:
            return
        now = monotonic()
        if not force and now - self._last_report < _DROP_LOG_INTERVAL:
            return
        self._reported, self._last_report = counts, now
        if counts[0] or counts[1]:
            _logger.warning(
                "tasktree: not delivered so far: %d final span records, %d running snapshots "
                "(the sink is slow or down; last problem: %s)",
                counts[0],
                counts[1],
                self._last_error or "none",
            )
        if counts[2]:
            _logger.warning(
                "tasktree: %d tasks got no running snapshots (over %d running at once)",
                counts[2],
                self._max_live,
            )


def _problem_of(exporter: SpanExporter) -> str:
    """What a failed export went wrong on, when the exporter says (``otlp.SpanExporter``)."""
    problem = getattr(exporter, "problem", "")
    return problem if isinstance(problem, str) and problem else "export failed"
