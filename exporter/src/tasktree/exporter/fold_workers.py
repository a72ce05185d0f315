"""``--workers N``: the processes that only fold, and their fold counters on the server's /metrics.

The serving process starts ``N - 1`` fold workers (``tasktree serve --role folder``).  Their spans
folded, stall transitions, fold timeouts and failed writes of the job series belong on the
server's /metrics, beside its own (a worker serves no /metrics): each worker writes its running
totals, as
one JSON line, to a pipe of its own about once a second when they changed (and once more when it
stops), and the server keeps the last line each worker it started sent.

Running totals rather than increments: a lost or late line costs nothing, the next one carries it.
A worker that ends keeps its slot with the last totals it sent, and a worker started again would
get a new one, so the server's sums never go down.  Each server counts only the workers it
started, so the sum across several servers on one database counts every fold once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasktree.exporter.background import Folder
    from tasktree.exporter.store.metric_totals import FoldTotals

__all__ = ["REPORT_EVERY_S", "FoldCounts", "FoldCountsReporter", "FoldWorkers"]

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0
"""How often a fold worker sends its totals to its server (when they changed)."""


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

    ``folded_total``, ``stalled_total`` and ``timeouts_total`` read like a ``Folder``'s, and
    ``write_errors`` like a ``FoldTotals``'s, so /metrics adds them to the serving process's own
    (``ServiceMetrics.add_fold_workers``).
    """

    def __init__(self, argv: list[str], count: int):
        """Start ``count`` workers running ``argv`` (a ``tasktree serve --role folder`` command,
        to which ``--report-fd`` is added)."""
        self._lock = threading.Lock()
        self._last: list[FoldCounts] = []  # one slot per worker ever started
        self._stopping = False
        self.procs = [self._start(argv) for _ in range(count)]

    def _start(self, argv: list[str]) -> subprocess.Popen:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen([*argv, "--report-fd", str(write_fd)], pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the worker's copy only: its exit ends our reading
        with self._lock:
            self._last.append(FoldCounts())
            slot = len(self._last) - 1
        reader = threading.Thread(
            target=self._read,
            args=(slot, read_fd, proc),
            name=f"tasktree-fold-worker-{proc.pid}",
            daemon=True,
        )
        reader.start()
        return proc

    def _read(self, slot: int, read_fd: int, proc: subprocess.Popen) -> None:
        """Keep the worker's last totals until it exits (its end of the pipe closes); then
        reap it, and say so unless we stopped it."""
        with open(read_fd, encoding="utf-8") as reports:
            for line in reports:
                try:
                    counts = FoldCounts.from_line(line)
                except (ValueError, TypeError, KeyError):
                    logger.warning(
                        "fold worker %s sent a report that is not one: %r", proc.pid, line
                    )
                    continue
                with self._lock:
                    self._last[slot] = counts
        returncode = proc.wait()
        if not self._stopping:
            logger.warning(
                "fold worker %s exited (%s); what it folded stays counted in /metrics",
                proc.pid,
                returncode,
            )

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
        self._stopping = True
        for proc in self.procs:
            proc.terminate()


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
