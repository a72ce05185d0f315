"""Fuzzing the OTLP decoders: input strategies and the properties every decoded batch must have.

Shared by the bounded tests (``unit/test_decode_fuzz.py``, ``integration/test_abuse.py``) and the
long run (``bench/fuzz_decoders.py``).  The strategies make structured requests (any field, any
value: ids of every length, zero ids, times from 0 to 2**64-1, NUL and non-ASCII text, nested
values, NaN), their OTLP/JSON form, JSON documents close to OTLP/JSON, and byte-level mutations
of both encodings.

The properties (``check_decoding``): a body either decodes or raises ``BadRequest``, nothing else;
the decoder's memory stays within a linear bound of the body size; and every row it produces can
be stored as it is (``check_row``): ids of the right length and not zero, times within
PostgreSQL ``bigint``, no NUL in any text or JSON, valid JSON of the right shape.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import tracemalloc
from contextlib import contextmanager

import orjson
from hypothesis import strategies as hs
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tasktree.exporter.errors import BadRequest
from tasktree.exporter.receiver.decode import Limits, decode_json, decode_protobuf
from tasktree.exporter.receiver.records import DecodedBatch, SpanRow
from tasktree.exporter.tree import status as st

LIMITS = Limits(max_value_bytes=64)
"""Small, so that truncation happens in most examples."""
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
YEAR_9999_NS = 253_402_300_799 * 10**9
"""Beyond what protobuf's fixed64 holds (2**64 ns is in 2554): only OTLP/JSON can say it."""

MEMORY_PER_BYTE = 64
"""Decoding may use this many bytes of Python memory per body byte (plus ``MEMORY_BASE``).
Measured: ~7 for protobuf bodies of many tiny spans, ~16 for the same in JSON, ~36 for JSON of
empty objects (``[{}, {}, ...]``).  tracemalloc sees Python's allocations only: upb's arena for
the parsed protobuf is C memory, proportional to the body (which TASKTREE_MAX_BODY_BYTES caps)."""
MEMORY_BASE = 4 * 1024 * 1024
HANG_SECONDS = 30
"""An input that takes longer than this to decode is a hang (decoding takes milliseconds)."""


# ---------------------------------------------------------------------------------------------
# Structured requests


_text = hs.text(hs.characters(exclude_categories=["Cs"]), max_size=80) | hs.sampled_from(
    ["", "\x00", "a\x00b", "service.name", "tasktree.state", "running", "é" * 40,
     "\U0001f600" * 30])
_odd_ids = hs.one_of(hs.sampled_from([b"", bytes(16), bytes(8), b"\x01" * 16, b"\x01" * 8]),
                    hs.binary(max_size=40))
_ids = hs.one_of(hs.binary(min_size=16, max_size=16), hs.binary(min_size=8, max_size=8), _odd_ids)


def _mostly(usual, odd):
    """``usual`` nine times in ten, else ``odd``: most spans should become rows."""
    return hs.integers(0, 9).flatmap(lambda i: odd if i == 9 else usual)


_trace_ids = _mostly(hs.binary(min_size=16, max_size=16), _odd_ids)
_span_ids = _mostly(hs.binary(min_size=8, max_size=8), _odd_ids)
_times = hs.one_of(
    hs.integers(0, UINT64_MAX),
    hs.sampled_from([0, 1, 10**18, 1_795_000_000 * 10**9, INT64_MAX, INT64_MAX + 1, UINT64_MAX]),
)
_int64 = hs.integers(-(2**63), INT64_MAX)
_int32 = hs.integers(-(2**31), 2**31 - 1)
_uint32 = hs.integers(0, 2**32 - 1)


def _any_value(children):
    return hs.one_of(
        hs.builds(lambda s: common_pb2.AnyValue(string_value=s), _text),
        hs.builds(lambda b: common_pb2.AnyValue(bool_value=b), hs.booleans()),
        hs.builds(lambda i: common_pb2.AnyValue(int_value=i), _int64),
        hs.builds(lambda d: common_pb2.AnyValue(double_value=d), hs.floats()),
        hs.builds(lambda b: common_pb2.AnyValue(bytes_value=b), hs.binary(max_size=40)),
        hs.just(common_pb2.AnyValue()),
        children,
    )


