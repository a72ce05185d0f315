"""Decoded rows are storable: PostgreSQL accepts every text, jsonb, bigint and smallint value.

The decoder's unit tests check the values; this asks the real server, which is what refuses NUL
in text, ``\\u0000`` and ``NaN`` in jsonb, and out-of-range integers (any of which would fail a
whole COPY, so a whole request, after the client was told nothing yet).
"""

from __future__ import annotations

import base64
import json
import math

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tasktree.exporter.receiver.decode import Limits, decode_json, decode_protobuf

NASTY = 'nul\x00 emoji😀 accents é ŝ rtl עברית tab\t newline\n quote" backslash\\ ' + "é" * 40


def _value(value) -> common_pb2.AnyValue:
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    return common_pb2.AnyValue(bytes_value=value)


def _attributes(values: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=key, value=_value(value)) for key, value in values.items()]


def nasty_request() -> ExportTraceServiceRequest:
    attributes = {
        "s\x00": NASTY,
        "nan": math.nan,
        "inf": -math.inf,
        "max": 2**63 - 1,
        "min": -(2**63),
        "tiny": 5e-324,
        "bytes": b"\x00\xff",
    }
    span = trace_pb2.Span(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        name=NASTY,
        kind=32767,
        start_time_unix_nano=1,
        end_time_unix_nano=2**63 - 1,
        status=trace_pb2.Status(code=2, message=NASTY),
    )
    span.attributes.extend(_attributes(attributes))
    span.events.add(time_unix_nano=2**64 - 1, name=NASTY).attributes.extend(_attributes(attributes))
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.extend(
        _attributes(attributes)
    )
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(_attributes({"service.name": NASTY, **attributes}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = NASTY
    scope_spans.spans.append(span)
    return request


def _as_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    from google.protobuf import json_format

    document = json_format.MessageToDict(request)
    rs = document["resourceSpans"][0]
    span = rs["scopeSpans"][0]["spans"][0]
    for node in (span, *span["links"]):  # OTLP/JSON ids are hex, proto3 JSON's are base64
        for key in ("traceId", "spanId"):
            node[key] = base64.b64decode(node[key]).hex()
    return json.dumps(document).encode()


@pytest.mark.parametrize("limit", [30, 1 << 20], ids=["cut", "whole"])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_every_value_of_a_decoded_row_is_accepted_by_postgresql(database_url, limit, encoding):
    request = nasty_request()
    if encoding == "protobuf":
        batch = decode_protobuf(request.SerializeToString(), Limits(limit))
    else:
        batch = decode_json(_as_otlp_json(request), Limits(limit))
    (row,) = batch.spans
    assert row.truncated is (limit == 30)

    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT %s::text, %s::text, %s::text, %s::text, %s::smallint, %s::bigint, %s::bigint,"
            " %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb",
            (
                row.name,
                row.status_message,
                row.scope,
                row.resource.job,
                row.kind,
                row.start_ns,
                row.end_ns,
                row.attributes_json,
                row.events_json,
                row.links_json,
                row.resource.attributes_json,
            ),
        ).fetchone()

    name, message, scope, job = stored[:4]
    assert name == message == scope == job == row.name
    assert "\ufffd" in name and "😀" in name
    attributes = stored[7]
    assert attributes["nan"] == "NaN" and attributes["inf"] == "-Infinity"
    assert attributes["max"] == 2**63 - 1 and attributes["min"] == -(2**63)
    assert stored[8][0]["time_ns"] == 2**64 - 1
    assert stored[10]["service.name"] == row.resource.job
