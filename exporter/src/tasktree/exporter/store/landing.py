"""Landing: the durable half of ingest.  Received spans are COPYed into ``span_landing``.

When ``land`` returns, the spans are committed: that is what lets ingest answer 200 (design.md §3
rule 4).  Folding them into the tree happens later, in large batches (``store/fold.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format

from tasktree.exporter.receiver.records import Resource, SpanRow
from tasktree.exporter.store._copy import fast_binary_dumpers

# Resources are shared by every span of a process: a known digest is a row already.
_INSERT_RESOURCES = """
INSERT INTO resources (digest, job, attributes)
SELECT * FROM unnest(%s::bytea[], %s::text[], %s::jsonb[])
ON CONFLICT (digest) DO NOTHING
"""
_RESOURCE_IDS = "SELECT digest, id FROM resources WHERE digest = ANY(%s)"

LANDED_COLUMNS = (
    "received_ns", "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
    "heartbeat_ns", "status", "status_message", "resource_id", "scope", "attributes", "events",
    "links", "truncated", "search_words",
)  # fmt: skip
"""The columns ingest writes into ``span_landing`` (the others are its id and generated ones)."""
_COLUMNS = ", ".join(LANDED_COLUMNS)
_TYPES = [
    "int8",
    "bytea",
    "bytea",
    "bytea",
    "text",
    "int2",
    "int8",
    "int8",
    "int8",
    "int2",
    "text",
    "int8",
    "text",
    "jsonb",
    "jsonb",
    "jsonb",
    "bool",
    "text",
]
_COPY_ROWS = f"COPY span_landing ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"


# Records landed and not folded yet, at most: the range of their ids (two index probes, where a
# count would read the whole backlog).
_AT_MOST_WAITING = "SELECT coalesce(max(id) - min(id) + 1, 0) FROM span_landing"


def waiting_at_most(conn: psycopg.Connection) -> int:
    """At least as many as the records landed and not folded yet (cheap at any backlog)."""
    row = conn.execute(_AT_MOST_WAITING).fetchone()
    return int(row[0]) if row else 0


# Folded records leave dead rows and index entries behind, at the low end of the primary key and
# of each lane's range of span_landing_lane: the very places the claim, the folder's lane probe
# and the backlog estimate start from.  Until a VACUUM removes them every such look walks over
# them all, and with autovacuum off (or behind) that cost grew with every record landed since
# (bench: the lane probe 0.2 → 0.9 ms and the estimate 0.2 → 1.2 ms after 200,000 records).
# SKIP_LOCKED: another process vacuuming it already is enough.
_VACUUM = "VACUUM (SKIP_LOCKED) span_landing"


def vacuum(conn: psycopg.Connection) -> None:
    """Remove folded records' remains from ``span_landing`` (outside a transaction)."""
    conn.execute(_VACUUM)


class _JsonTextBinaryDumper(Dumper):
    """Dumps an already-serialised JSON string as binary jsonb (version byte 1 + the text)."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


class ResourceIds:
    """Maps resource digests to ``resources.id``, inserting new ones; a bounded in-process cache."""

    def __init__(self, capacity: int = 10_000):
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def ids_for(self, conn: psycopg.Connection, resources: list[Resource]) -> dict[bytes, int]:
        found, unknown = {}, {}
        with self._lock:
            for res in resources:
                if res.digest in self._cache:
                    found[res.digest] = self._cache[res.digest]
                    self._cache.move_to_end(res.digest)
                else:
                    unknown[res.digest] = res
        if unknown:
            found.update(self._insert(conn, list(unknown.values())))
        return found

    def _insert(self, conn: psycopg.Connection[Any], resources: list[Resource]) -> dict[bytes, int]:
        digests = [r.digest for r in resources]
        conn.execute(
            _INSERT_RESOURCES,
            (digests, [r.job for r in resources], [r.attributes_json for r in resources]),
        )
        rows = conn.execute(_RESOURCE_IDS, (digests,))
        ids = {bytes(d): i for d, i in rows}
        with self._lock:
            for digest, rid in ids.items():
                self._cache[digest] = rid
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return ids


def land(
    conn: psycopg.Connection, spans: list[SpanRow], resource_ids: ResourceIds, received_ns: int
) -> None:
    """Durably store ``spans`` in ``span_landing`` (one transaction; committed on return)."""
    if not spans:
        return
    with conn.transaction():
        distinct = {id(s.resource): s.resource for s in spans}
        ids = resource_ids.ids_for(conn, list(distinct.values()))
        with fast_binary_dumpers(conn.cursor()) as cur:
            cur.adapters.register_dumper(None, _JsonTextBinaryDumper)
            with cur.copy(_COPY_ROWS) as copy:
                copy.set_types(_TYPES)
                for s in spans:
                    copy.write_row(
                        (
                            received_ns,
                            s.trace_id,
                            s.span_id,
                            s.parent_span_id,
                            s.name,
                            s.kind,
                            s.start_ns,
                            s.end_ns,
                            s.heartbeat_ns,
                            s.status,
                            s.status_message,
                            ids[s.resource.digest],
                            s.scope,
                            s.attributes_json,
                            s.events_json,
                            s.links_json,
                            s.truncated,
                            s.search_words,
                        )
                    )
