"""OTLP/HTTP receiver: what each kind of request gets back, and what reaches ``ingest``.

Most cases go through Flask's test client; the ones that matter on the wire (the real OTel SDK
exporter, Retry-After honoured by it, a chunked body over the limit) go through a real socket.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
import tracemalloc
import zlib

import pytest
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from werkzeug.serving import make_server

from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.receiver.otlp_http import create_otlp_http_app
from tasktree.exporter.settings import Settings
from tasktree.exporter.tree.status import ERROR, OK

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
LIMIT = 1 << 20  # max_body_bytes for these tests
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
T0 = 1_700_000_000_000_000_000


class RecordingIngest:
    """An ``ingest`` that keeps the batches, or raises the queued errors first."""

    def __init__(self):
        self.batches = []
        self.errors = []
        self.cap_rejects = 0  # reject this many spans per batch, as a per-run cap would

    def __call__(self, batch):
        if self.errors:
            raise self.errors.pop(0)
        if self.cap_rejects:
            del batch.spans[: self.cap_rejects]
            batch.reject(self.cap_rejects, "run 4bf9… is over its cap of 2000000 spans")
        self.batches.append(batch)

    @property
    def spans(self):
        return [span for batch in self.batches for span in batch.spans]


@pytest.fixture
def ingest():
    return RecordingIngest()


def make_settings(**overrides) -> Settings:
    return Settings(**{"max_body_bytes": LIMIT, "max_value_bytes": 4096, **overrides})


@pytest.fixture
def client(ingest):
    return create_otlp_http_app(ingest, make_settings()).test_client()


# ---------------------------------------------------------------------------------- bodies


def span(n: int, **fields) -> trace_pb2.Span:
    values = {
        "trace_id": TRACE,
        "span_id": n.to_bytes(8, "big"),
        "name": f"task-{n}",
        "start_time_unix_nano": T0,
        "end_time_unix_nano": T0 + 10,
    }
    values.update(fields)
    return trace_pb2.Span(**values)


def request_pb(*spans) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "nightly"
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


def request_json(*spans) -> dict:
    """The same request in OTLP/JSON (hex ids, decimal-string times)."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "nightly"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": s.trace_id.hex(),
                                "spanId": s.span_id.hex(),
                                "name": s.name,
                                "startTimeUnixNano": str(s.start_time_unix_nano),
                                "endTimeUnixNano": str(s.end_time_unix_nano),
                                "status": {"code": s.status.code},
                            }
                            for s in spans
                        ]
                    }
                ],
            }
        ]
    }


def body_for(content_type: str, *spans) -> bytes:
    if content_type == JSON:
        return json.dumps(request_json(*spans)).encode()
    return request_pb(*spans).SerializeToString()


def post(client, body: bytes, content_type: str = PROTOBUF, **headers):
    return client.post("/v1/traces", data=body, headers={"Content-Type": content_type, **headers})


def parse_success(response, content_type: str) -> tuple[int, str]:
    """(rejected_spans, error_message) from a 200 answer in ``content_type``."""
    assert response.status_code == 200, response.data
    assert response.mimetype == content_type
    if content_type == JSON:
        partial = response.get_json().get("partialSuccess", {})
        return int(partial.get("rejectedSpans", 0)), partial.get("errorMessage", "")
    message = ExportTraceServiceResponse.FromString(response.data)
    if not message.HasField("partial_success"):
        return 0, ""
    return message.partial_success.rejected_spans, message.partial_success.error_message


def parse_error(response, content_type: str) -> tuple[int, str]:
    """(google.rpc code, message) from an error answer, which must be in ``content_type``."""
    assert response.mimetype == content_type
    if content_type == JSON:
        body = response.get_json()
        return body["code"], body["message"]
    status = status_pb2.Status.FromString(response.data)
    return status.code, status.message


