"""OTLP trace requests (protobuf or JSON) → ``SpanRow`` objects.  Pure: no I/O, no globals written.

Contracts:

* A body that cannot be read as an ``ExportTraceServiceRequest`` raises ``BadRequest`` naming what
  was wrong (and, for JSON, where).  Nothing of such a body is kept.
* A span that can be read but is not acceptable (bad ids, missing or impossible times) is left out
  alone: ``batch.reject(1, reason)`` with a reason naming the span and the field (OTLP
  ``partial_success``); every other span of the request is kept.
* Every string is made storable in PostgreSQL ``text``/``jsonb``: NUL becomes U+FFFD and
  non-finite doubles become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; in JSON an
  unpaired surrogate escape becomes U+FFFD too.  (Invalid UTF-8 makes the body malformed: upb and
  orjson refuse it, so no such string ever reaches a row.)
* A string longer than ``Limits.max_value_bytes`` UTF-8 bytes is cut there and suffixed with a
  visible marker; the row gets ``truncated=True``.  Nothing is dropped silently.

The protobuf and JSON front-ends produce identical rows for the same spans.  Both hand the
extracted values to ``_Builder.add_span``, the one place where spans are validated and rows built.
The JSON front-end reads the parsed dict directly rather than through
``google.protobuf.json_format`` (pure Python, ~10× slower than this whole decoder) and follows
OTLP/JSON: hex ids, lowerCamelCase keys, enums as integers or names, 64-bit integers as strings or
numbers, unknown keys ignored.  orjson parses and serialises: ``json.dumps`` alone took a third of
the protobuf decoding time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tasktree.exporter.errors import BadRequest
from tasktree.exporter.receiver.records import (
    MAX_NAME_BYTES,
    DecodedBatch,
    Resource,
    SpanRow,
    cut,
)
from tasktree.exporter.search import task_words
from tasktree.exporter.tree.status import ERROR, OK, RUNNING
from tasktree.instrumentation.snapshot import LIVE_ATTRIBUTE, LIVE_VALUE  # the jobs' marker

if TYPE_CHECKING:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from tasktree.exporter.settings import Settings

JsonObject = dict[str, Any]
"""A decoded JSON object (``orjson``), or one built for a row's JSON column."""

__all__ = ["Limits", "decode_json", "decode_protobuf", "decode_request"]

_INT64_MAX = 2**63 - 1  # PostgreSQL bigint: larger times would make the whole COPY fail
_INT64_MIN = -(2**63)
_SMALLINT_MAX = 2**15 - 1  # span_landing.kind is smallint
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
# upb refuses protobuf nested deeper than 100 messages, i.e. ~48 AnyValue levels; JSON is held to
# the same, which also keeps rows within orjson's serialisation depth (254).
_MAX_NESTING = 50
_STATUS_CODE_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}

# OTLP/JSON enums may be names; unknown names read as 0 (unspecified), like unknown fields.
_SPAN_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODE_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

# The resource JSON is hashed, so it is canonical (once per ResourceSpans: speed does not matter).
_canonical = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-value limits applied while decoding (see ``Settings.max_value_bytes``)."""

    max_value_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_value_bytes=settings.max_value_bytes)


def decode_protobuf(body: bytes, limits: Limits) -> DecodedBatch:
    """Decode a binary OTLP ``ExportTraceServiceRequest``; raise ``BadRequest`` if it is not one."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(
            f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}{_gzip_hint(body)}"
        ) from None
    return decode_request(request, limits)


_GZIP_MAGIC = b"\x1f\x8b"


def _gzip_hint(body: bytes) -> str:
    """What a body that is gzip data sent without ``Content-Encoding: gzip`` needs said."""
    if body.startswith(_GZIP_MAGIC):
        return " (the body is gzip-compressed: send it with the header Content-Encoding: gzip)"
    return ""


def decode_request(request: ExportTraceServiceRequest, limits: Limits) -> DecodedBatch:
    """Turn a parsed request into rows; never raises for content (bad spans are rejected alone)."""
    return _ProtoDecoder(limits).request(request)