def _nested(children):
    return hs.one_of(
        hs.builds(lambda vs: common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=vs)),
                  hs.lists(children, max_size=3)),
        hs.builds(lambda kvs: common_pb2.AnyValue(
            kvlist_value=common_pb2.KeyValueList(values=kvs)),
            hs.lists(hs.builds(lambda k, v: common_pb2.KeyValue(key=k, value=v), _text, children),
                     max_size=3)),
    )


any_values = hs.recursive(_any_value(hs.nothing()), lambda c: _any_value(_nested(c)),
                          max_leaves=8)
key_values = hs.lists(hs.builds(lambda k, v: common_pb2.KeyValue(key=k, value=v), _text,
                                any_values), max_size=4)


@hs.composite
def spans(draw, trace_ids=None) -> trace_pb2.Span:
    attributes = draw(key_values)
    if draw(hs.booleans()):  # a running snapshot now and then
        attributes.append(common_pb2.KeyValue(key="tasktree.state",
                                              value=common_pb2.AnyValue(string_value="running")))
    start = draw(_mostly(hs.integers(1, INT64_MAX - 10**12), _times))
    after = hs.integers(0, 10**12).map(lambda d: min(start + d, UINT64_MAX))
    end = draw(_mostly(after, _times))
    return trace_pb2.Span(
        trace_id=draw(trace_ids if trace_ids is not None else _trace_ids),
        span_id=draw(_span_ids), parent_span_id=draw(_mostly(_span_ids, hs.just(b""))),
        name=draw(_text),
        kind=draw(_mostly(hs.integers(0, 5), _int32)),
        start_time_unix_nano=start, end_time_unix_nano=end,
        attributes=attributes, dropped_attributes_count=draw(_uint32 | hs.just(0)),
        events=draw(hs.lists(hs.builds(
            lambda t, n, a, d: trace_pb2.Span.Event(time_unix_nano=t, name=n, attributes=a,
                                                    dropped_attributes_count=d),
            _times, _text, key_values, _uint32 | hs.just(0)), max_size=2)),
        dropped_events_count=draw(_uint32 | hs.just(0)),
        links=draw(hs.lists(hs.builds(
            lambda t, s, a: trace_pb2.Span.Link(trace_id=t, span_id=s, attributes=a),
            _ids, _ids, key_values), max_size=2)),
        dropped_links_count=draw(_uint32 | hs.just(0)),
        status=trace_pb2.Status(code=draw(hs.integers(0, 2) | _int32), message=draw(_text)),
    )


