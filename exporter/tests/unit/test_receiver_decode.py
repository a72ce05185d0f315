"""The OTLP decoder: protobuf and JSON give the same rows, bad spans are rejected alone, and
every value comes out storable in PostgreSQL (no NUL, no NaN) and within the size limit."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
import math
import time

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tasktree.exporter.errors import BadRequest
from tasktree.exporter.receiver.decode import (
    FUTURE_HEARTBEAT_NS,
    Limits,
    decode_json,
    decode_protobuf,
)
from tasktree.exporter.receiver.records import DecodedBatch
from tasktree.exporter.tree.status import ERROR, OK, RUNNING

LIMITS = Limits(max_value_bytes=64 * 1024)
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
T0 = 1_700_000_000_000_000_000


# ---------------------------------------------------------------------------------- builders


def any_value(value) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value])
        )
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=key_values(value)))
    if value is None:
        return common_pb2.AnyValue()
    return common_pb2.AnyValue(string_value=value)


def key_values(attributes: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def make_span(n: int = 1, *, attributes: dict | None = None, **fields) -> trace_pb2.Span:
    """A valid ended span; ``fields`` override any Span field."""
    values = {
        "trace_id": TRACE,
        "span_id": span_id(n),
        "parent_span_id": span_id(1000 + n),
        "name": f"task-{n}",
        "kind": trace_pb2.Span.SPAN_KIND_INTERNAL,
        "start_time_unix_nano": T0 + n,
        "end_time_unix_nano": T0 + n + 1_000,
    }
    values.update(fields)
    span = trace_pb2.Span(**values)
    span.attributes.extend(key_values(attributes or {}))
    return span


def make_request(
    *spans, resource: dict | None = None, scope: str = "tests"
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values(resource or {"service.name": "nightly"}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = scope
    scope_spans.spans.extend(spans)
    return request


def to_otlp_json(request, *, enums_as_ints: bool = False, ints_as_numbers: bool = False) -> dict:
    """OTLP/JSON built independently of the decoder: proto3 JSON, then ids turned into hex."""
    document = json_format.MessageToDict(request, use_integers_for_enums=enums_as_ints)

    def fix(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                elif ints_as_numbers and key in (
                    "startTimeUnixNano",
                    "endTimeUnixNano",
                    "timeUnixNano",
                    "intValue",
                ):
                    node[key] = int(value)
                else:
                    fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(document)
    return document


def decode_both(request, limits: Limits = LIMITS) -> tuple[DecodedBatch, DecodedBatch]:
    return (
        decode_protobuf(request.SerializeToString(), limits),
        decode_json(json.dumps(to_otlp_json(request)).encode(), limits),
    )


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity literals, as PostgreSQL jsonb does."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


RICH_ATTRIBUTES = {
    "s": "text",
    "empty": "",
    "i": -42,
    "big": 2**62,
    "b": True,
    "f": 1.5,
    "whole": 2.0,
    "arr": ["a", 1, [True]],
    "kv": {"inner": "x", "deeper": {"n": 3}},
    "raw": b"\x00\xffbytes",
    "unset": None,
    "unicode": "日本 ✓",
}


def rich_request() -> ExportTraceServiceRequest:
    ended = make_span(
        1, attributes=RICH_ATTRIBUTES, status=trace_pb2.Status(code=2, message="boom")
    )
    ended.events.add(
        time_unix_nano=T0 + 5,
        name="exception",
        dropped_attributes_count=2,
    ).attributes.extend(
        key_values({"exception.stacktrace": "Traceback (most recent call last):\n" * 50})
    )
    ended.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8))).attributes.extend(
        key_values({"l": 1})
    )
    running = make_span(2, attributes={"tasktree.state": "running"}, end_time_unix_nano=T0 + 99)
    root = make_span(
        3, parent_span_id=b"", kind=trace_pb2.Span.SPAN_KIND_SERVER, dropped_attributes_count=4
    )
    request = make_request(ended, running, root)
    other = request.resource_spans.add()
    other.resource.attributes.extend(key_values({"service.name": "other", "host.name": "h"}))
    other.scope_spans.add(scope=common_pb2.InstrumentationScope(name="s2")).spans.append(
        make_span(4)
    )
    return request


# ------------------------------------------------------------------------ protobuf == JSON


@pytest.mark.parametrize("enums_as_ints", [False, True], ids=["enum-names", "enum-ints"])
@pytest.mark.parametrize("ints_as_numbers", [False, True], ids=["int64-strings", "int64-numbers"])
def test_protobuf_and_json_of_the_same_spans_give_identical_rows(enums_as_ints, ints_as_numbers):
    request = rich_request()
    document = to_otlp_json(request, enums_as_ints=enums_as_ints, ints_as_numbers=ints_as_numbers)

    from_protobuf = decode_protobuf(request.SerializeToString(), LIMITS)
    from_json = decode_json(json.dumps(document).encode(), LIMITS)

    assert from_protobuf.rejected == from_json.rejected == 0
    assert len(from_protobuf.spans) == 4
    assert from_json.spans == from_protobuf.spans


def test_rows_carry_every_field_of_the_span():
    ended, _running, root, other = decode_protobuf(rich_request().SerializeToString(), LIMITS).spans

    assert (ended.trace_id, ended.span_id, ended.parent_span_id) == (
        TRACE,
        span_id(1),
        span_id(1001),
    )
    assert (ended.name, ended.kind, ended.scope) == ("task-1", 1, "tests")
    assert (ended.start_ns, ended.end_ns, ended.heartbeat_ns) == (T0 + 1, T0 + 1001, None)
    assert (ended.status, ended.status_message, ended.truncated) == (ERROR, "boom", False)
    assert strict_json(ended.attributes_json) == {
        "s": "text",
        "empty": "",
        "i": -42,
        "big": 2**62,
        "b": True,
        "f": 1.5,
        "whole": 2.0,
        "arr": ["a", 1, [True]],
        "kv": {"inner": "x", "deeper": {"n": 3}},
        "raw": base64.b64encode(b"\x00\xffbytes").decode(),
        "unset": None,
        "unicode": "日本 ✓",
    }
    assert strict_json(ended.events_json) == [
        {
            "time_ns": T0 + 5,
            "name": "exception",
            "attributes": {
                "exception.stacktrace": "Traceback (most recent call last):\n" * 50,
                "tasktree.dropped_attributes": 2,
            },
        }
    ]
    assert strict_json(ended.links_json) == [
        {
            "trace_id": bytes(range(16)).hex(),
            "span_id": bytes(range(8)).hex(),
            "attributes": {"l": 1},
        }
    ]
    assert (root.parent_span_id, root.kind) == (None, 2)
    assert strict_json(root.attributes_json) == {"tasktree.dropped_attributes": 4}
    assert (root.events_json, root.links_json) == ("[]", "[]")
    assert other.scope == "s2"


def test_resource_is_canonical_json_with_its_digest_and_job_and_shared_by_its_spans():
    batch = decode_protobuf(rich_request().SerializeToString(), LIMITS)
    first, second, third, other = batch.spans

    assert first.resource is second.resource is third.resource
    assert first.resource.attributes_json == '{"service.name":"nightly"}'
    assert first.resource.digest == hashlib.sha256(b'{"service.name":"nightly"}').digest()
    assert first.resource.job == "nightly"
    assert other.resource.attributes_json == '{"host.name":"h","service.name":"other"}'
    assert other.resource.job == "other"


@pytest.mark.parametrize("resource", [{"service.name": 7}, {"service.name": " "}, {"k": "v"}])
def test_resource_without_a_service_name_is_the_job_unknown_service(resource):
    """What OpenTelemetry's SDKs call it; an empty job_name label would be no label at all."""
    for batch in decode_both(make_request(make_span(), resource=resource)):
        assert batch.spans[0].resource.job == "unknown_service"


