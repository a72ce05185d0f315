"""The exporter ``configure()`` builds (``otlp.py``): OpenTelemetry's requests, encoded faster."""

from __future__ import annotations

import os

import pytest
from job_support import job_stderr, one_task_job
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as otel_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState

from tasktree.instrumentation import configuration, otlp
from tasktree.instrumentation.snapshot import running_snapshot

SIMPLE_ATTRIBUTES = {
    "text": "héllo",
    "empty": "",
    "yes": True,
    "no": False,
    "zero": 0,
    "negative": -7,
    "large": 2**62,
    "ratio": 0.25,
}


def record(resource: Resource | None = None, **tracer):
    """A provider recording into memory, and a tracer of it (``name``, ``version``, ...)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory, provider.get_tracer(**{"instrumenting_module_name": "tasktree.test", **tracer})


def simple_spans():
    memory, tracer = record()
    with tracer.start_as_current_span("root"):
        tracer.start_span("attributes", attributes=SIMPLE_ATTRIBUTES).end()
        for kind in SpanKind:
            tracer.start_span(f"kind {kind.name}", kind=kind).end()
        ok = tracer.start_span("ok")
        ok.set_status(Status(StatusCode.OK))
        ok.end()
        failed = tracer.start_span("failed ✗")
        failed.set_status(Status(StatusCode.ERROR, "ValueError: bad row"))
        failed.end()
        running = tracer.start_span("running", attributes={"rows": 3})
        snapshot = running_snapshot(running)
        running.end()
    remote = propagate.extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    span = tracer.start_span("remote parent", context=remote)
    span.end()
    return [*memory.get_finished_spans(), snapshot]


def test_spans_tasks_make_are_encoded_byte_for_byte_as_opentelemetry_does(monkeypatch):
    spans = simple_spans()
    slow_calls = []
    encode = otlp._encode_slowly
    monkeypatch.setattr(otlp, "_encode_slowly", lambda s: slow_calls.append(s) or encode(s))
    monkeypatch.setattr(otlp, "_envelopes", {})
    assert otlp.encode_spans(spans) == otel_encode(spans).SerializePartialToString()
    assert len(slow_calls) == 1  # the resource and scope, once; every span on the fast path


def test_other_spans_go_through_opentelemetry_s_encoder_in_the_same_request():
    memory, tracer = record(
        Resource.create({"service.name": "other"}, schema_url="https://example.com/r"),
        instrumenting_library_version="1.2",
        schema_url="https://example.com/s",
    )
    with tracer.start_as_current_span("with an event") as span:
        span.record_exception(ValueError("boom"))
        linked = tracer.start_span("with a link", links=[Link(span.get_span_context())])
        linked.end()
        tracer.start_span("a list", attributes={"ids": [1, 2], "names": ("a", "b")}).end()
        tracer.start_span("", attributes={"empty name": True}).end()
        state = TraceState([("vendor", "value")])
        with_state = trace.SpanContext(
            span.get_span_context().trace_id, 0x1234, is_remote=True, trace_state=state
        )
        tracer.start_span("trace state", context=trace.set_span_in_context(
            trace.NonRecordingSpan(with_state))).end()  # fmt: skip
    spans = [*memory.get_finished_spans(), *simple_spans()]
    assert otlp.encode_spans(spans) == otel_encode(spans).SerializePartialToString()


# With an event (every failed task has its exception's), a span takes OpenTelemetry's encoder,
# which dropped the integer with a traceback.
@pytest.mark.parametrize("with_event", [False, True])
def test_an_integer_beyond_64_bits_is_sent_as_its_text_not_dropped(otlp_sink, caplog, with_event):
    memory, tracer = record()
    huge = {"huge": 2**70, "negative": -(2**64), "ids": [1, 2**64], "fine": 1}
    span = tracer.start_span("over int64", attributes=huge)
    if with_event:
        span.add_event("exception", {"exception.type": "OSError", "row": 2**65})
    span.end()
    exporter = otlp.SpanExporter(endpoint=otlp_sink.endpoint + "/v1/traces", timeout=5)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    [received] = otlp_sink.wait_for(lambda records: len(records) == 1)
    assert received.attributes == {
        "huge": str(2**70),
        "negative": str(-(2**64)),
        "ids": [1, str(2**64)],
        "fine": 1,
    }
    assert not [r for r in caplog.records if r.exc_info]  # no traceback in the job's log
    exporter.shutdown()


def test_configure_exports_through_the_fast_exporter(otlp_sink):
    factory = configuration._exporter_factory(otlp_sink.endpoint)
    assert factory is not None
    exporter = factory()
    assert isinstance(exporter, otlp.SpanExporter)
    assert exporter.fast  # the installed OpenTelemetry has the layout this exporter knows
    spans = simple_spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    received = otlp_sink.wait_for(lambda records: len(records) == len(spans))
    by_name = {r.name: r for r in received if not r.running}
    assert by_name["attributes"].attributes == SIMPLE_ATTRIBUTES
    assert by_name["failed ✗"].status_message == "ValueError: bad row"
    assert by_name["remote parent"].parent == "b7ad6b7169203331"
    assert [r.attributes["rows"] for r in received if r.running] == [3]
    exporter.shutdown()


@pytest.mark.parametrize("mode", ["down"])
def test_a_refused_request_is_a_failure_as_with_opentelemetry_s_exporter(otlp_sink, mode):
    otlp_sink.mode = mode
    exporter = otlp.SpanExporter(endpoint=otlp_sink.endpoint + "/v1/traces", timeout=1)
    assert exporter.export(simple_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318", "is not an http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1", "is not an http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999", "is the port a number"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://127.0.0.1:4317", "not an http://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/v1/traces/", "drop /v1/traces"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9", "add /v1/traces"),
    ],
)
def test_an_endpoint_that_cannot_work_is_named_when_the_job_starts(variable, value, says):
    lines = one_task_job(**{variable: value}).splitlines()
    named = [line for line in lines if line.startswith(f"tasktree: {variable}={value!r}")]
    assert len(named) == 1 and says in named[0], lines
    assert "no task can be delivered" in named[0]
    assert lines.index(named[0]) < len(lines) - 1  # said before the job's end, not after it


def test_a_working_endpoint_gets_no_warning_and_its_tasks_arrive(otlp_sink):
    for variable, value in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_sink.endpoint + "/"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_sink.endpoint + "/v1/traces"),
    ]:
        stderr = one_task_job(**{variable: value})
        assert "tasktree:" not in stderr, stderr
    records = otlp_sink.wait_for(lambda rs: sum(r.name == "one" for r in rs) == 2)
    assert sum(r.name == "one" and not r.running for r in records) == 2


def test_a_second_configure_that_asks_for_something_else_says_it_is_ignored(otlp_sink):
    script = (
        "from tasktree.instrumentation import configure\n"
        "configure(service_name='first')\n"
        "configure(service_name='second', endpoint='http://127.0.0.1:9')\n"
        "configure()\n"
        "configure(service_name='first')\n"
    )
    stderr = job_stderr(script, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.endpoint)
    [said] = [line for line in stderr.splitlines() if "configure() was called before" in line]
    assert "(service_name='first')" in said
    assert "service_name='second', endpoint='http://127.0.0.1:9' are ignored" in said


def test_configure_inside_a_task_started_before_it_says_that_task_is_lost(otlp_sink):
    script = (
        "from tasktree.instrumentation import configure, task\n"
        "@task\n"
        "def main():\n"
        "    configure()\n"
        "    with task('inside'):\n"
        "        pass\n"
        "main()\n"
    )
    stderr = job_stderr(script, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.endpoint)
    assert "configure() was called inside a task started before it" in stderr
    assert "call configure() before the first task starts" in stderr
    clean = one_task_job(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.endpoint)  # configure(), then tasks
    assert "configure() was called inside" not in clean


NOT_UTF8 = os.fsdecode(b"report-\xff.csv")  # a file name that is not UTF-8, as os.listdir gives it
ESCAPED = "report-\\udcff.csv"  # as it arrives: Python's escape of the byte


def test_text_utf8_cannot_encode_arrives_escaped_and_no_record_is_lost(otlp_sink, caplog):
    memory, tracer = record(Resource.create({"process.command_line": f"job {NOT_UTF8}"}))
    with tracer.start_as_current_span("root"):
        attributes = {"path": NOT_UTF8, "paths": [NOT_UTF8, "x"], NOT_UTF8: 1}
        tracer.start_span(f"load {NOT_UTF8}", attributes=attributes).end()
        with pytest.raises(ValueError), tracer.start_as_current_span("read"):  # an event: slow path
            raise ValueError(f"bad row in {NOT_UTF8}")
        tracer.start_span("after").end()
    exporter = otlp.SpanExporter(endpoint=otlp_sink.endpoint + "/v1/traces", timeout=5)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    received = {r.name: r for r in otlp_sink.wait_for(lambda records: len(records) == 4)}
    assert set(received) == {"root", f"load {ESCAPED}", "read", "after"}
    loaded = received[f"load {ESCAPED}"]
    assert loaded.attributes == {"path": ESCAPED, "paths": [ESCAPED, "x"], ESCAPED: 1}
    assert loaded.resource["process.command_line"] == f"job {ESCAPED}"
    assert received["read"].status_message == f"ValueError: bad row in {ESCAPED}"
    [(event, event_attributes)] = received["read"].events
    assert event == "exception" and event_attributes["exception.message"] == f"bad row in {ESCAPED}"
    assert not [r for r in caplog.records if r.exc_info]  # nothing dropped on the way
    exporter.shutdown()


def test_a_record_that_cannot_be_encoded_is_left_out_alone_and_named(otlp_sink, caplog):
    memory, tracer = record()
    tracer.start_span("before").end()
    tracer.start_span("after").end()
    good = memory.get_finished_spans()
    broken = ReadableSpan(  # a kind OTLP has no number for: no encoder can take it
        name="broken", context=good[0].context, kind=None, resource=good[0].resource  # type: ignore[arg-type]
    )
    exporter = otlp.SpanExporter(endpoint=otlp_sink.endpoint + "/v1/traces", timeout=5)
    assert exporter.export([good[0], broken, good[1]]) is SpanExportResult.SUCCESS
    received = otlp_sink.wait_for(lambda records: len(records) == 2)
    assert sorted(r.name for r in received) == ["after", "before"]
    [said] = [r.getMessage() for r in caplog.records if "cannot encode" in r.getMessage()]
    assert "task 'broken'" in said and "it is not sent" in said
    exporter.shutdown()


def test_a_job_whose_task_names_a_file_that_is_not_utf8_delivers_every_task(otlp_sink):
    script = (
        "import os, time\n"
        "from tasktree.instrumentation import configure, task\n"
        "configure()\n"
        "with task('root'):\n"
        "    with task('watch ' + os.fsdecode(b'dir-\\xff')):\n"
        "        time.sleep(0.6)\n"  # running snapshots of it, sent with the others' records
        "    for i in range(3):\n"
        "        with task(f'after-{i}'):\n"
        "            pass\n"
    )
    stderr = job_stderr(script, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.endpoint)
    assert "tasktree:" not in stderr, stderr
    finals = otlp_sink.wait_for(lambda records: sum(not r.running for r in records) == 5)
    names = {r.name for r in finals}
    assert names >= {"root", "watch dir-\\udcff", "after-0", "after-1", "after-2"}
    assert any(r.running and r.name == "watch dir-\\udcff" for r in finals)
