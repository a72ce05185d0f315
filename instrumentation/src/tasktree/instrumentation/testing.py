"""An in-memory recorder of tasks, for the tests of jobs that use tasktree.

    from tasktree.instrumentation.testing import TaskRecorder

    def test_load_runs_under_the_job():
        with TaskRecorder() as recorder:
            run_job()
        assert recorder.parent_of("load") == "run_job"
        assert recorder.get("load").status.status_code is StatusCode.OK

The first recorder installs, once per process, an SDK ``TracerProvider`` (if none is set yet) with
the propagation patches, a synchronous processor feeding the active recorders with final records,
and a :class:`LiveSpanProcessor` feeding them running snapshots.  Nothing goes to the network
unless ``configure()`` set that up as well.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tasktree.instrumentation import propagation
from tasktree.instrumentation.heartbeat import LiveSpanProcessor
from tasktree.instrumentation.snapshot import is_running_snapshot

_active: list[TaskRecorder] = []
_lock = threading.Lock()
_installed = False


class _Dispatch(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for recorder in list(_active):
            recorder._add(spans)
        return SpanExportResult.SUCCESS


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(_Dispatch()))
        provider.add_span_processor(LiveSpanProcessor(_Dispatch(), export_finals=False))
        _installed = True
    propagation.install()


class TaskRecorder:
    """Collects every task that ends (and every running snapshot sent) while it is active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[ReadableSpan] = []
        self.snapshots: list[ReadableSpan] = []

    def __enter__(self) -> TaskRecorder:
        _install()
        _active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _active.remove(self)

    def _add(self, spans: Sequence[ReadableSpan]) -> None:
        with self._lock:
            for span in spans:
                (self.snapshots if is_running_snapshot(span) else self.spans).append(span)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.snapshots.clear()

    def names(self) -> list[str]:
        """Names of the ended tasks, in the order they ended."""
        return [span.name for span in self.spans]

    def get(self, name: str) -> ReadableSpan:
        """The one ended task called ``name`` (AssertionError if there are none or several)."""
        found = [span for span in self.spans if span.name == name]
        assert len(found) == 1, f"expected one task {name!r}, found {len(found)} in {self.names()}"
        return found[0]

    def parent_of(self, name: str) -> str | None:
        """Name of the parent of the task ``name`` (None for a root; '?' if not recorded)."""
        parent = self.get(name).parent
        if parent is None:
            return None
        for span in self.spans:
            if span.context.span_id == parent.span_id:
                return span.name
        return "?"

    def children_of(self, name: str) -> list[str]:
        """Names of the recorded children of the task ``name``, by start time."""
        span_id = self.get(name).context.span_id
        children = [s for s in self.spans if s.parent is not None and s.parent.span_id == span_id]
        return [s.name for s in sorted(children, key=lambda s: s.start_time or 0)]