def decode_json(body: bytes, limits: Limits) -> DecodedBatch:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest``; raise ``BadRequest`` if it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8, lone surrogates, too deep
        document = _with_lone_surrogates(body)
        if document is None:
            raise BadRequest(f"body is not valid JSON: {exc}{_gzip_hint(body)}") from None
    if type(document) is not dict:
        raise BadRequest(
            "body must be a JSON object (an OTLP ExportTraceServiceRequest), "
            f"got {_json_type(document)}"
        )
    return _JsonDecoder(limits).request(document)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _with_lone_surrogates(body: bytes) -> Any:
    """The document of a JSON body orjson refused for an escaped lone surrogate (``"\\ud83d"``),
    each such character made U+FFFD (what the same exporter's protobuf encoding sends).  JSON
    allows the escape, and exporters write it: the Node SDK cuts a string to its length limit
    between the two halves of an emoji.  None for a body that is not JSON for another reason."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    pending = [document] if type(document) in (dict, list) else []
    while pending:  # not recursive: the document may be as deep as json allows
        node = pending.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in list(items):
            if type(value) is str:
                node[key] = _SURROGATE.sub("\ufffd", value)
            elif type(value) in (dict, list):
                pending.append(value)
            if type(key) is str and _SURROGATE.search(key):
                node[_SURROGATE.sub("\ufffd", key)] = node.pop(key)
    return document


UNKNOWN_SERVICE = "unknown_service"
"""The job of spans whose resource names none (no, an empty or a non-text ``service.name``): what
OpenTelemetry's SDKs call such a service, and a ``job_name`` label Prometheus keeps (an empty
label value is no label at all)."""

FUTURE_HEARTBEAT_NS = 60 * 10**9
"""How far past the time it is received a running snapshot's heartbeat counts: beyond that a job's
clock is ahead, and a task it stamped an hour ahead stayed `running` that hour after a kill."""


class _SpanRejected(Exception):
    """One span is unacceptable; the message is the reason given back to the client."""


class _Malformed(Exception):
    """The JSON document does not have the OTLP shape; the message says which field and why."""


class _Builder:
    """What both front-ends share: string sanitising, limits, validation and row building.

    ``truncated`` is set by ``text`` and reset by the front-end for each span, so a row records
    whether any of its own values (or its resource's) was cut.
    """

    def __init__(self, limits: Limits):
        self.limit = limits.max_value_bytes
        # A str of n code points has between n and 4n UTF-8 bytes: below this, no need to encode.
        self.quick = limits.max_value_bytes // 4
        self.batch = DecodedBatch()
        self.truncated = False
        self.latest_heartbeat = time.time_ns() + FUTURE_HEARTBEAT_NS

    def text(self, s: str) -> str:
        """``s`` made storable and within the limit (the hot path: two C-level checks)."""
        if "\x00" in s:
            s = s.replace("\x00", "\ufffd")  # PostgreSQL text and jsonb refuse NUL
        if len(s) > self.quick:
            s = self._limit(s)
        return s

    def _limit(self, s: str) -> str:
        kept = cut(s, self.limit)
        if kept is not s:
            self.truncated = True
        return kept

    def resource(self, attributes: JsonObject, dropped: int) -> tuple[Resource, bool]:
        """The ``Resource`` for decoded attributes, and whether any of its values was cut."""
        if dropped:
            attributes["tasktree.dropped_attributes"] = dropped
        canonical = _canonical(attributes)
        job = attributes.get("service.name")
        resource = Resource(
            digest=hashlib.sha256(canonical.encode("utf-8")).digest(),
            job=cut(job, MAX_NAME_BYTES) if type(job) is str and job.strip() else UNKNOWN_SERVICE,
            attributes_json=canonical,
        )
        return resource, self.truncated

    def add_span(
        self,
        resource: Resource,
        scope: str,
        trace_id: bytes,
        span_id: bytes,
        parent: bytes,
        name: str,
        kind: int,
        start: int,
        end: int,
        code: int,
        message: str,
        attributes: JsonObject,
        events: Sequence[Any],  # rows' event objects, or protobuf's empty repeated field
        links: Sequence[Any],
    ) -> None:
        """Validate one span and append its row, or reject it alone with the reason."""
        running = attributes.get(LIVE_ATTRIBUTE) == LIVE_VALUE
        reason = _check_ids(trace_id, span_id, parent)
        if reason is None:
            reason = _check_times(start, end, running) or _check_kind(kind)
        if reason is not None:
            self.batch.reject(1, f"{_span_label(trace_id, span_id)}: {reason}")
            return
        if running:  # a job whose clock runs ahead must still turn stalled once killed
            status, end_ns, heartbeat_ns = RUNNING, None, min(end or start, self.latest_heartbeat)
        else:
            status, end_ns, heartbeat_ns = ERROR if code == _STATUS_CODE_ERROR else OK, end, None
        attributes_json = orjson.dumps(attributes).decode() if attributes else "{}"
        # Positional, in SpanRow's field order: keyword construction costs ~10% of decode time.
        self.batch.spans.append(
            SpanRow(
                trace_id,
                span_id,
                parent if parent and parent != _ZERO_SPAN else None,
                name,
                kind,
                start,
                end_ns,
                heartbeat_ns,
                status,
                message,
                resource,
                scope,
                attributes_json,
                orjson.dumps(events).decode() if events else "[]",
                orjson.dumps(links).decode() if links else "[]",
                self.truncated,
                task_words(name, message, attributes, attributes_json),
            )
        )


def _check_ids(trace_id: bytes, span_id: bytes, parent: bytes) -> str | None:
    if len(trace_id) != 16:
        return f"trace_id must be 16 bytes, got {len(trace_id)}"
    if trace_id == _ZERO_TRACE:
        return "trace_id is all zeros (invalid)"
    if len(span_id) != 8:
        return f"span_id must be 8 bytes, got {len(span_id)}"
    if span_id == _ZERO_SPAN:
        return "span_id is all zeros (invalid)"
    if parent and len(parent) != 8:
        return f"parent_span_id must be empty or 8 bytes, got {len(parent)}"
    return None


def _check_times(start: int, end: int, running: bool) -> str | None:
    if start <= 0:
        return "start_time_unix_nano is missing (0)"
    if start > _INT64_MAX or end > _INT64_MAX:
        return f"times beyond year 2262 are not supported (start {start}, end {end})"
    if not running and end < start:
        if end == 0:
            return "end_time_unix_nano is missing (0) on an ended span"
        return f"end_time_unix_nano {end} is before start_time_unix_nano {start}"
    return None


def _check_kind(kind: int) -> str | None:
    if 0 <= kind <= _SMALLINT_MAX:
        return None
    return f"kind {kind} is not a span kind"


def _span_label(trace_id: bytes, span_id: bytes) -> str:
    return f"span {_hex(span_id)} of trace {_hex(trace_id)}"


def _hex(value: bytes) -> str:
    """Lowercase hex for messages, shortened so a huge bogus id cannot flood a response."""
    if not value:
        return "(empty)"
    return value[:32].hex() + ("…" if len(value) > 32 else "")


def _double(d: float) -> float | str:
    """A double as JSON can hold it: finite numbers as they are, the rest as strings."""
    if math.isfinite(d):
        return d
    return "NaN" if d != d else _NONFINITE[d]


# --------------------------------------------------------------------------------------------
# Protobuf front-end


class _ProtoDecoder(_Builder):
    def request(self, request: ExportTraceServiceRequest) -> DecodedBatch:
        for resource_spans in request.resource_spans:
            self.truncated = False
            resource_pb = resource_spans.resource
            resource, resource_truncated = self.resource(
                self.attributes(resource_pb.attributes), resource_pb.dropped_attributes_count
            )
            for scope_spans in resource_spans.scope_spans:
                self.truncated = resource_truncated
                scope = self.text(scope_spans.scope.name)
                scope_truncated = self.truncated
                for span in scope_spans.spans:
                    self.truncated = scope_truncated
                    self.span(span, resource, scope)
        return self.batch

    def span(self, span: Span, resource: Resource, scope: str) -> None:
        attributes = self.attributes(span.attributes)
        if span.dropped_attributes_count:
            attributes["tasktree.dropped_attributes"] = span.dropped_attributes_count
        if span.dropped_events_count:
            attributes["tasktree.dropped_events"] = span.dropped_events_count
        if span.dropped_links_count:
            attributes["tasktree.dropped_links"] = span.dropped_links_count
        events = span.events
        if events:
            events = [self.event(e) for e in events]
        links = span.links
        if links:
            links = [self.link(link) for link in links]
        status = span.status
        self.add_span(
            resource,
            scope,
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            self.text(span.name),
            span.kind,
            span.start_time_unix_nano,
            span.end_time_unix_nano,
            status.code,
            self.text(status.message),
            attributes,
            events,
            links,
        )

    def event(self, event: Span.Event) -> JsonObject:
        attributes = self.attributes(event.attributes)
        if event.dropped_attributes_count:
            attributes["tasktree.dropped_attributes"] = event.dropped_attributes_count
        return {
            "time_ns": event.time_unix_nano,
            "name": self.text(event.name),
            "attributes": attributes,
        }

    def link(self, link: Span.Link) -> JsonObject:
        attributes = self.attributes(link.attributes)
        if link.dropped_attributes_count:
            attributes["tasktree.dropped_attributes"] = link.dropped_attributes_count
        return {
            "trace_id": link.trace_id.hex(),
            "span_id": link.span_id.hex(),
            "attributes": attributes,
        }

    def attributes(self, key_values: Iterable[KeyValue]) -> JsonObject:
        """``KeyValue``s as a dict.  The common scalar cases are inlined: this loop is most of the
        decoding time, and a method call per value would cost a third of it."""
        out = {}
        quick = self.quick
        for kv in key_values:
            key = kv.key
            if len(key) > quick or "\x00" in key:
                key = self.text(key)
            v = kv.value
            x: Any = v.string_value  # most values are strings: this skips WhichOneof for them
            if x:
                if len(x) > quick or "\x00" in x:
                    x = self.text(x)
            else:
                kind = v.WhichOneof("value")
                if kind == "int_value":
                    x = v.int_value
                elif kind == "bool_value":
                    x = v.bool_value
                elif kind != "string_value":  # an empty string stays ""
                    x = self.value(v, kind)
            out[key] = x
        return out

    def value(self, v: AnyValue, kind: str | None) -> Any:
        """An ``AnyValue`` whose set field is ``kind``, as a JSON-ready value (unset: ``None``)."""
        if kind == "string_value":
            return self.text(v.string_value)
        if kind == "double_value":
            return _double(v.double_value)
        if kind == "int_value" or kind == "bool_value":
            return getattr(v, kind)
        if kind == "array_value":
            return [self.value(item, item.WhichOneof("value")) for item in v.array_value.values]
        if kind == "kvlist_value":
            return self.attributes(v.kvlist_value.values)
        if kind == "bytes_value":
            return self.text(base64.b64encode(v.bytes_value).decode("ascii"))
        return None


# --------------------------------------------------------------------------------------------
# JSON front-end (OTLP/JSON, https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding)


class _JsonDecoder(_Builder):
    depth = 0  # arrayValue/kvlistValue nesting of the value being read

    def nest(self, at: str, key: str) -> None:
        """Count one more level of nesting; refuse what protobuf (upb) would refuse too."""
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _Malformed(f"{at} {key!r}: values nested more than {_MAX_NESTING} levels deep")

    def request(self, document: JsonObject) -> DecodedBatch:
        where = "resourceSpans"
        try:
            for i, resource_spans in enumerate(_array(document.get("resourceSpans"))):
                where = f"resourceSpans[{i}]"
                self.resource_spans(_object(resource_spans))
        except _Malformed as exc:
            raise BadRequest(f"malformed OTLP/JSON at {where}{exc}") from None
        return self.batch

    def resource_spans(self, resource_spans: JsonObject) -> None:
        self.truncated = False
        resource_json = _object(resource_spans.get("resource"), ".resource")
        resource, resource_truncated = self.resource(
            self.attributes(resource_json.get("attributes"), ".resource.attributes"),
            _uint(resource_json.get("droppedAttributesCount"), ".resource.droppedAttributesCount"),
        )
        for j, scope_spans in enumerate(_array(resource_spans.get("scopeSpans"), ".scopeSpans")):
            at = f".scopeSpans[{j}]"
            scope_spans = _object(scope_spans, at)
            self.truncated = resource_truncated
            scope_json = _object(scope_spans.get("scope"), at + ".scope")
            scope = self.text(_str(scope_json.get("name"), at + ".scope.name"))
            scope_truncated = self.truncated
            for k, span in enumerate(_array(scope_spans.get("spans"), at + ".spans")):
                self.truncated = scope_truncated
                try:
                    self.span(_object(span), resource, scope)
                except _Malformed as exc:
                    raise _Malformed(f"{at}.spans[{k}]{exc}") from None

    def span(self, span: JsonObject, resource: Resource, scope: str) -> None:
        try:
            trace_id = _hex_id(span.get("traceId"), ".traceId")
            span_id = _hex_id(span.get("spanId"), ".spanId")
            parent = _hex_id(span.get("parentSpanId"), ".parentSpanId")
            start = _time(span.get("startTimeUnixNano"), ".startTimeUnixNano")
            end = _time(span.get("endTimeUnixNano"), ".endTimeUnixNano")
            events = [self.event(e, n) for n, e in enumerate(_array(span.get("events"), ".events"))]
            links = [self.link(x, n) for n, x in enumerate(_array(span.get("links"), ".links"))]
        except _SpanRejected as exc:
            label = f"span {span.get('spanId')!r:.40} of trace {span.get('traceId')!r:.70}"
            self.batch.reject(1, f"{label}: {exc}")
            return
        attributes = self.attributes(span.get("attributes"), ".attributes")
        for key, label in (
            ("droppedAttributesCount", "tasktree.dropped_attributes"),
            ("droppedEventsCount", "tasktree.dropped_events"),
            ("droppedLinksCount", "tasktree.dropped_links"),
        ):
            dropped = _uint(span.get(key), "." + key)
            if dropped:
                attributes[label] = dropped
        status = _object(span.get("status"), ".status")
        self.add_span(
            resource,
            scope,
            trace_id,
            span_id,
            parent,
            self.text(_str(span.get("name"), ".name")),
            _enum(span.get("kind"), _SPAN_KIND_NAMES, ".kind"),
            start,
            end,
            _enum(status.get("code"), _STATUS_CODE_NAMES, ".status.code"),
            self.text(_str(status.get("message"), ".status.message")),
            attributes,
            events,
            links,
        )

    def event(self, event: Any, n: int) -> JsonObject:
        at = f".events[{n}]"
        event = _object(event, at)
        attributes = self.attributes(event.get("attributes"), at + ".attributes")
        dropped = _uint(event.get("droppedAttributesCount"), at + ".droppedAttributesCount")
        if dropped:
            attributes["tasktree.dropped_attributes"] = dropped
        return {
            "time_ns": _time(event.get("timeUnixNano"), at + ".timeUnixNano"),
            "name": self.text(_str(event.get("name"), at + ".name")),
            "attributes": attributes,
        }

    def link(self, link: Any, n: int) -> JsonObject:
        at = f".links[{n}]"
        link = _object(link, at)
        attributes = self.attributes(link.get("attributes"), at + ".attributes")
        dropped = _uint(link.get("droppedAttributesCount"), at + ".droppedAttributesCount")
        if dropped:
            attributes["tasktree.dropped_attributes"] = dropped
        return {
            "trace_id": _hex_id(link.get("traceId"), at + ".traceId").hex(),
            "span_id": _hex_id(link.get("spanId"), at + ".spanId").hex(),
            "attributes": attributes,
        }

    def attributes(self, key_values: Any, at: str) -> JsonObject:
        if key_values is None:
            return {}
        if type(key_values) is not list:
            raise _Malformed(f"{at}: expected an array of key-values, got {_json_type(key_values)}")
        out = {}
        quick = self.quick
        for kv in key_values:
            if type(kv) is not dict:
                raise _Malformed(f"{at}: expected a key-value object, got {_json_type(kv)}")
            key = kv.get("key", "")
            if type(key) is not str:
                raise _Malformed(f"{at}: key must be a string, got {_json_type(key)}")
            value = kv.get("value")
            # The common case (a string value) inlined, as in the protobuf front-end.
            if type(value) is dict and type(x := value.get("stringValue")) is str:
                if len(x) > quick or "\x00" in x:
                    x = self.text(x)
            elif value is None:
                x = None
            else:
                x = self.value(value, at, key)
            if len(key) > quick or "\x00" in key:
                key = self.text(key)
            out[key] = x
        return out

    def value(self, v: Any, at: str, key: str) -> Any:
        """An OTLP/JSON ``AnyValue`` object as a JSON-ready Python value."""
        if type(v) is not dict:
            raise _Malformed(f"{at} {key!r}: value must be an AnyValue object, got {_json_type(v)}")
        if (x := v.get("stringValue")) is not None:
            if type(x) is not str:
                raise _Malformed(f"{at} {key!r}: stringValue must be a string, got {_json_type(x)}")
            return self.text(x)
        if (x := v.get("intValue")) is not None:
            return _int_value(x, f"{at} {key!r}: intValue")
        if (x := v.get("boolValue")) is not None:
            if type(x) is not bool:
                raise _Malformed(
                    f"{at} {key!r}: boolValue must be true or false, got {_json_type(x)}"
                )
            return x
        if (x := v.get("doubleValue")) is not None:
            return _double(_float(x, f"{at} {key!r}: doubleValue"))
        if (x := v.get("arrayValue")) is not None:
            self.nest(at, key)
            values = _object(x, f"{at} {key!r}: arrayValue").get("values")
            items = [
                None if item is None else self.value(item, at, key)
                for item in _array(values, f"{at} {key!r}: arrayValue.values")
            ]
            self.depth -= 1
            return items
        if (x := v.get("kvlistValue")) is not None:
            self.nest(at, key)
            values = _object(x, f"{at} {key!r}: kvlistValue").get("values")
            entries = self.attributes(values, f"{at} {key!r}: kvlistValue.values")
            self.depth -= 1
            return entries
        if (x := v.get("bytesValue")) is not None:
            return self.text(_base64(x, f"{at} {key!r}: bytesValue"))
        return None


def _json_type(x: Any) -> str:
    if x is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(x), type(x).__name__)


def _array(x: Any, at: str = "") -> list[Any]:
    if x is None:
        return []
    if type(x) is not list:
        raise _Malformed(f"{at}: expected an array, got {_json_type(x)}")
    return x


def _object(x: Any, at: str = "") -> JsonObject:
    if x is None:
        return {}
    if type(x) is not dict:
        raise _Malformed(f"{at}: expected an object, got {_json_type(x)}")
    return x


def _str(x: Any, at: str) -> str:
    if x is None:
        return ""
    if type(x) is not str:
        raise _Malformed(f"{at}: expected a string, got {_json_type(x)}")
    return x


def _integer(x: Any, at: str) -> int:
    """A proto3-JSON integer: a number or a decimal string (``"123"``), never a boolean."""
    t = type(x)
    if t is int:
        return cast(int, x)
    if t is str:
        # Short strings only: int() of thousands of digits raises (and is slow) on Python 3.11+.
        if len(x) <= 21 and x.isascii() and (x.isdigit() or (x[:1] == "-" and x[1:].isdigit())):
            return int(x)
    elif t is float and x.is_integer():
        return int(x)
    raise _Malformed(f"{at}: expected an integer (number or decimal string), got {x!r:.40}")


def _uint(x: Any, at: str) -> int:
    """An unsigned 64-bit field (times, counts); absent is 0."""
    if x is None:
        return 0
    value = _integer(x, at)
    if not 0 <= value < 2**64:
        raise _Malformed(f"{at}: {value} is outside the unsigned 64-bit range")
    return value


def _long_digits(x: Any) -> bool:
    """Whether ``x`` is an integer's decimal text too long for ``_integer`` to read."""
    return type(x) is str and len(x) > 21 and x.isascii() and x.lstrip("-").isdigit()


def _time(x: Any, at: str) -> int:
    """A time (fixed64 nanoseconds; absent is 0).  Only JSON can write one outside that range
    (before 1970, or past 2554 like year 9999): a valid number, so the span is refused alone."""
    if x is None:
        return 0
    if _long_digits(x):
        # A valid number too long for _integer to read: out of range, this span alone.
        when = "before 1970 (negative)" if x.startswith("-") else "beyond year 2262 (not supported)"
        raise _SpanRejected(f"{at[1:]} {x:.30}… is {when}")
    value = _integer(x, at)
    if value < 0:
        raise _SpanRejected(f"{at[1:]} {value} is before 1970 (negative)")
    if value >= 2**64:
        raise _SpanRejected(f"{at[1:]} {value} is beyond year 2262 (not supported)")
    return value


def _int_value(x: Any, at: str) -> int | float | str:
    """An attribute's ``intValue``.  A whole number beyond 64 bits is no OTLP integer, but JSON
    exporters write one for any whole number they hold (the Node SDK for 2**64 or
    Number.MAX_VALUE, which its protobuf exporter sends as a double): it is kept as that double,
    not its request refused."""
    if _long_digits(x):
        return _double(float(x))  # too long for _integer to read
    value = _integer(x, at)
    if not _INT64_MIN <= value <= _INT64_MAX:
        return _double(float(value))
    return value


def _enum(x: Any, names: dict[str, int], at: str) -> int:
    if x is None:
        return 0
    if type(x) is str and not x.lstrip("-").isdigit():
        return names.get(x, 0)
    return _integer(x, at)


def _float(x: Any, at: str) -> float:
    t = type(x)
    if t is float or t is int:
        return float(x)
    if t is str:
        try:
            return float(x)  # includes "NaN", "Infinity", "-Infinity" as proto3 JSON allows
        except ValueError:
            pass
    raise _Malformed(f"{at}: expected a number or a numeric string, got {x!r:.40}")


def _base64(x: Any, at: str) -> str:
    """Proto3-JSON bytes (standard or URL-safe base64, padding optional) in standard base64."""
    if type(x) is not str:
        raise _Malformed(f"{at}: expected a base64 string, got {_json_type(x)}")
    try:
        raw = base64.b64decode(
            x.replace("-", "+").replace("_", "/") + "=" * (-len(x) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise _Malformed(f"{at}: not valid base64: {x!r:.40}") from None
    return base64.b64encode(raw).decode("ascii")


def _hex_id(x: Any, at: str) -> bytes:
    """A hex trace/span id (any case) as bytes; absent is empty.  Not hex rejects the span."""
    if x is None or x == "":
        return b""
    if type(x) is not str:
        raise _Malformed(f"{at}: expected a hex string, got {_json_type(x)}")
    try:
        if not x.isascii() or " " in x:
            raise ValueError
        return bytes.fromhex(x)
    except ValueError:
        raise _SpanRejected(f"{at[1:]} {x!r:.70} is not hexadecimal") from None