def gzip_bomb() -> bytes:
    """A valid gzip body that inflates to 1 GiB of zeros (1 MB on the wire).

    Made of one compressed 16 MiB block sequence repeated: after a full flush the deflate
    blocks do not refer back, so repeating them is valid, and building it takes ~0.3 s
    instead of ~3 s of compressing 1 GiB.
    """
    chunk = bytes(16 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(64):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return (
        header + segment * 64 + compressor.flush() + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)
    )


# ------------------------------------------------------------------------------- successes


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_spans_are_ingested_and_full_success_leaves_partial_success_unset(
    client, ingest, content_type
):
    response = post(
        client,
        body_for(content_type, span(1), span(2, status=trace_pb2.Status(code=2))),
        content_type,
    )

    assert parse_success(response, content_type) == (0, "")
    assert [(s.name, s.status) for s in ingest.spans] == [("task-1", OK), ("task-2", ERROR)]
    assert ingest.spans[0].resource.job == "nightly"
    if content_type == JSON:
        assert response.get_json() == {}


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_compressed_bodies_are_inflated(client, ingest, content_type, encoding):
    body = body_for(content_type, span(1))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)

    response = post(client, body, content_type, **{"Content-Encoding": encoding})

    assert parse_success(response, content_type) == (0, "")
    assert [s.name for s in ingest.spans] == ["task-1"]


def test_concatenated_gzip_members_are_one_body(client, ingest):
    body = request_pb(span(1)).SerializeToString()
    half = len(body) // 2
    response = post(
        client,
        gzip.compress(body[:half]) + gzip.compress(body[half:]),
        **{"Content-Encoding": "gzip"},
    )
    assert parse_success(response, PROTOBUF) == (0, "")
    assert [s.name for s in ingest.spans] == ["task-1"]


def test_content_type_parameters_are_allowed_and_the_answer_has_the_bare_type(client, ingest):
    response = post(client, body_for(JSON, span(1)), "application/json; charset=utf-8")
    assert parse_success(response, JSON) == (0, "")
    assert response.headers["Content-Type"] == JSON
    assert len(ingest.spans) == 1


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_empty_request_succeeds_without_touching_the_store(client, ingest, content_type):
    for body in (
        b"",
        b"{}" if content_type == JSON else ExportTraceServiceRequest().SerializeToString(),
    ):
        assert parse_success(post(client, body, content_type), content_type) == (0, "")
    assert ingest.batches == []


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_a_bad_span_is_refused_alone_with_partial_success(client, ingest, content_type):
    bad = span(2, start_time_unix_nano=0)
    response = post(client, body_for(content_type, span(1), bad, span(3)), content_type)

    rejected, message = parse_success(response, content_type)
    assert rejected == 1
    assert "span 0000000000000002" in message and "start_time_unix_nano is missing" in message
    assert [s.name for s in ingest.spans] == ["task-1", "task-3"]


def test_spans_refused_by_ingest_are_reported_too(client, ingest):
    ingest.cap_rejects = 1
    rejected, message = parse_success(post(client, body_for(PROTOBUF, span(1), span(2))), PROTOBUF)
    assert rejected == 1
    assert "over its cap" in message
    assert [s.name for s in ingest.spans] == ["task-2"]


# ------------------------------------------------------------------------------- refusals

BAD_GZIP = gzip.compress(bytes(range(256)) * 40)[:-30]


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
@pytest.mark.parametrize(
    "body, headers, status, code, fragment",
    [
        (b"\xff\xff\xff", {}, 400, 3, "body is not"),
        (gzip.compress(b"\xff\xff\xff"), {"Content-Encoding": "gzip"}, 400, 3, "body is not"),
        (BAD_GZIP, {"Content-Encoding": "gzip"}, 400, 3, "gzip body is truncated"),
        (b"definitely not gzip", {"Content-Encoding": "gzip"}, 400, 3, "not valid gzip data"),
        (
            gzip.compress(b"{}") + b"trailing",
            {"Content-Encoding": "gzip"},
            400,
            3,
            "not valid gzip data",
        ),
        (b"x" * (LIMIT + 1), {}, 413, 8, f"over the limit of {LIMIT} bytes"),
        (
            gzip.compress(b"\x00" * (LIMIT + 1)),
            {"Content-Encoding": "gzip"},
            413,
            8,
            "decompresses to more than",
        ),
        (b"{}", {"Content-Encoding": "br"}, 415, 3, "Content-Encoding 'br' is not supported"),
    ],
    ids=[
        "malformed",
        "malformed-in-gzip",
        "truncated-gzip",
        "not-gzip",
        "gzip-garbage",
        "too-big",
        "too-big-inflated",
        "unknown-encoding",
    ],
)
def test_refusals_answer_a_status_in_the_request_content_type(
    client, ingest, content_type, body, headers, status, code, fragment
):
    response = post(client, body, content_type, **headers)

    assert response.status_code == status
    got_code, message = parse_error(response, content_type)
    assert got_code == code
    assert fragment in message
    assert "Retry-After" not in response.headers  # none of these may be retried
    assert ingest.batches == []


