"""The OTLP/HTTP span exporter ``configure()`` builds: OpenTelemetry's, with a faster encoder.

OpenTelemetry's encoder builds a protobuf object per span, attribute and value before serializing
them: about 20 µs a span, on the export thread of every process that records tasks, holding the
interpreter lock the job's threads need.  :func:`encode_spans` writes the same bytes directly for
the spans tasks make (no events or links; attribute values str, bool, int or float, or lists of
them; any status): about 7 µs a span.  Any other span goes through OpenTelemetry's encoder, so a
request is what OpenTelemetry would send, with two differences: an integer beyond 64 bits, which
OpenTelemetry's encoder drops (logging a traceback), is sent as its decimal text; and text that
UTF-8 cannot encode, which makes OpenTelemetry's encoder fail for the whole request, is sent with
each such character escaped (see :func:`_utf8`).  A span that cannot be encoded at all is left out
of the request (logged, naming it), never the request with it.

In a process forked from the one that configured tasktree (a Celery or multiprocessing pool
process), the resource sent says the process's own ``process.pid``, not its parent's: so every
task there needs no ``process.pid`` attribute of its own (see ``LiveSpanProcessor``).

Under OTLP/gRPC ``configure()`` builds :func:`grpc_exporter_class`'s exporter: OpenTelemetry's
encoder and client, given the same escaped text.

The exporter sends through the OpenTelemetry exporter's own HTTP client (retries, TLS, headers,
compression and the ``OTEL_EXPORTER_OTLP_*`` variables stay OpenTelemetry's); an OpenTelemetry
release whose exporter is laid out differently gets its plain ``export`` instead.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as _encode_slowly
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import PROCESS_PID, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter as SdkSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

_logger = logging.getLogger(__name__)

# Field tags (field number << 3 | wire type) of the OTLP messages written here.  Fields 1, 2, 3 of
# ExportTraceServiceRequest (resource_spans), ResourceSpans (resource, scope_spans, schema_url)
# and ScopeSpans (scope, spans, schema_url); of KeyValue (key, value); of AnyValue:
_FIRST, _SECOND, _THIRD = b"\x0a", b"\x12", b"\x1a"
_STRING, _BOOL, _INT, _DOUBLE, _ARRAY = b"\x0a", b"\x10", b"\x18", b"\x21", b"\x2a"
# Of Span, with the length of the ids:
_TRACE_ID, _SPAN_ID, _TRACE_STATE, _PARENT_ID = b"\x0a\x10", b"\x12\x08", b"\x1a", b"\x22\x08"
_NAME, _START, _END, _ATTRIBUTE, _STATUS, _FLAGS = b"*", b"9", b"A", b"J", b"z", b"\x85\x01"
# Of Status:
_STATUS_MESSAGE, _STATUS_CODE = b"\x12", b"\x18"

_KINDS = (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER)
_KIND_FIELDS = {kind: b"\x30" + bytes((number,)) for number, kind in enumerate(_KINDS, 1)}
_STATUS_CODES = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_FLAGS_LOCAL = _FLAGS + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE = _FLAGS + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_INT64_MIN, _INT64_MAX, _INT64_MASK = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1

_KEYS_KEPT = 4096  # attribute keys with their encoded prefix, remembered
_keys: dict[str, bytes] = {}
# (id of a resource, id of a scope) → the two objects (so that the ids stay theirs), encoded.
_envelopes: dict[tuple[int, int], tuple[object, object, tuple[bytes, bytes]]] = {}
if hasattr(os, "register_at_fork"):  # a child's resource says its own pid: encode it again
    os.register_at_fork(after_in_child=_envelopes.clear)


# What OTLPSpanExporter.export uses, in the releases whose layout this exporter knows.
_EXPORTER_PARTS = ("_client", "_metrics", "_shutdown", "_max_request_size")


class SpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP span exporter (same arguments, variables and requests), its
    requests encoded by :func:`encode_spans`.

    ``retrying`` is True while the export going on has had an attempt fail and waits to try
    again (the sink is down or refusing): the span processor then knows not to wait for it.
    ``problem`` says what went wrong last (for the processor's "not delivered" warning)."""

    sends_own_process_pid = True  # the resource's process.pid is the exporting process's

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.retrying = False
        self.problem = ""
        self.fast = all(hasattr(self, part) for part in _EXPORTER_PARTS) and callable(
            getattr(self._client, "export", None)
        )
        if isinstance(getattr(self._client, "_logger", None), logging.Logger):
            self._client._logger = _RetryNotes(self)  # type: ignore[assignment]  # (warning, error)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.retrying = False
        if self._shutdown:  # the parent's "already shutdown" warning, on the job's stderr, says
            return SpanExportResult.FAILURE  # no more than tasktree's "not delivered" line
        if not self.fast:
            return super().export(spans)
        try:
            request = encode_spans(spans)
        except Exception:
            _logger.exception("tasktree: cannot encode spans; OpenTelemetry's encoder takes them")
            return super().export(spans)
        if 0 < self._max_request_size < len(request):
            return super().export(spans)  # which refuses it, counted and logged its own way
        with self._metrics.export_operation(len(spans)) as result:
            sent = self._client.export(request)
            if not sent.success:
                self.problem = _problem(sent.error, sent.status_code, sent.reason, self.problem)
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


