"""Running snapshots: extra span records that show a task while it is still running.

A running snapshot is a copy of a live span as it is now (same trace id, span id, parent, name,
start time and attributes so far) plus the attribute ``tasktree.state = "running"``, with the
snapshot time as its end time and status UNSET.  The sink takes that end time as the task's
heartbeat; the task's final record (a normal ended span, without the attribute) beats every snapshot
whatever the arrival order.  The live span itself is never modified.
"""

from __future__ import annotations

from time import time_ns

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Status, StatusCode

# The marker of a running snapshot: the sink (tasktree.exporter.receiver.records) reads these.
LIVE_ATTRIBUTE = "tasktree.state"
LIVE_VALUE = "running"

ABANDONED_MESSAGE = "process exited before the task ended"

_UNSET = Status(StatusCode.UNSET)


def _copy(span: ReadableSpan, attributes: dict, status: Status, end_ns: int) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=max(end_ns, span.start_time or 0),
        instrumentation_scope=span.instrumentation_scope,
    )


def _attributes_now(span: ReadableSpan) -> dict | None:
    # Another thread may be setting attributes right now.  The SDK's mapping copies its keys under
    # its lock, which the thread a SIGTERM handler interrupted may hold while the handler waits
    # for this very copy: so its dict is copied without the lock (one C call, atomic under the
    # GIL).  A key evicted by the attribute limit meanwhile is the only possible failure.
    attributes = span.attributes
    own = getattr(span, "_attributes", None)  # the SDK's mapping; span.attributes is a view of it
    if isinstance(own, BoundedAttributes) and isinstance(own._dict, dict):
        attributes = own._dict
    for _ in range(3):
        try:
            return dict(attributes or {})
        except (KeyError, RuntimeError):
            continue
    return None


def running_snapshot(span: ReadableSpan, now_ns: int | None = None) -> ReadableSpan | None:
    """The running snapshot of ``span`` at ``now_ns`` (default: now); None if it already ended.

    Safe to call from any thread while the span is being modified; never raises for a live span.
    """
    if span.end_time is not None:
        return None
    attributes = _attributes_now(span)
    if attributes is None:
        return None
    attributes[LIVE_ATTRIBUTE] = LIVE_VALUE
    return _copy(span, attributes, _UNSET, time_ns() if now_ns is None else now_ns)


def abandoned_record(
    span: ReadableSpan, message: str = ABANDONED_MESSAGE, now_ns: int | None = None
) -> ReadableSpan | None:
    """A final ``error`` record for a span still running when its process exits; None if ended."""
    if span.end_time is not None:
        return None
    attributes = _attributes_now(span) or {}
    status = Status(StatusCode.ERROR, message)
    return _copy(span, attributes, status, time_ns() if now_ns is None else now_ns)


def is_running_snapshot(span: ReadableSpan) -> bool:
    """True for a record made by :func:`running_snapshot` (for exporters and tests)."""
    return (span.attributes or {}).get(LIVE_ATTRIBUTE) == LIVE_VALUE