def test_malformed_json_says_where(client):
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}).encode()
    response = post(client, body, JSON)
    assert response.status_code == 400
    assert parse_error(response, JSON) == (
        3,
        "malformed OTLP/JSON at resourceSpans[0].scopeSpans[0].spans[0].name: "
        "expected a string, got number",
    )


def test_malformed_protobuf_status_carries_bad_request_details(client):
    response = post(client, b"\xff\xff\xff")
    status = status_pb2.Status.FromString(response.data)
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert "not a valid OTLP ExportTraceServiceRequest" in detail.field_violations[0].description


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_unsupported_content_types_are_415(client, ingest, content_type):
    response = client.post(
        "/v1/traces", data=b"{}", headers={"Content-Type": content_type} if content_type else {}
    )
    assert response.status_code == 415
    code, message = parse_error(response, JSON)
    assert code == 3
    assert "application/x-protobuf or application/json" in message
    assert ingest.batches == []


def test_a_gzip_bomb_is_refused_without_inflating_it(client, ingest):
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        response = post(client, bomb, **{"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert "decompresses to more than 1048576 bytes" in parse_error(response, PROTOBUF)[1]
    assert peak < len(bomb) * 4 + LIMIT * 3  # a few copies of the input and one limit, not 1 GiB
    assert ingest.batches == []


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
@pytest.mark.parametrize(
    "error, status, code, retry_after",
    [
        (Overloaded("backlog of 2000000 spans is full", retry_after=2.5), 429, 8, "3"),
        (Overloaded("backlog is full"), 429, 8, "1"),
        (StoreUnavailable("PostgreSQL is down"), 503, 14, "5"),
        (StoreUnavailable("no connection", retry_after=0), 503, 14, "1"),  # whole seconds, ≥ 1
    ],
    ids=["overloaded", "overloaded-default-delay", "store-down", "no-delay-still-a-second"],
)
def test_overload_and_outage_ask_to_retry_after(
    client, ingest, content_type, error, status, code, retry_after
):
    ingest.errors.append(error)

    response = post(client, body_for(content_type, span(1)), content_type)

    assert response.status_code == status
    assert response.headers["Retry-After"] == retry_after
    assert parse_error(response, content_type) == (code, error.message)
    if content_type == PROTOBUF:
        info = error_details_pb2.RetryInfo()
        assert status_pb2.Status.FromString(response.data).details[0].Unpack(info)
        assert info.retry_delay.ToNanoseconds() == int(
            (error.retry_after if error.retry_after is not None else 1) * 1e9
        )


def test_an_unexpected_ingest_failure_is_a_500_and_logged(client, ingest, caplog):
    ingest.errors.append(RuntimeError("bug"))
    response = post(client, body_for(PROTOBUF, span(1)))
    assert response.status_code == 500
    assert parse_error(response, PROTOBUF) == (
        13,
        "internal error while storing spans; see the tasktree server log",
    )
    assert "OTLP/HTTP export failed unexpectedly" in caplog.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(client, method):
    response = client.open("/v1/traces", method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert parse_error(response, JSON)[0] == 12


def test_other_paths_are_404(client):
    response = client.post("/v1/metrics", data=b"", headers={"Content-Type": PROTOBUF})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "authorization, status",
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic c2VjcmV0", 401),
        ("Bearer s3cret-token", 200),
        ("bearer s3cret-token", 200),
    ],
)
def test_a_configured_token_is_required(ingest, authorization, status):
    client = create_otlp_http_app(ingest, make_settings(auth_token="s3cret-token")).test_client()
    headers = {"Authorization": authorization} if authorization else {}
    response = post(client, body_for(PROTOBUF, span(1)), **headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert parse_error(response, PROTOBUF)[0] == 16
        assert ingest.batches == []
    else:
        assert len(ingest.spans) == 1


# --------------------------------------------------------------------------- real sockets


@pytest.fixture
def serve():
    """Serve a WSGI app on 127.0.0.1:<free port> in a thread; yields a function giving its URL."""
    started = []

    def start(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


def sdk_spans():
    """Spans made by the real OTel SDK: a root, a failed child and an ok child."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "sdk-job"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("child-fails") as failing:
            failing.set_status(Status(StatusCode.ERROR, "went wrong"))
            failing.set_attribute("rows", 17)
        with tracer.start_as_current_span("child-ok"):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_otel_sdk_exporter_delivers_spans_over_http(serve, ingest, compression):
    url = serve(create_otlp_http_app(ingest, make_settings()))
    spans = sdk_spans()
    exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", compression=compression, timeout=10)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    rows = {row.name: row for row in ingest.spans}
    assert set(rows) == {"root", "child-fails", "child-ok"}
    root = rows["root"]
    assert root.parent_span_id is None
    assert rows["child-fails"].parent_span_id == root.span_id == rows["child-ok"].parent_span_id
    assert (rows["child-fails"].status, rows["child-fails"].status_message) == (ERROR, "went wrong")
    assert json.loads(rows["child-fails"].attributes_json) == {"rows": 17}
    assert rows["child-ok"].status == OK
    assert root.resource.job == "sdk-job"
    assert root.scope == "tests"


def test_the_otel_sdk_exporter_retries_after_429_and_then_succeeds(serve, ingest):
    ingest.errors.append(
        Overloaded("busy", retry_after=0)
    )  # Retry-After: 0, so no wait in the test
    url = serve(create_otlp_http_app(ingest, make_settings()))
    exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", timeout=10)
    try:
        assert exporter.export(sdk_spans()) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert ingest.errors == []  # the first attempt was refused ...
    assert len(ingest.batches) == 1  # ... and the retry stored the spans


def test_an_error_on_the_wire_keeps_the_request_content_type(serve, ingest):
    url = serve(create_otlp_http_app(ingest, make_settings()))
    response = requests.post(
        url + "/v1/traces", data=b"\xff\xff", headers={"Content-Type": PROTOBUF}, timeout=10
    )
    assert response.status_code == 400
    assert response.headers["Content-Type"] == PROTOBUF


def test_a_chunked_body_over_the_limit_is_refused_on_the_wire(serve, ingest):
    url = serve(create_otlp_http_app(ingest, make_settings()))

    def chunks():
        for _ in range(LIMIT // 65536 + 2):
            yield b"\x00" * 65536

    response = requests.post(
        url + "/v1/traces", data=chunks(), headers={"Content-Type": PROTOBUF}, timeout=10
    )
    assert response.status_code == 413
    assert "more than 1048576 bytes" in status_pb2.Status.FromString(response.content).message
    assert ingest.batches == []


def test_a_chunked_body_within_the_limit_is_read_whole(serve, ingest):
    url = serve(create_otlp_http_app(ingest, make_settings()))
    body = request_pb(
        *(span(n, name="x" * 1000) for n in range(1, 201))
    ).SerializeToString()  # ~220 KB

    def chunks():
        for start in range(0, len(body), 7000):
            yield body[start : start + 7000]

    response = requests.post(
        url + "/v1/traces", data=chunks(), headers={"Content-Type": PROTOBUF}, timeout=10
    )
    assert response.status_code == 200
    assert len(ingest.spans) == 200
