"""Building span rows for tests without going through OTLP, and storing them as ingest would."""

from __future__ import annotations

import hashlib
import json
import time

from tasktree.exporter.receiver.records import Resource, SpanRow
from tasktree.exporter.search import document_words
from tasktree.exporter.store.fold import fold_batch
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.tree import status as st
from tasktree.exporter.tree.fold import DEFAULT_MAX_DEPTH

_ATTRS = json.dumps({"service.name": "test-job"}, sort_keys=True, separators=(",", ":"))
RESOURCE = Resource(hashlib.sha256(_ATTRS.encode()).digest(), "test-job", _ATTRS)


def span(trace: bytes, span_id: bytes, parent: bytes | None = None, *, name: str = "t",
         status: int = st.OK, start: int = 1_000, end: int | None = 2_000,
         heartbeat: int | None = None, attributes: dict | None = None,
         resource: Resource = RESOURCE) -> SpanRow:
    """A final span by default; ``status=st.RUNNING`` makes a running snapshot at ``heartbeat``."""
    if status == st.RUNNING:
        end, heartbeat = None, heartbeat if heartbeat is not None else start
    attributes_json = json.dumps(attributes or {})
    return SpanRow(
        trace_id=trace, span_id=span_id, parent_span_id=parent, name=name, kind=1,
        start_ns=start, end_ns=end, heartbeat_ns=heartbeat, status=status, status_message="",
        resource=resource, scope="tests", attributes_json=attributes_json,
        events_json="[]", links_json="[]", search_words=document_words(f"{name} {attributes_json}"),
    )


def sid(n: int) -> bytes:
    """A span id from a small number (never all zeros)."""
    return (n + 1).to_bytes(8, "big")


def tid(n: int) -> bytes:
    return (n + 1).to_bytes(16, "big")


def deliver(conn, *batches, fold_limit=10_000, stall_after=3600.0, max_depth=DEFAULT_MAX_DEPTH,
            fold_between=False) -> None:
    """Land each batch as ingest would, then fold everything landed; ``fold_between``: also fold
    one batch of at most ``fold_limit`` records after each landing, so later records meet
    half-folded runs."""
    ids = ResourceIds()
    for batch in batches:
        land(conn, list(batch), ids, time.time_ns())
        if fold_between:
            fold_batch(conn, limit=fold_limit, stall_after_s=stall_after, max_depth=max_depth)
    while fold_batch(
        conn, limit=fold_limit, stall_after_s=stall_after, max_depth=max_depth
    ).records:
        pass