def test_hex_ids_in_json_are_case_insensitive():
    request = make_request(make_span(0xAB, parent_span_id=bytes.fromhex("00f067aa0ba902b7")))
    lower = to_otlp_json(request)
    upper = copy.deepcopy(lower)
    span = upper["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        span[key] = span[key].upper()

    assert (
        decode_json(json.dumps(upper).encode(), LIMITS).spans
        == decode_json(json.dumps(lower).encode(), LIMITS).spans
    )
    assert decode_json(json.dumps(upper).encode(), LIMITS).spans[0].parent_span_id == bytes.fromhex(
        "00f067aa0ba902b7"
    )


def test_unknown_json_fields_are_ignored_at_every_level():
    request = make_request(make_span(attributes={"a": "b"}))
    plain = to_otlp_json(request)
    noisy = copy.deepcopy(plain)
    noisy["future"] = {"x": 1}
    noisy["resourceSpans"][0]["schemaUrl2"] = [1, 2]
    noisy["resourceSpans"][0]["scopeSpans"][0]["newThing"] = None
    span = noisy["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["flags2"] = "whatever"
    span["attributes"][0]["value"]["futureValue"] = 3

    assert (
        decode_json(json.dumps(noisy).encode(), LIMITS).spans
        == decode_json(json.dumps(plain).encode(), LIMITS).spans
    )


def test_unknown_protobuf_fields_are_ignored():
    body = make_request(make_span()).SerializeToString()
    unknown_field = bytes([(15 << 3) | 2, 3]) + b"abc"  # field 15, length-delimited
    assert (
        decode_protobuf(body + unknown_field, LIMITS).spans == decode_protobuf(body, LIMITS).spans
    )


def test_json_enum_names_and_numbers_mean_the_same():
    document = to_otlp_json(make_request(make_span(status=trace_pb2.Status(code=2))))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert (span["kind"], span["status"]["code"]) == ("SPAN_KIND_INTERNAL", "STATUS_CODE_ERROR")
    by_name = decode_json(json.dumps(document).encode(), LIMITS).spans[0]
    span["kind"], span["status"]["code"] = 1, 2
    by_number = decode_json(json.dumps(document).encode(), LIMITS).spans[0]
    assert (by_name.kind, by_name.status) == (by_number.kind, by_number.status) == (1, ERROR)


def test_empty_request_decodes_to_an_empty_batch():
    for batch in (decode_protobuf(b"", LIMITS), decode_json(b"{}", LIMITS)):
        assert (batch.spans, batch.rejected, batch.messages) == ([], 0, [])


# ---------------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    "code, expected",
    [(0, OK), (1, OK), (2, ERROR)],
    ids=["unset-is-ok", "ok-is-ok", "error-is-error"],
)
def test_an_ended_span_is_ok_unless_its_status_is_error(code, expected):
    for batch in decode_both(make_request(make_span(status=trace_pb2.Status(code=code)))):
        assert batch.spans[0].status == expected


def test_running_snapshot_has_no_end_and_heartbeats_at_its_end_time():
    snapshot = make_span(attributes={"tasktree.state": "running"}, end_time_unix_nano=T0 + 500)
    for batch in decode_both(make_request(snapshot)):
        (row,) = batch.spans
        assert (row.status, row.end_ns, row.heartbeat_ns) == (RUNNING, None, T0 + 500)


def test_a_heartbeat_from_a_clock_far_ahead_counts_as_at_most_a_minute_ahead():
    """A job whose clock is an hour ahead: once killed, its task must still turn stalled."""
    hour = 3600 * 10**9
    for ahead, kept in ((hour, False), (10 * 10**9, True)):
        stamped = time.time_ns() + ahead
        snapshot = make_span(attributes={"tasktree.state": "running"}, end_time_unix_nano=stamped)
        for batch in decode_both(make_request(snapshot)):
            (row,) = batch.spans
            if kept:  # a few seconds of skew: the heartbeat is the job's own, order kept
                assert row.heartbeat_ns == stamped
            else:
                assert row.heartbeat_ns <= time.time_ns() + FUTURE_HEARTBEAT_NS
                assert row.heartbeat_ns >= time.time_ns() + FUTURE_HEARTBEAT_NS - 10 * 10**9


def test_running_snapshot_without_end_time_heartbeats_at_its_start():
    snapshot = make_span(attributes={"tasktree.state": "running"}, end_time_unix_nano=0)
    for batch in decode_both(make_request(snapshot)):
        (row,) = batch.spans
        assert (row.status, row.end_ns, row.heartbeat_ns) == (
            RUNNING,
            None,
            snapshot.start_time_unix_nano,
        )


def test_other_tasktree_state_values_are_not_snapshots():
    for batch in decode_both(make_request(make_span(attributes={"tasktree.state": "done"}))):
        assert batch.spans[0].status == OK


# ------------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"trace_id": TRACE[:15]}, "trace_id must be 16 bytes, got 15"),
        ({"trace_id": b""}, "trace_id must be 16 bytes, got 0"),
        ({"trace_id": bytes(16)}, "trace_id is all zeros"),
        ({"span_id": span_id(7)[:7]}, "span_id must be 8 bytes, got 7"),
        ({"span_id": bytes(8)}, "span_id is all zeros"),
        ({"parent_span_id": b"\x01" * 5}, "parent_span_id must be empty or 8 bytes, got 5"),
        ({"start_time_unix_nano": 0}, "start_time_unix_nano is missing"),
        ({"end_time_unix_nano": 0}, "end_time_unix_nano is missing (0) on an ended span"),
        (
            {"end_time_unix_nano": T0},
            f"end_time_unix_nano {T0} is before start_time_unix_nano {T0 + 7}",
        ),
        ({"start_time_unix_nano": 2**63, "end_time_unix_nano": 2**63 + 1}, "beyond year 2262"),
        ({"kind": 40_000}, "kind 40000 is not a span kind"),
    ],
    ids=[
        "short-trace-id",
        "missing-trace-id",
        "zero-trace-id",
        "short-span-id",
        "zero-span-id",
        "bad-parent-length",
        "missing-start",
        "missing-end",
        "end-before-start",
        "time-beyond-bigint",
        "kind-beyond-smallint",
    ],
)
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_a_bad_span_is_rejected_alone_with_its_reason(fields, reason, encoding):
    bad = make_span(7, **fields)
    request = make_request(make_span(6), bad, make_span(8))
    protobuf, json_ = decode_both(request)
    batch = protobuf if encoding == "protobuf" else json_

    assert batch.rejected == 1
    assert [span.span_id for span in batch.spans] == [span_id(6), span_id(8)]
    (message,) = batch.messages
    assert reason in message
    assert f"span {bad.span_id.hex() or '(empty)'}" in message  # names the span


