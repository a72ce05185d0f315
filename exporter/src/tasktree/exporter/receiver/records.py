"""What the decoder produces and the store lands: one row per received span record.

Pure data, no I/O.  ``status`` uses the store's codes (see ``tasktree.exporter.tree.status``).

A *running snapshot* is a span record carrying the attribute ``tasktree.state = "running"``
(``LIVE_ATTRIBUTE``/``LIVE_VALUE`` of ``tasktree.instrumentation.snapshot``): the instrumentation
exports one when a task starts and then at each heartbeat, with the snapshot time as the span's
end time.  Being a plain span attribute, the marker survives any OpenTelemetry Collector in
between.  For such a record ``end_ns`` is ``None`` and ``heartbeat_ns`` holds the snapshot time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NAME_BYTES = 1000
"""Bytes of a job name (and of a task name in the job series) that are kept.  They are keys of
btree indexes (runs, resources, metric_totals), whose entries PostgreSQL refuses beyond 2,704
bytes: a longer name failed every fold or write it was in.  A job name and a task name, each cut
here and marked, fit in one entry together."""


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` bytes of UTF-8, never splitting a character, and marked where
    it was cut (the marker comes on top of the limit)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept}…[truncated by tasktree: kept {len(kept.encode('utf-8'))} of {len(raw)} bytes]"


@dataclass(frozen=True, slots=True)
class Resource:
    """An OTel resource, deduplicated by ``digest`` (sha256 of ``attributes_json``)."""

    digest: bytes
    job: str | None  # service.name
    attributes_json: str  # canonical JSON object (sorted keys)


@dataclass(slots=True)
class SpanRow:
    trace_id: bytes  # 16 bytes, not all zero
    span_id: bytes  # 8 bytes, not all zero
    parent_span_id: bytes | None  # 8 bytes or None for a root
    name: str
    kind: int  # OTLP SpanKind number
    start_ns: int
    end_ns: int | None  # None for a running snapshot
    heartbeat_ns: int | None  # snapshot time for a running snapshot, else None
    status: int  # RUNNING, OK or ERROR (tree.status)
    status_message: str
    resource: Resource
    scope: str  # instrumentation scope name
    attributes_json: str  # JSON object {key: value}
    events_json: str  # JSON array [{"time_ns", "name", "attributes"}]
    links_json: str  # JSON array [{"trace_id", "span_id", "attributes"}] (hex ids)
    truncated: bool = False  # some value was cut at the configured limit
    search_words: str = ""  # the words of name, status message and attribute values (search.py)


@dataclass(slots=True)
class DecodedBatch:
    """The good spans of one request plus how many were refused and why (OTLP partial_success)."""

    spans: list[SpanRow] = field(default_factory=list)
    rejected: int = 0
    messages: list[str] = field(default_factory=list)

    def reject(self, count: int, reason: str) -> None:
        self.rejected += count
        if len(self.messages) < 10 and reason not in self.messages:
            self.messages.append(reason)
