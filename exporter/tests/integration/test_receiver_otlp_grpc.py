"""OTLP/gRPC receiver: the real OTel SDK exporter delivers to it, and every outcome has its code."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tasktree.exporter.errors import Overloaded, StoreUnavailable
from tasktree.exporter.receiver.otlp_grpc import start_otlp_grpc_server
from tasktree.exporter.settings import Settings
from tasktree.exporter.tree.status import ERROR, OK

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
T0 = 1_700_000_000_000_000_000
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class RecordingIngest:
    def __init__(self):
        self.batches = []
        self.errors = []

    def __call__(self, batch):
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(batch)

    @property
    def spans(self):
        return [span for batch in self.batches for span in batch.spans]


@pytest.fixture
def ingest():
    return RecordingIngest()


@pytest.fixture
def start():
    """Start a receiver on 127.0.0.1:<free port>; returns the port.  Stopped after the test."""
    servers = []

    def start(ingest, **settings) -> int:
        server, port = start_otlp_grpc_server(
            ingest, Settings(**settings), "127.0.0.1", 0, max_workers=2
        )
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(None)


@pytest.fixture
def channels():
    opened = []

    def open_(port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        channel.close()


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


def request_of(*spans) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


def sdk_spans():
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "sdk-job"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("root"):
        with tracer.start_as_current_span("child-fails") as failing:
            failing.set_status(Status(StatusCode.ERROR, "went wrong"))
        with tracer.start_as_current_span("child-ok"):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def export_with_sdk(port: int, spans, **options) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10, **options)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def retry_delay_ns(error: grpc.RpcError) -> tuple[int, int]:
    """The RetryInfo delay as found in each of the two trailers (standard Status, Python SDK's)."""
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]
    from_status = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(from_status)
    bare = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    return from_status.retry_delay.ToNanoseconds(), bare.retry_delay.ToNanoseconds()


# ------------------------------------------------------------------------------- the SDK


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_the_otel_sdk_exporter_delivers_spans_over_grpc(start, ingest, compression):
    port = start(ingest)

    assert export_with_sdk(port, sdk_spans(), compression=compression) == SpanExportResult.SUCCESS

    rows = {row.name: row for row in ingest.spans}
    assert set(rows) == {"root", "child-fails", "child-ok"}
    assert rows["root"].parent_span_id is None
    assert rows["child-fails"].parent_span_id == rows["root"].span_id
    assert (rows["child-fails"].status, rows["child-fails"].status_message) == (ERROR, "went wrong")
    assert rows["child-ok"].status == OK
    assert rows["root"].resource.job == "sdk-job"


def test_the_otel_sdk_exporter_retries_after_resource_exhausted_and_then_succeeds(start, ingest):
    ingest.errors.append(Overloaded("busy", retry_after=0.01))
    port = start(ingest)

    assert export_with_sdk(port, sdk_spans()) == SpanExportResult.SUCCESS

    assert ingest.errors == []  # refused once ...
    assert len(ingest.spans) == 3  # ... then stored by the retry


def test_the_otel_sdk_exporter_gives_up_without_the_token(start, ingest):
    # without the token: UNAUTHENTICATED, not retryable
    port = start(ingest, auth_token="s3cret-token")
    assert export_with_sdk(port, sdk_spans()) == SpanExportResult.FAILURE
    assert (
        export_with_sdk(port, sdk_spans(), headers={"authorization": "Bearer s3cret-token"})
        == SpanExportResult.SUCCESS
    )
    assert len(ingest.spans) == 3


# ------------------------------------------------------------------------------ raw calls


def test_a_bad_span_is_refused_alone_with_partial_success(start, ingest, channels):
    port = start(ingest)
    stub = TraceServiceStub(channels(port))

    response = stub.Export(request_of(span(1), span(2, span_id=bytes(8)), span(3)), timeout=10)

    assert response.partial_success.rejected_spans == 1
    assert "span_id is all zeros" in response.partial_success.error_message
    assert [row.name for row in ingest.spans] == ["task-1", "task-3"]


def test_full_success_leaves_partial_success_unset(start, ingest, channels):
    port = start(ingest)
    response = TraceServiceStub(channels(port)).Export(request_of(span(1)), timeout=10)
    assert not response.HasField("partial_success")


def test_an_empty_request_succeeds_without_touching_the_store(start, ingest, channels):
    port = start(ingest)
    response = TraceServiceStub(channels(port)).Export(ExportTraceServiceRequest(), timeout=10)
    assert not response.HasField("partial_success")
    assert ingest.batches == []


def test_an_undecodable_request_is_invalid_argument(start, ingest, channels):
    port = start(ingest)
    export_raw = channels(port).unary_unary(
        EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
    )
    with pytest.raises(grpc.RpcError) as raised:
        export_raw(b"\xff\xff\xff", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid OTLP ExportTraceServiceRequest" in raised.value.details()
    assert ingest.batches == []


@pytest.mark.parametrize(
    "error, code, delay_ns",
    [
        (
            Overloaded("backlog of 2000000 spans is full", retry_after=2.5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            2_500_000_000,
        ),
        (Overloaded("backlog is full"), grpc.StatusCode.RESOURCE_EXHAUSTED, 1_000_000_000),
        (StoreUnavailable("PostgreSQL is down"), grpc.StatusCode.UNAVAILABLE, 5_000_000_000),
    ],
    ids=["overloaded", "overloaded-default-delay", "store-down"],
)
def test_overload_and_outage_ask_to_retry_after(start, ingest, channels, error, code, delay_ns):
    ingest.errors.append(error)
    port = start(ingest)

    with pytest.raises(grpc.RpcError) as raised:
        TraceServiceStub(channels(port)).Export(request_of(span(1)), timeout=10)

    assert raised.value.code() == code
    assert raised.value.details() == error.message
    assert retry_delay_ns(raised.value) == (delay_ns, delay_ns)


def test_an_unexpected_ingest_failure_is_internal(start, ingest, channels):
    ingest.errors.append(RuntimeError("bug"))
    port = start(ingest)
    with pytest.raises(grpc.RpcError) as raised:
        TraceServiceStub(channels(port)).Export(request_of(span(1)), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INTERNAL


def test_a_request_over_the_size_limit_is_resource_exhausted(start, ingest, channels):
    port = start(ingest, max_body_bytes=10_000)
    big = request_of(*(span(n, name="x" * 100) for n in range(1, 200)))
    assert big.ByteSize() > 10_000
    with pytest.raises(grpc.RpcError) as raised:
        TraceServiceStub(channels(port)).Export(big, timeout=10)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ingest.batches == []


@pytest.mark.parametrize(
    "metadata, code",
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer nope"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer s3cret-token"),), None),
    ],
    ids=["missing", "wrong", "right"],
)
def test_a_configured_token_is_required(start, ingest, channels, metadata, code):
    port = start(ingest, auth_token="s3cret-token")
    stub = TraceServiceStub(channels(port))
    if code is None:
        stub.Export(request_of(span(1)), metadata=metadata, timeout=10)
        assert len(ingest.spans) == 1
        return
    with pytest.raises(grpc.RpcError) as raised:
        stub.Export(request_of(span(1)), metadata=metadata, timeout=10)
    assert raised.value.code() == code
    assert ingest.batches == []


def test_a_busy_port_is_an_error_not_a_shared_port(start, ingest):
    port = start(ingest)
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        start_otlp_grpc_server(ingest, Settings(), "127.0.0.1", port)