def test_all_zero_or_empty_parent_means_root():
    request = make_request(make_span(1, parent_span_id=bytes(8)), make_span(2, parent_span_id=b""))
    for batch in decode_both(request):
        assert batch.rejected == 0
        assert [span.parent_span_id for span in batch.spans] == [None, None]


def test_non_hex_json_id_rejects_that_span_only():
    document = to_otlp_json(make_request(make_span(1), make_span(2)))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "zz" * 8
    batch = decode_json(json.dumps(document).encode(), LIMITS)
    assert batch.rejected == 1
    assert "spanId 'zzzzzzzzzzzzzzzz' is not hexadecimal" in batch.messages[0]
    assert [span.span_id for span in batch.spans] == [span_id(2)]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("startTimeUnixNano", "-5", "startTimeUnixNano -5 is before 1970 (negative)"),
        ("endTimeUnixNano", -1, "endTimeUnixNano -1 is before 1970 (negative)"),
        ("startTimeUnixNano", str(253_402_300_799 * 10**9), "is beyond year 2262"),  # year 9999
        ("endTimeUnixNano", "1" + "0" * 30, "endTimeUnixNano 100000000000000000000000000000…"
         " is beyond year 2262"),  # too long for int() to be asked: not read, and cut short
        ("startTimeUnixNano", "9" * 5000, "is beyond year 2262"),
        ("endTimeUnixNano", "-" + "9" * 40, "is before 1970 (negative)"),
        ("startTimeUnixNano", 1e30, "is beyond year 2262"),
    ],
)
def test_json_times_no_protobuf_could_carry_reject_that_span_only(field, value, reason):
    # Out of fixed64's range but valid numbers: a bad span, not a malformed body (rule 4).
    document = to_otlp_json(make_request(make_span(1), make_span(2)))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0][field] = value
    batch = decode_json(json.dumps(document).encode(), LIMITS)
    assert batch.rejected == 1 and reason in batch.messages[0]
    assert [span.span_id for span in batch.spans] == [span_id(2)]


