"""The OTLP decoders fuzzed (bounded: a few hundred examples each; ``bench/fuzz_decoders.py``
runs the same properties for minutes).  See ``otlp_fuzz`` for the inputs and the properties:
``BadRequest`` or rows, never another exception, no hang, memory linear in the body, and every
row storable as it is."""

from __future__ import annotations

import base64
import time
from types import SimpleNamespace
from unittest import mock

import orjson
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tasktree.exporter.receiver import decode
from tasktree.exporter.receiver.decode import Limits, decode_json, decode_protobuf

from ..otlp_fuzz import (
    check_decoding,
    dump,
    json_values,
    mutated,
    near_otlp_json,
    requests,
    same_rows,
    to_json,
)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])


@FUZZ
@given(request=requests())
def test_any_protobuf_request_decodes_into_storable_rows(request):
    batch = check_decoding(request.SerializeToString(), "protobuf")
    assert batch is not None  # a well-formed message is never refused whole
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert len(batch.spans) + batch.rejected == spans  # each span kept or refused, none lost


@FUZZ
@given(request=requests(), data=hs.data())
def test_json_form_of_any_request_gives_the_same_rows_as_protobuf(request, data):
    # Both decoded at one moment: a heartbeat ahead of the clock is cut to a minute past receipt.
    with mock.patch.object(decode, "time", SimpleNamespace(time_ns=time.time_ns().__int__)):
        from_protobuf = check_decoding(request.SerializeToString(), "protobuf",
                                       measure_memory=False)
        from_json = check_decoding(dump(to_json(request, data.draw)), "json",
                                   measure_memory=False)
    assert from_json is not None
    same_rows(from_protobuf, from_json)


@FUZZ
@given(data=hs.data())
def test_mutated_protobuf_bytes_decode_or_are_refused_with_bad_request(data):
    body = data.draw(requests()).SerializeToString()
    check_decoding(data.draw(mutated(body)), "protobuf")


@FUZZ
@given(body=hs.binary(max_size=300))
def test_random_bytes_as_protobuf_or_json(body):
    check_decoding(body, "protobuf")
    check_decoding(body, "json")


@FUZZ
@given(document=near_otlp_json())
def test_json_documents_near_otlp_decode_or_are_refused_with_bad_request(document):
    check_decoding(dump(document), "json")


@FUZZ
@given(document=json_values)
def test_any_json_document_decodes_or_is_refused_with_bad_request(document):
    check_decoding(dump(document), "json")


@FUZZ
@given(data=hs.data())
def test_mutated_json_text_decodes_or_is_refused_with_bad_request(data):
    body = dump(to_json(data.draw(requests()), data.draw))
    check_decoding(data.draw(mutated(body)), "json")


def test_values_nested_thousands_deep_are_refused_not_a_crash():
    # Built as text: orjson itself will not write a document nested deeper than 255 levels.
    text = ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + "01" * 16
            + '","spanId":"' + "02" * 8 + '","startTimeUnixNano":"1","endTimeUnixNano":"2",'
            '"attributes":[{"key":"k","value":' + '{"arrayValue":{"values":[' * 3000
            + '{"stringValue":"x"}' + "]}}" * 3000 + "}]}]}]}]}")
    assert check_decoding(text.encode(), "json") is None
    nested = b""  # protobuf: a length-delimited field 1 nested 10,000 deep
    for _ in range(10_000):
        nested = b"\x0a" + _varint(len(nested)) + nested
    assert check_decoding(nested, "protobuf") is None


def test_a_body_of_many_tiny_spans_stays_within_the_memory_bound():
    # trace id, span id, start and end time (fixed64): a valid span in 52 bytes
    span = bytes.fromhex("0a10" + "01" * 16 + "1208" + "02" * 8
                         + "3900e1f505000000004100e1f50500000000")
    scope = b"".join(b"\x12" + _varint(len(span)) + span for _ in range(20_000))
    resource = b"\x12" + _varint(len(scope)) + scope
    body = b"\x0a" + _varint(len(resource)) + resource
    batch = check_decoding(body, "protobuf")
    assert batch is not None and len(batch.spans) == 20_000


def test_limits_below_a_marker_still_give_storable_rows():
    tiny = Limits(max_value_bytes=1)
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "01" * 16, "spanId": "02" * 8, "name": "é\x00" * 50,
        "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]})
    [row] = check_decoding(body, "json", tiny).spans
    assert row.truncated and row.name.startswith("…[truncated by tasktree")
    assert decode_json(body, tiny).spans == decode_protobuf(
        _json_to_protobuf(body), tiny).spans


def _json_to_protobuf(body: bytes) -> bytes:
    """OTLP/JSON as protobuf, through protobuf's own JSON parser (which wants base64 ids)."""
    document = orjson.loads(body)
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                s["traceId"] = _b64(s["traceId"])
                s["spanId"] = _b64(s["spanId"])
    return json_format.ParseDict(document, ExportTraceServiceRequest()).SerializeToString()


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