class _RetryNotes(logging.LoggerAdapter):
    """The logger of the OpenTelemetry HTTP client inside ``SpanExporter`` (it takes one, but the
    exporter does not pass one on, hence the private attribute).  The client warns on every retry
    ("Transient error ... retrying in 1s", "Shutdown in progress, aborting retry") and errs when
    it gives up ("Failed to export spans batch code: 401"): with the sink down, five lines on
    the job's own stderr per batch, and cron mails them.  tasktree says what was not delivered
    itself, with the last problem (``SpanExporter.problem``: the status or error), at most once a
    minute (``heartbeat``), so they all go to debug; a retry marks the exporter as retrying."""

    def __init__(self, exporter: SpanExporter):
        super().__init__(logging.getLogger(f"{__name__}.retries"), {})
        self._exporter = exporter

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.WARNING:
            self._exporter.retrying = True
            if args:  # the error that made it retry
                self._exporter.problem = str(args[0])
        super().log(logging.DEBUG, msg, *args, **kwargs)


def _problem(error: object, status: int | None, reason: str | None, retried_for: str) -> str:
    """What a failed export says went wrong: its error, its HTTP status, or what the retries it
    gave up on were for."""
    if error is not None:
        return str(error)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return retried_for or "export failed"


@functools.cache
def grpc_exporter_class() -> Callable[..., SdkSpanExporter]:
    """OpenTelemetry's OTLP/gRPC span exporter (same arguments and variables), its spans' text
    made UTF-8 first (:func:`utf8_spans`).  ImportError without
    ``opentelemetry-exporter-otlp-proto-grpc``."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    class GrpcSpanExporter(Grpc):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return super().export(utf8_spans(spans))

    return GrpcSpanExporter


def utf8_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """``spans``, each one holding text UTF-8 cannot encode, or an integer attribute beyond 64
    bits, replaced by a copy with that text escaped as :func:`_utf8` does and those integers as
    their decimal text (as :func:`_value` sends them): OpenTelemetry's encoder fails a whole
    request on one such character, and drops such an integer with a traceback."""
    return [
        span
        if _all_utf8(_span_texts(span), _attribute_texts(span.resource.attributes))
        and not _has_wide_int(span)
        else _escaped(span)
        for span in spans
    ]


def _has_wide_int(span: ReadableSpan) -> bool:
    attributes = [span.attributes, *(e.attributes for e in span.events)]
    attributes += [link.attributes for link in span.links]
    return any(
        _is_wide_int(item)
        for each in attributes
        for value in (each or {}).values()
        for item in (value if isinstance(value, (list, tuple)) else (value,))
    )


def _is_wide_int(value: Any) -> bool:
    return type(value) is int and not _INT64_MIN <= value <= _INT64_MAX


class _NotSimple(Exception):
    """The span needs OpenTelemetry's encoder."""


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``: what
    ``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` gives, byte for byte
    when the spans share one resource object (spans of one ``TracerProvider``)."""
    # Grouped by identity: hashing a Resource serializes all its attributes, every time.
    grouped: dict[int, dict[int, tuple[ReadableSpan, list[bytes]]]] = {}
    for span in spans:
        encoded_span = _span_or_none(span)
        if encoded_span is None:
            continue
        by_scope = grouped.setdefault(id(span.resource), {})
        first_and_encoded = by_scope.get(id(span.instrumentation_scope))
        if first_and_encoded is None:
            first_and_encoded = by_scope[id(span.instrumentation_scope)] = (span, [])
        first_and_encoded[1].append(encoded_span)
    parts = []
    for by_scope in grouped.values():
        body: list[bytes] = []
        for first, encoded in by_scope.values():
            resource, scope = _envelope(first)
            if not body:
                body.append(_field(_FIRST, resource))
            scope_spans = [_field(_FIRST, scope), *(_field(_SECOND, span) for span in encoded)]
            schema_url = first.instrumentation_scope and first.instrumentation_scope.schema_url
            if schema_url:
                scope_spans.append(_string_field(_THIRD, schema_url))
            body.append(_field(_SECOND, b"".join(scope_spans)))
        if first.resource.schema_url:
            body.append(_string_field(_THIRD, first.resource.schema_url))
        parts.append(_field(_FIRST, b"".join(body)))
    return b"".join(parts)


def _span_or_none(span: ReadableSpan) -> bytes | None:
    """The encoded span; None (logged) if even OpenTelemetry's encoder cannot encode it: the
    other spans of the request must not be lost with it."""
    try:
        return _span(span)
    except Exception:
        _logger.exception(
            "tasktree: cannot encode the record of task %r (span %016x); it is not sent",
            getattr(span, "name", None),
            span.context.span_id if span.context is not None else 0,
        )
        return None


def _span(span: ReadableSpan) -> bytes:
    try:
        return _simple_span(span)
    except Exception:  # noqa: BLE001 - _NotSimple, or what OpenTelemetry's encoder handles its way
        request = _encode_slowly(utf8_spans([span]))
        return request.resource_spans[0].scope_spans[0].spans[0].SerializePartialToString()


def _simple_span(span: ReadableSpan) -> bytes:
    """A span with no events or links, nothing dropped, a name and both times; else _NotSimple
    (fields with a default value, which protobuf leaves out, are never written here)."""
    if span.events or span.links or not (span.name and span.start_time and span.end_time):
        raise _NotSimple
    if span.dropped_attributes or span.dropped_events or span.dropped_links:
        raise _NotSimple
    context, parent, name = span.context, span.parent, _utf8(span.name)
    parts = [_TRACE_ID, context.trace_id.to_bytes(16, "big"), _SPAN_ID]
    parts.append(context.span_id.to_bytes(8, "big"))
    if context.trace_state:
        parts.append(_string_field(_TRACE_STATE, context.trace_state.to_header()))
    if parent is not None:
        parts += (_PARENT_ID, parent.span_id.to_bytes(8, "big"))
    parts += (_NAME, _varint(len(name)), name, _KIND_FIELDS[span.kind])
    parts += (_START, _fixed64(span.start_time), _END, _fixed64(span.end_time))
    for key, value in (span.attributes or {}).items():
        parts.append(_field(_ATTRIBUTE, _key(key) + _field(_SECOND, _value(value))))
    parts.append(_field(_STATUS, _status(span)))
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _value(value: Any) -> bytes:
    kind = type(value)  # exact types: a subclass (an IntEnum, say) takes OpenTelemetry's path
    if kind is str:
        return _string_field(_STRING, value)
    if kind is bool:
        return _BOOL + (b"\x01" if value else b"\x00")
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return _INT + _varint(value & _INT64_MASK)
        # OTLP has no wider integer; OpenTelemetry's encoder drops the attribute with a traceback.
        return _string_field(_STRING, str(value))
    if kind is float:
        return _DOUBLE + _double(value)
    if kind is tuple or kind is list:
        return _field(_ARRAY, b"".join(_field(_FIRST, _value(item)) for item in value))
    raise _NotSimple


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    code = _STATUS_CODES[status.status_code]
    encoded = _string_field(_STATUS_MESSAGE, status.description) if status.description else b""
    return encoded + (_STATUS_CODE + bytes((code,)) if code else b"")


def _key(key: str) -> bytes:
    encoded = _keys.get(key)
    if encoded is None:
        if not key:
            raise _NotSimple
        if len(_keys) >= _KEYS_KEPT:
            _keys.clear()
        encoded = _keys[key] = _string_field(_FIRST, key)
    return encoded


def _envelope(span: ReadableSpan) -> tuple[bytes, bytes]:
    """The encoded resource and scope of ``span``, as OpenTelemetry encodes them; once per
    process for each pair (all the spans of a tracer share the same two objects)."""
    resource, scope = span.resource, span.instrumentation_scope
    kept = _envelopes.get((id(resource), id(scope)))
    if kept is not None and kept[0] is resource and kept[1] is scope:
        return kept[2]
    # A bare span of the same resource and scope: the span's own attributes are not needed.
    bare = ReadableSpan(
        name="-",  # (its own is not needed either, and may not be UTF-8)
        context=span.context,
        resource=_escaped_resource(_with_own_pid(resource)),
        instrumentation_scope=scope,
    )
    resource_spans = _encode_slowly([bare]).resource_spans[0]
    encoded = (
        resource_spans.resource.SerializePartialToString(),
        resource_spans.scope_spans[0].scope.SerializePartialToString(),
    )
    if len(_envelopes) >= _KEYS_KEPT:
        _envelopes.clear()
    _envelopes[id(resource), id(scope)] = (resource, scope, encoded)
    return encoded


def _with_own_pid(resource: Resource) -> Resource:
    """``resource``, saying this process's pid if it says another one's: a resource made before a
    fork describes the parent, and the spans exported here are this process's."""
    pid = os.getpid()
    if resource.attributes.get(PROCESS_PID, pid) == pid:
        return resource
    return resource.merge(Resource({PROCESS_PID: pid}))


def _string_field(tag: bytes, text: str) -> bytes:
    return _field(tag, _utf8(text))


def _utf8(text: str) -> bytes:
    """``text`` in UTF-8, a character UTF-8 cannot encode as its Python escape (``\\udcff``).

    Such a character is a lone surrogate: what ``os.fsdecode`` and ``os.listdir`` make of a file
    name that is not UTF-8 (byte 0xff becomes U+DCFF).  Protobuf refuses it.  The escape rather
    than U+FFFD: it keeps which byte it was, and reads as Python shows the name (``repr``)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


# -- text UTF-8 cannot encode, for OpenTelemetry's encoder, which refuses it ----------------------


def _span_texts(span: ReadableSpan) -> Iterator[str]:
    yield span.name or ""
    yield span.status.description or ""
    yield from _attribute_texts(span.attributes)
    for event in span.events:
        yield event.name
        yield from _attribute_texts(event.attributes)
    for link in span.links:
        yield from _attribute_texts(link.attributes)


def _attribute_texts(attributes: Attributes) -> Iterator[str]:
    for key, value in (attributes or {}).items():
        yield key
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, str))


def _all_utf8(*texts: Iterable[str]) -> bool:
    try:
        "".join(itertools.chain(*texts)).encode()
    except UnicodeEncodeError:
        return False
    return True


def _escaped(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` whose every text is valid UTF-8 (escaped as :func:`_utf8` does)."""
    status = span.status
    return ReadableSpan(
        name=_escaped_text(span.name or ""),
        context=span.context,
        parent=span.parent,
        resource=_escaped_resource(span.resource),
        attributes=_escaped_attributes(span.attributes),
        events=[
            Event(_escaped_text(e.name), _escaped_attributes(e.attributes), e.timestamp)
            for e in span.events
        ],
        links=[Link(link.context, _escaped_attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=Status(status.status_code, status.description and _escaped_text(status.description)),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _escaped_resource(resource: Resource) -> Resource:
    if _all_utf8(_attribute_texts(resource.attributes)):
        return resource
    return Resource(_escaped_attributes(resource.attributes), resource.schema_url)


def _escaped_attributes(attributes: Attributes) -> dict[str, Any]:
    return {_escaped_text(key): _escaped_value(value) for key, value in (attributes or {}).items()}


def _escaped_value(value: Any) -> Any:
    if isinstance(value, str):
        return _escaped_text(value)
    if _is_wide_int(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped_value(item) for item in value)
    return value


def _escaped_text(text: str) -> str:
    return _utf8(text).decode()


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _varint(number: int) -> bytes:
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)