def test_many_rejections_are_counted_and_their_messages_capped():
    spans = [make_span(n, start_time_unix_nano=0) for n in range(1, 31)] + [make_span(99)]
    batch = decode_protobuf(make_request(*spans).SerializeToString(), LIMITS)
    assert (batch.rejected, len(batch.messages), len(batch.spans)) == (30, 10, 1)


# ---------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"\xff\xff\xff\xff", "not a valid OTLP ExportTraceServiceRequest protobuf"),
        (
            make_request(make_span()).SerializeToString()[:-3],
            "not a valid OTLP ExportTraceServiceRequest protobuf",
        ),
        (
            gzip.compress(make_request(make_span()).SerializeToString()),
            "gzip-compressed: send it with the header Content-Encoding: gzip",
        ),
    ],
    ids=["garbage", "cut-short", "gzip-without-its-header"],
)
def test_undecodable_protobuf_is_a_bad_request(body, fragment):
    with pytest.raises(BadRequest, match=fragment):
        decode_protobuf(body, LIMITS)


def _json_with_span(**span_fields) -> bytes:
    document = to_otlp_json(make_request(make_span()))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(span_fields)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "body is not valid JSON"),
        (gzip.compress(b'{"resourceSpans": []}'), "send it with the header Content-Encoding: gzip"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b'{"a": "\\ud800",}', "body is not valid JSON"),  # a lone surrogate and a fault
        (b"[1, 2]", "must be a JSON object (an OTLP ExportTraceServiceRequest), got array"),
        (b'"text"', "got string"),
        (b'{"resourceSpans": {}}', "resourceSpans: expected an array, got object"),
        (b'{"resourceSpans": [1]}', "resourceSpans[0]: expected an object, got number"),
        (
            _json_with_span(name=5),
            "resourceSpans[0].scopeSpans[0].spans[0].name: expected a string, got number",
        ),
        (
            _json_with_span(startTimeUnixNano="soon"),
            "spans[0].startTimeUnixNano: expected an integer",
        ),
        (
            _json_with_span(startTimeUnixNano=True),
            "spans[0].startTimeUnixNano: expected an integer",
        ),
        (
            _json_with_span(attributes={}),
            "spans[0].attributes: expected an array of key-values, got object",
        ),
        (
            _json_with_span(attributes=[{"key": "k", "value": {"intValue": True}}]),
            "'k': intValue: expected an integer",
        ),
        (
            _json_with_span(attributes=[{"key": "k", "value": {"stringValue": 1}}]),
            "stringValue must be a string",
        ),
        (
            _json_with_span(attributes=[{"key": "k", "value": {"bytesValue": "!!"}}]),
            "not valid base64",
        ),
        (_json_with_span(traceId=12), "spans[0].traceId: expected a hex string, got number"),
        (_json_with_span(events=[1]), "spans[0].events[0]: expected an object, got number"),
    ],
)
def test_malformed_json_is_a_bad_request_saying_where(body, fragment):
    with pytest.raises(BadRequest) as raised:
        decode_json(body, LIMITS)
    assert fragment in raised.value.message


