"""Rows of ``store.queries`` as the JSON shapes of design.md §4 (and of ``openapi.json``).

Ids are lowercase hex; times RFC 3339 UTC with nine fractional digits; durations seconds (float)
from the nanosecond times, ``None`` until the task ends.  Pure functions, no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tasktree.exporter.store.queries import NODE_MESSAGE_CHARS
from tasktree.exporter.tree import status as task_status
from tasktree.exporter.tree.fold import REFUSED_REASONS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# OTLP SpanKind numbers (opentelemetry-proto trace.proto), as the API names them.
SPAN_KINDS = {
    0: "unspecified",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}

Row = dict[str, Any]


def rfc3339(ns: int | None) -> str | None:
    """``1795000000123456789`` → ``"2026-11-18T...:...123456789Z"``; ``None`` stays ``None``.

    Stored times reach from 1677 to 2262 (int64), event times to 2554 (uint64); a time no
    RFC 3339 date can hold (before year 1 or after 9999) is ``None`` rather than an error.
    """
    if ns is None:
        return None
    seconds, nanos = divmod(ns, 1_000_000_000)
    try:
        moment = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return None
    return f"{moment.replace(tzinfo=None).isoformat(timespec='seconds')}.{nanos:09d}Z"


def duration(start_ns: int | None, end_ns: int | None) -> float | None:
    """Seconds from start to end; ``None`` while running (no end) or for a placeholder."""
    if start_ns is None or end_ns is None:
        return None
    return (end_ns - start_ns) / 1e9


def counts(row: Row) -> dict[str, int]:
    """The rollup: descendants (or a run's tasks) by status."""
    return {
        "ok": row["n_ok"],
        "error": row["n_error"],
        "running": row["n_running"],
        "stalled": row["n_stalled"],
    }


def node(row: Row) -> dict[str, Any]:
    """A tree node; a missing-parent placeholder has status "missing" and ``missing`` true."""
    parent = row["parent_span_id"]
    return {
        "span_id": row["span_id"].hex(),
        "parent_span_id": parent.hex() if parent is not None else None,
        "name": row["name"],
        "status": "missing" if row["missing"] else task_status.name(row["status"]),
        "start": rfc3339(row["start_ns"]),
        "end": rfc3339(row["end_ns"]),
        "duration": duration(row["start_ns"], row["end_ns"]),
        "child_count": row["child_count"],
        "counts": counts(row),
        "missing": row["missing"],
        "last_heartbeat": rfc3339(row["heartbeat_ns"]),
        "refused_parent": refused_parent(row),
        "status_message": failure_message(row),
    }


def failure_message(row: Row) -> str | None:
    """Why a failed task failed, as lists show it: its status message (the exception's "Type:
    message"), cut to NODE_MESSAGE_CHARS characters with "…"; None unless the task failed."""
    head = row["status_head"]
    if row["missing"] or row["status"] != task_status.ERROR or not head:
        return None
    return head if len(head) <= NODE_MESSAGE_CHARS else head[:NODE_MESSAGE_CHARS] + "…"


def refused_parent(row: Row) -> dict[str, str] | None:
    """The parent a task declared but was not hung under (``tree.fold``), with the reason:
    ``"cycle"`` (the declared parents loop) or ``"depth"`` (deeper than the depth limit)."""
    declared = row.get("refused_parent_span_id")
    if declared is None:
        return None
    reason = REFUSED_REASONS.get(row.get("refused_reason") or 0, "unknown")  # 0: none stored
    return {"span_id": declared.hex(), "reason": reason}


def found_task(row: Row) -> dict[str, Any]:
    """A search hit: the node, its run's trace id and its resource's job."""
    return {**node(row), "trace_id": row["trace_id"].hex(), "job": row["job"]}


def run(row: Row) -> dict[str, Any]:
    """A run: one trace; its status is its root task's own (several roots: the worst)."""
    return {
        "trace_id": row["trace_id"].hex(),
        "job": row["job"],
        "name": row["name"],
        "status": task_status.name(row["status"]),
        "start": rfc3339(row["start_ns"]),
        "end": rfc3339(row["end_ns"]),
        "duration": duration(row["start_ns"], row["end_ns"]),
        "counts": counts(row),
        "task_count": row["task_count"],
        "root_count": row["root_count"],
        "dropped_spans": row["dropped_spans"],
    }


def task_detail(row: Row) -> dict[str, Any]:
    """One task in full: the node plus what was recorded about it (empty for a placeholder)."""
    kind = row["kind"]
    return {
        **found_task(row),
        "kind": SPAN_KINDS.get(kind, "unspecified") if kind is not None else None,
        "scope": row["scope"],
        "status_message": row["status_message"],
        "truncated": row["truncated"],
        "attributes": row["attributes"] or {},
        "resource": row["resource"],
        "events": [event(e) for e in row["events"] or ()],
        "links": row["links"] or [],
    }


def event(stored: dict[str, Any]) -> dict[str, Any]:
    """A span event with its stored ``time_ns`` as an RFC 3339 ``time``; other fields as stored."""
    shown = {key: value for key, value in stored.items() if key != "time_ns"}
    time_ns = stored.get("time_ns")
    shown["time"] = rfc3339(time_ns) if isinstance(time_ns, int) else None
    return shown
