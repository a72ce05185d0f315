"""``--workers N``: the processes that only fold, and their fold counters on the server's /metrics.

The serving process starts ``N - 1`` fold workers (``tasktree serve --role folder``).  Their spans
folded, stall transitions, fold timeouts and failed writes of the job series belong on the
server's /metrics, beside its own (a worker serves no /metrics): each worker writes its running
totals, as
one JSON line, to a pipe of its own about once a second when they changed (and once more when it
stops), and the server keeps the last line each worker it started sent.

Running totals rather than increments: a lost or late line costs nothing, the next one carries it.
A worker that ends keeps its slot with the last totals it sent, and the one started in its place
gets a new one, so the server's sums never go down.  Each server counts only the workers it
started, so the sum across several servers on one database counts every fold once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasktree.exporter.background import Folder
    from tasktree.exporter.store.metric_totals import FoldTotals

__all__ = ["REPORT_EVERY_S", "FoldCounts", "FoldCountsReporter", "FoldWorkers"]

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0
"""How often a fold worker sends its totals to its server (when they changed)."""
RESTART_DELAY_S = 1.0
"""How long a server waits before it replaces a fold worker that died (doubled for each worker
of the seat that dies before ``STEADY_AFTER_S``)."""
RESTART_DELAY_MAX_S = 60.0
STEADY_AFTER_S = 60.0
"""A worker that ran this long died of something else than starting: the next wait is
``RESTART_DELAY_S`` again."""


@dataclass(frozen=True)
class FoldCounts:
    """One folder's running totals, as a fold worker reports them."""

    folded: int = 0
    stalled: int = 0
    timeouts: int = 0
    write_errors: int = 0  # failed writes of the job series (metric_totals)

    @classmethod
    def of(cls, folder: Folder, totals: FoldTotals) -> FoldCounts:
        return cls(
            folder.folded_total, folder.stalled_total, folder.timeouts_total, totals.write_errors
        )

    def to_line(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> FoldCounts:
        """Raises ``ValueError`` (or ``TypeError``) for a line that is not a report."""
        fields = json.loads(line)
        return cls(*(int(fields[f.name]) for f in dataclasses.fields(cls)))


class FoldWorkers:
    """The fold workers of one serving process, and the sums of what they folded.

    ``count`` seats, each holding one worker; a worker that dies (SIGKILL, the OOM killer) is
    replaced, after ``RESTART_DELAY_S`` doubling up to ``RESTART_DELAY_MAX_S`` while the seat's
    workers die young, so that one dying at start-up does not loop on the CPU; never once
    ``stop()`` was called.

    ``folded_total``, ``stalled_total`` and ``timeouts_total`` read like a ``Folder``'s, and
    ``write_errors`` like a ``FoldTotals``'s, so /metrics adds them to the serving process's own
    (``ServiceMetrics.add_fold_workers``); ``running`` and ``restarts`` show there too.
    """

    def __init__(self, argv: list[str], count: int):
        """Start ``count`` workers running ``argv`` (a ``tasktree serve --role folder`` command,
        to which ``--report-fd`` is added)."""
        self._argv = argv
        self._lock = threading.Lock()  # also makes a start and stop() exclusive
        self._last: list[FoldCounts] = []  # one slot per worker ever started
        self._running: set[subprocess.Popen] = set()
        self._stopping = threading.Event()
        self.restarts = 0
        for _ in range(count):
            worker = self._start()
            assert worker is not None  # nothing can have stopped us yet
            threading.Thread(
                target=self._keep_seat, args=(worker,), name="tasktree-fold-seat", daemon=True
            ).start()

    @property
    def running(self) -> int:
        """Fold workers alive now (reaped ones excluded)."""
        with self._lock:
            return len(self._running)

    def _start(self) -> _Worker | None:
        """A new worker with a slot of its own; None once ``stop()`` was called."""
        read_fd, write_fd = os.pipe()
        try:
            with self._lock:
                if self._stopping.is_set():
                    os.close(read_fd)
                    return None
                argv = [*self._argv, "--report-fd", str(write_fd)]
                proc = subprocess.Popen(argv, pass_fds=(write_fd,))
                self._running.add(proc)
                self._last.append(FoldCounts())
                return _Worker(proc, read_fd, len(self._last) - 1)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the worker's copy only: its exit ends our reading

    def _keep_seat(self, worker: _Worker) -> None:
        """One seat's workers, one after the other, until ``stop()``."""
        delay = RESTART_DELAY_S
        while True:
            returncode = self._follow(worker)
            if self._stopping.is_set():
                return
            if worker.lived_s() >= STEADY_AFTER_S:  # died of something new, not of starting
                delay = RESTART_DELAY_S
            logger.warning(
                "fold worker %s exited (%s) after %.0f s; what it folded stays counted in"
                " /metrics; starting another in %.0f s",
                worker.proc.pid, returncode, worker.lived_s(), delay,
            )  # fmt: skip
            replacement = self._replace(worker.proc.pid, delay)
            if replacement is None:
                return
            worker, delay = replacement, min(delay * 2, RESTART_DELAY_MAX_S)

    def _replace(self, pid: int, delay: float) -> _Worker | None:
        """A worker in the place of ``pid`` after ``delay`` (retried, the delay doubling, while
        it cannot be started); None once ``stop()`` was called."""
        while not self._stopping.wait(delay):
            try:
                worker = self._start()
            except OSError as exc:  # out of memory or processes: what killed the last one
                delay = min(delay * 2, RESTART_DELAY_MAX_S)
                logger.error(
                    "cannot start a fold worker in place of %s (%s); trying again in %.0f s",
                    pid, exc, delay,
                )  # fmt: skip
                continue
            if worker is not None:
                with self._lock:
                    self.restarts += 1
                logger.warning(
                    "fold worker %s started in place of %s (%d fold worker restarts so far)",
                    worker.proc.pid, pid, self.restarts,
                )  # fmt: skip
            return worker
        return None

    def _follow(self, worker: _Worker) -> int:
        """Keep the worker's last totals until it exits (its end of the pipe closes); then reap
        it and return its exit status."""
        with open(worker.read_fd, encoding="utf-8") as reports:
            for line in reports:
                try:
                    counts = FoldCounts.from_line(line)
                except (ValueError, TypeError, KeyError):
                    logger.warning(
                        "fold worker %s sent a report that is not one: %r", worker.proc.pid, line
                    )
                    continue
                with self._lock:
                    self._last[worker.slot] = counts
        returncode = worker.proc.wait()
        with self._lock:
            self._running.discard(worker.proc)
        return returncode

    def _sum(self) -> FoldCounts:
        with self._lock:
            last = list(self._last)
        return FoldCounts(
            *(sum(getattr(c, f.name) for c in last) for f in dataclasses.fields(FoldCounts))
        )

    @property
    def folded_total(self) -> int:
        return self._sum().folded

    @property
    def stalled_total(self) -> int:
        return self._sum().stalled

    @property
    def timeouts_total(self) -> int:
        return self._sum().timeouts

    @property
    def write_errors(self) -> int:
        return self._sum().write_errors

    def stop(self) -> None:
        """Stop every worker; none is started after this."""
        with self._lock:
            self._stopping.set()
            running = list(self._running)
        for proc in running:
            proc.terminate()


@dataclass(frozen=True)
class _Worker:
    proc: subprocess.Popen
    read_fd: int  # its reports
    slot: int  # of its last report in FoldWorkers._last
    started: float = dataclasses.field(default_factory=time.monotonic)

    def lived_s(self) -> float:
        return time.monotonic() - self.started


class FoldCountsReporter:
    """In a fold worker: sends its folder's totals to the server that started it.

    Writes on a thread of its own, so a server that reads late (or is stopped with SIGSTOP)
    blocks this thread at worst, never a fold.
    """

    def __init__(self, folder: Folder, totals: FoldTotals, fd: int):
        self._folder = folder
        self._totals = totals
        self._out = open(fd, "w", encoding="utf-8")  # noqa: SIM115 (closed by the thread)
        self._sent = FoldCounts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tasktree-fold-counts", daemon=True)

    def start(self) -> FoldCountsReporter:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Send the last totals (call after the folder stopped)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.wait(REPORT_EVERY_S):
                self._send()
            self._send()
        except OSError as exc:  # the server is gone: this worker stops within a second too
            logger.info("fold counts no longer reach the server: %s", exc)
        finally:
            try:
                self._out.close()
            except OSError:
                pass  # a broken pipe's buffered line: nobody is left to read it

    def _send(self) -> None:
        counts = FoldCounts.of(self._folder, self._totals)
        if counts != self._sent:
            self._out.write(counts.to_line())
            self._out.flush()
            self._sent = counts