# ------------------------------------------------------------------------ storable values


def test_a_json_whole_number_beyond_64_bits_is_kept_as_a_double_not_the_request_refused():
    # The Node SDK's JSON exporter writes any whole number as intValue (2**64, Number.MAX_VALUE);
    # its protobuf exporter sends the same values as doubles.
    body = _json_with_span(
        attributes=[
            {"key": "big", "value": {"intValue": 2**64}},
            {"key": "max", "value": {"intValue": 1.7976931348623157e308}},
            {"key": "text", "value": {"intValue": str(2**63)}},
            {"key": "long", "value": {"intValue": "-" + "9" * 30}},
            {"key": "edge", "value": {"intValue": str(2**63 - 1)}},
        ]
    )
    row = decode_json(body, LIMITS).spans[0]
    assert strict_json(row.attributes_json) == {
        "big": float(2**64),
        "max": 1.7976931348623157e308,
        "text": float(2**63),
        "long": -1e30,
        "edge": 2**63 - 1,  # in range: still the exact integer
    }


def test_a_json_lone_surrogate_escape_becomes_a_replacement_character_not_a_refused_request():
    # What the Node SDK sends for '1234😀…' cut to 5 characters by its length limit; json.dumps
    # writes each lone surrogate as its escape, as the SDK does.
    body = _json_with_span(
        name="cut \ud83d", attributes=[{"key": "k\udc00", "value": {"stringValue": "1234\ud83d"}}]
    )
    assert b"\\ud83d" in body
    row = decode_json(body, LIMITS).spans[0]
    assert row.name == "cut \ufffd"
    assert strict_json(row.attributes_json) == {"k\ufffd": "1234\ufffd"}
    paired = _json_with_span(name="\U0001f600 ok")  # escaped as a whole pair: kept as it is
    assert b"\\ud83d\\ude00" in paired
    assert decode_json(paired, LIMITS).spans[0].name == "\U0001f600 ok"