@hs.composite
def requests(draw) -> ExportTraceServiceRequest:
    """Any ``ExportTraceServiceRequest``: spans of a few runs (or any trace id) under resources."""
    trace_ids = hs.sampled_from(draw(hs.lists(_trace_ids, min_size=1, max_size=3)))
    request = ExportTraceServiceRequest()
    for _ in range(draw(hs.integers(0, 3))):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(draw(key_values))
        rs.resource.dropped_attributes_count = draw(_uint32 | hs.just(0))
        for _ in range(draw(hs.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(_text)
            ss.spans.extend(draw(hs.lists(spans(trace_ids), max_size=4)))
    return request


# ---------------------------------------------------------------------------------------------
# The same requests in OTLP/JSON, and documents near it


def to_json(request: ExportTraceServiceRequest, draw=None) -> dict:
    """``request`` in OTLP/JSON (hex ids; 64-bit integers as strings, or numbers when ``draw``
    says so; enums as numbers): the JSON decoder must give the same rows as the protobuf one."""
    def num(x):
        return x if draw is not None and draw(hs.booleans()) else str(x)

    def value(v):
        kind = v.WhichOneof("value")
        if kind is None:
            return {}
        if kind == "string_value":
            return {"stringValue": v.string_value}
        if kind == "bool_value":
            return {"boolValue": v.bool_value}
        if kind == "int_value":
            return {"intValue": num(v.int_value)}
        if kind == "double_value":
            d = v.double_value
            if not math.isfinite(d):
                d = "NaN" if d != d else ("Infinity" if d > 0 else "-Infinity")
            return {"doubleValue": d}
        if kind == "bytes_value":
            return {"bytesValue": base64.b64encode(v.bytes_value).decode()}
        if kind == "array_value":
            return {"arrayValue": {"values": [value(x) for x in v.array_value.values]}}
        return {"kvlistValue": {"values": kvs(v.kvlist_value.values)}}

    def kvs(items):
        return [{"key": kv.key, "value": value(kv.value)} for kv in items]

    def span(s):
        return {
            "traceId": s.trace_id.hex(), "spanId": s.span_id.hex(),
            "parentSpanId": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
            "startTimeUnixNano": num(s.start_time_unix_nano),
            "endTimeUnixNano": num(s.end_time_unix_nano), "attributes": kvs(s.attributes),
            "droppedAttributesCount": s.dropped_attributes_count,
            "events": [{"timeUnixNano": num(e.time_unix_nano), "name": e.name,
                        "attributes": kvs(e.attributes),
                        "droppedAttributesCount": e.dropped_attributes_count} for e in s.events],
            "droppedEventsCount": s.dropped_events_count,
            "links": [{"traceId": x.trace_id.hex(), "spanId": x.span_id.hex(),
                       "attributes": kvs(x.attributes)} for x in s.links],
            "droppedLinksCount": s.dropped_links_count,
            "status": {"code": s.status.code, "message": s.status.message},
        }

    return {"resourceSpans": [{
        "resource": {"attributes": kvs(rs.resource.attributes),
                     "droppedAttributesCount": rs.resource.dropped_attributes_count},
        "scopeSpans": [{"scope": {"name": ss.scope.name}, "spans": [span(s) for s in ss.spans]}
                       for ss in rs.scope_spans],
    } for rs in request.resource_spans]}


json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers(-(2**64), 2**64) | hs.floats(allow_nan=False,
                                                                        allow_infinity=False)
    | _text,
    lambda c: hs.lists(c, max_size=3) | hs.dictionaries(_text, c, max_size=3),
    max_leaves=10,
)
_OTLP_KEYS = ["resourceSpans", "resource", "attributes", "scopeSpans", "scope", "spans", "traceId",
              "spanId", "parentSpanId", "name", "kind", "startTimeUnixNano", "endTimeUnixNano",
              "status", "code", "message", "events", "links", "value", "stringValue", "intValue",
              "doubleValue", "boolValue", "bytesValue", "arrayValue", "kvlistValue", "values",
              "key", "timeUnixNano", "droppedAttributesCount"]


@hs.composite
def near_otlp_json(draw) -> object:
    """An OTLP/JSON document with a few of its values replaced by any JSON (or keys renamed)."""
    document = to_json(draw(requests()), draw)
    for _ in range(draw(hs.integers(0, 4))):
        document = _mutate_json(draw, document)
    return document


def _mutate_json(draw, node):
    """Replace one random value somewhere inside ``node`` (or ``node`` itself)."""
    if isinstance(node, dict) and node and draw(hs.integers(0, 3)):
        key = draw(hs.sampled_from(sorted(node)))
        if draw(hs.integers(0, 4)) == 0:  # rename a key (unknown keys are ignored, known ones move)
            return {**{k: v for k, v in node.items() if k != key},
                    draw(hs.sampled_from(_OTLP_KEYS) | _text): node[key]}
        return {**node, key: _mutate_json(draw, node[key])}
    if isinstance(node, list) and node and draw(hs.integers(0, 3)):
        i = draw(hs.integers(0, len(node) - 1))
        return [*node[:i], _mutate_json(draw, node[i]), *node[i + 1:]]
    return draw(json_values)


def dump(document) -> bytes:
    """A JSON document as a body (``json``, not orjson: integers beyond 64 bits are written too)."""
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Byte mutations


@hs.composite
def mutated(draw, body: bytes) -> bytes:
    """``body`` with a few byte-level edits: flips, inserts, deletions, truncation, splices."""
    data = bytearray(body)
    for _ in range(draw(hs.integers(1, 6))):
        op = draw(hs.integers(0, 4))
        at = draw(hs.integers(0, len(data))) if data else 0
        if op == 0 and at < len(data):
            data[at] = draw(hs.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(hs.binary(min_size=1, max_size=8) | hs.sampled_from(
                [b"\x00", b"\xff\xff\xff\xff\x0f", b"\x80" * 10, b"{", b'"', b"\\u0000", b"]"]))
        elif op == 2:
            del data[at:at + draw(hs.integers(1, 16))]
        elif op == 3:
            del data[at:]
        elif data:
            end = draw(hs.integers(at, len(data)))
            data[at:at] = data[at:end]  # duplicate a segment
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Properties


class Hang(AssertionError):
    pass


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail with ``Hang`` if the block takes more than ``seconds`` (main thread only)."""
    def alarm(_signum, _frame):
        raise Hang(f"decoding took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_decoding(body: bytes, fmt: str, limits: Limits = LIMITS,
                   measure_memory: bool = True) -> DecodedBatch | None:
    """Decode ``body`` as ``"protobuf"`` or ``"json"``; assert the properties; return the batch
    (``None`` when the body was refused with ``BadRequest``)."""
    decode = decode_protobuf if fmt == "protobuf" else decode_json
    if measure_memory:
        tracemalloc.start()
    try:
        with no_hang():
            batch = decode(body, limits)
    except BadRequest as exc:
        assert exc.status == 400 and exc.message
        batch = None
    finally:
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    if measure_memory:
        assert peak <= MEMORY_PER_BYTE * len(body) + MEMORY_BASE, (peak, len(body))
    if batch is not None:
        assert batch.rejected >= 0 and len(batch.messages) <= 10
        assert all(isinstance(m, str) and len(m) < 2000 for m in batch.messages)
        for row in batch.spans:
            check_row(row, limits)
    return batch


def check_row(row: SpanRow, limits: Limits = LIMITS) -> None:
    """What ``store.landing.land`` and PostgreSQL need of a row, and what the tree assumes."""
    assert type(row.trace_id) is bytes and len(row.trace_id) == 16 and any(row.trace_id)
    assert type(row.span_id) is bytes and len(row.span_id) == 8 and any(row.span_id)
    assert row.parent_span_id is None or (len(row.parent_span_id) == 8 and any(row.parent_span_id))
    assert 0 < row.start_ns <= INT64_MAX
    assert row.status in (st.RUNNING, st.OK, st.ERROR)
    if row.status == st.RUNNING:
        assert row.end_ns is None and 0 < row.heartbeat_ns <= INT64_MAX
    else:
        assert row.heartbeat_ns is None and row.start_ns <= row.end_ns <= INT64_MAX
    assert 0 <= row.kind <= 2**15 - 1
    for text in (row.name, row.status_message, row.scope, row.resource.job or ""):
        _storable_text(text, limits)
    for doc, shape in ((row.attributes_json, dict), (row.events_json, list),
                       (row.links_json, list), (row.resource.attributes_json, dict)):
        assert "\x00" not in doc and "\\u0000" not in doc  # jsonb refuses both
        assert type(orjson.loads(doc)) is shape
        doc.encode("utf-8")


def _storable_text(text: str, limits: Limits) -> None:
    assert type(text) is str and "\x00" not in text
    assert len(text.encode("utf-8")) <= limits.max_value_bytes + 100  # the cut and its marker


def same_rows(a: DecodedBatch, b: DecodedBatch) -> None:
    """The two front-ends agree: same rows, same number refused."""
    assert a.rejected == b.rejected, (a.messages, b.messages)
    assert a.spans == b.spans