def test_nul_characters_become_replacement_characters_everywhere():
    span = make_span(
        name="na\x00me",
        attributes={"k\x00ey": "va\x00lue", "arr": ["\x00"]},
        status=trace_pb2.Status(code=2, message="m\x00sg"),
    )
    span.events.add(time_unix_nano=T0, name="e\x00").attributes.extend(key_values({"x": "\x00"}))
    request = make_request(span, resource={"service.name": "jo\x00b"}, scope="sc\x00ope")
    for batch in decode_both(request):
        (row,) = batch.spans
        assert (row.name, row.status_message, row.scope) == (
            "na\ufffdme",
            "m\ufffdsg",
            "sc\ufffdope",
        )
        assert row.resource.job == "jo\ufffdb"
        assert strict_json(row.attributes_json) == {"k\ufffdey": "va\ufffdlue", "arr": ["\ufffd"]}
        assert strict_json(row.events_json)[0]["name"] == "e\ufffd"
        for text in (row.attributes_json, row.events_json, row.resource.attributes_json):
            assert "\\u0000" not in text and "\x00" not in text


def test_non_finite_doubles_become_strings_so_the_json_stays_valid():
    request = make_request(
        make_span(attributes={"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 0.25})
    )
    for batch in decode_both(request):
        assert strict_json(batch.spans[0].attributes_json) == {
            "nan": "NaN",
            "inf": "Infinity",
            "ninf": "-Infinity",
            "ok": 0.25,
        }


def test_json_doubles_may_be_numbers_or_strings():
    body = _json_with_span(
        attributes=[
            {"key": "a", "value": {"doubleValue": 1}},
            {"key": "b", "value": {"doubleValue": "2.5"}},
            {"key": "c", "value": {"doubleValue": "NaN"}},
            {"key": "d", "value": {"doubleValue": "-Infinity"}},
        ]
    )
    row = decode_json(body, LIMITS).spans[0]
    assert strict_json(row.attributes_json) == {"a": 1.0, "b": 2.5, "c": "NaN", "d": "-Infinity"}
    assert '"a":1.0' in row.attributes_json  # a double, as protobuf would give, not the int 1


# ------------------------------------------------------------------------------ truncation

SMALL = Limits(max_value_bytes=16)
MARKER = "…[truncated by tasktree: kept 16 of 100 bytes]"


def test_a_long_attribute_value_is_cut_with_a_visible_marker():
    request = make_request(
        make_span(1, attributes={"long": "x" * 100, "short": "ok"}), make_span(2)
    )
    for batch in decode_both(request, SMALL):
        long_row, short_row = batch.spans
        assert strict_json(long_row.attributes_json) == {"long": "x" * 16 + MARKER, "short": "ok"}
        assert long_row.truncated is True
        assert short_row.truncated is False


def test_truncation_never_splits_a_character():
    request = make_request(make_span(attributes={"k": "é" * 50}))  # 100 bytes; 16 = 8 whole "é"
    for batch in decode_both(request, SMALL):
        assert strict_json(batch.spans[0].attributes_json)["k"] == "é" * 8 + MARKER


@pytest.mark.parametrize(
    "where", ["name", "status message", "event attribute", "event name", "link attribute"]
)
def test_every_kind_of_string_is_limited(where):
    long = "y" * 100
    span = make_span()
    if where == "name":
        span.name = long
    elif where == "status message":
        span.status.message = long
    elif where == "event attribute":
        span.events.add(time_unix_nano=T0).attributes.extend(
            key_values({"exception.stacktrace": long})
        )
    elif where == "event name":
        span.events.add(time_unix_nano=T0, name=long)
    else:
        span.links.add(trace_id=TRACE, span_id=span_id(5)).attributes.extend(
            key_values({"a": long})
        )
    for batch in decode_both(make_request(span), SMALL):
        (row,) = batch.spans
        assert row.truncated is True
        text = " ".join([row.name, row.status_message, row.events_json, row.links_json])
        assert "y" * 16 + MARKER in text
        assert "y" * 17 not in text


def test_a_cut_resource_value_marks_the_spans_of_that_resource():
    request = make_request(make_span(), resource={"service.name": "svc", "cmd": "z" * 100})
    for batch in decode_both(request, SMALL):
        (row,) = batch.spans
        assert row.truncated is True
        assert json.loads(row.resource.attributes_json)["cmd"] == "z" * 16 + MARKER


def test_values_at_the_limit_are_kept_whole():
    request = make_request(make_span(attributes={"k": "x" * 16, "multi": "é" * 8}))
    for batch in decode_both(request, SMALL):
        assert strict_json(batch.spans[0].attributes_json) == {"k": "x" * 16, "multi": "é" * 8}
        assert batch.spans[0].truncated is False


def test_a_long_attribute_key_is_cut_too():
    for batch in decode_both(make_request(make_span(attributes={"k" * 100: 1})), SMALL):
        assert strict_json(batch.spans[0].attributes_json) == {"k" * 16 + MARKER: 1}
        assert batch.spans[0].truncated is True


# ------------------------------------------------------------------------- smaller details


def test_dropped_counts_are_kept_as_attributes_only_when_non_zero():
    span = make_span(dropped_attributes_count=1, dropped_events_count=2, dropped_links_count=3)
    for batch in decode_both(make_request(span, make_span(2))):
        counted, clean = batch.spans
        assert strict_json(counted.attributes_json) == {
            "tasktree.dropped_attributes": 1,
            "tasktree.dropped_events": 2,
            "tasktree.dropped_links": 3,
        }
        assert clean.attributes_json == "{}"


def test_json_bytes_values_may_be_url_safe_or_unpadded_base64():
    raw = b"\xfb\xff\xfe"  # standard base64 "+//+", URL-safe "-__-"
    row = decode_json(
        _json_with_span(attributes=[{"key": "b", "value": {"bytesValue": "-__-"}}]), LIMITS
    ).spans[0]
    assert strict_json(row.attributes_json) == {"b": base64.b64encode(raw).decode()}
    unpadded = decode_json(
        _json_with_span(attributes=[{"key": "b", "value": {"bytesValue": "YQ"}}]), LIMITS
    )
    assert strict_json(unpadded.spans[0].attributes_json) == {"b": "YQ=="}


def test_json_null_fields_read_as_absent():
    body = _json_with_span(parentSpanId=None, attributes=None, events=None, status=None, kind=None)
    (row,) = decode_json(body, LIMITS).spans
    assert (row.parent_span_id, row.attributes_json, row.events_json, row.status, row.kind) == (
        None,
        "{}",
        "[]",
        OK,
        0,
    )


def _nested(depth: int) -> dict:
    value = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    return value


def test_json_values_nested_as_deep_as_protobuf_allows_are_kept():
    body = _json_with_span(attributes=[{"key": "deep", "value": _nested(45)}])
    (row,) = decode_json(body, LIMITS).spans
    depth, value = 0, strict_json(row.attributes_json)["deep"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert (depth, value) == (45, "x")


def test_json_values_nested_deeper_are_a_bad_request():
    body = _json_with_span(attributes=[{"key": "deep", "value": _nested(300)}])
    with pytest.raises(BadRequest, match="'deep': values nested more than 50 levels deep"):
        decode_json(body, LIMITS)
