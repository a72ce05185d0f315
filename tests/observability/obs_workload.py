"""A demo-like workload sent with the real OpenTelemetry SDK, and a job that gets SIGKILLed.

Jobs (each its own ``service.name``):

* ``obs-etl``: a run that succeeds, tasks on two hosts (``host.name`` resources), a few levels;
* ``obs-failing``: a run whose root fails, with a failed task carrying a message and an
  exception event, on two hosts;
* ``obs-orphans``: a task whose parent is never sent (a missing-parent placeholder);
* ``obs-stalling``: a running snapshot that is never followed by a heartbeat (stalls).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

RUNNING_ATTRIBUTE = {"tasktree.state": "running"}


def _providers(endpoint: str, job: str):
    out = []
    for host in ("worker-a", "worker-b"):
        provider = TracerProvider(
            resource=Resource.create({"service.name": job, "host.name": host})
        )
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        out.append(provider)
    return out


def send_run(endpoint: str, job: str, *, fail: bool) -> str:
    """One run of ``job``: root → 2 stages → 3 chunks each, on two hosts; returns its trace id."""
    a, b = _providers(endpoint, job)
    tracer_a, tracer_b = a.get_tracer("obs"), b.get_tracer("obs")
    root = tracer_a.start_span(f"{job}-run")
    ctx = otel_trace.set_span_in_context(root)
    for stage, tracer in (("extract", tracer_a), ("transform", tracer_b)):
        span = tracer.start_span(stage, context=ctx)
        sctx = otel_trace.set_span_in_context(span)
        for i in range(3):
            chunk = tracer.start_span(f"{stage}-chunk", context=sctx, attributes={"chunk": i})
            time.sleep(0.002)
            if fail and stage == "transform" and i == 1:
                chunk.add_event(
                    "exception",
                    {"exception.type": "ValueError", "exception.message": "bad record in chunk 1"},
                )
                chunk.set_status(Status(StatusCode.ERROR, "chunk 1: bad record"))
            chunk.end()
        span.end()
    if fail:
        root.set_status(Status(StatusCode.ERROR, "transform failed"))
    root.end()
    for provider in (a, b):
        provider.shutdown()
    return format(root.get_span_context().trace_id, "032x")


def send_orphan(endpoint: str, job: str = "obs-orphans") -> str:
    """A finished task whose parent span is never sent."""
    exporter = OTLPSpanExporter(endpoint=endpoint)
    trace_id, parent, span_id = (int.from_bytes(os.urandom(n), "big") | 1 for n in (16, 8, 8))
    now = time.time_ns()
    span = ReadableSpan(
        name="orphan",
        context=SpanContext(trace_id, span_id, False, TraceFlags(1)),
        parent=SpanContext(trace_id, parent, False, TraceFlags(1)),
        resource=Resource.create({"service.name": job}),
        kind=SpanKind.INTERNAL,
        start_time=now - 1_000_000,
        end_time=now,
        status=Status(StatusCode.OK),
    )
    exporter.export([span])
    exporter.shutdown()
    return format(trace_id, "032x")


def send_running_snapshot(
    endpoint: str, job: str = "obs-stalling", started_s_ago: float = 1.0, beat_ahead_s: float = 0
) -> str:
    """A running task's snapshot (its end time is the heartbeat) and no heartbeat after it;
    ``beat_ahead_s``: its heartbeat that far ahead of now, so that it runs that much longer
    before it stalls (tasktree counts a heartbeat at most a minute past its receipt)."""
    exporter = OTLPSpanExporter(endpoint=endpoint)
    trace_id, span_id = (int.from_bytes(os.urandom(n), "big") | 1 for n in (16, 8))
    now = time.time_ns()
    span = ReadableSpan(
        name="long-task",
        context=SpanContext(trace_id, span_id, False, TraceFlags(1)),
        parent=None,
        resource=Resource.create({"service.name": job}),
        kind=SpanKind.INTERNAL,
        attributes=RUNNING_ATTRIBUTE,
        start_time=now - int(started_s_ago * 1e9),
        end_time=now + int(beat_ahead_s * 1e9),
    )
    exporter.export([span])
    exporter.shutdown()
    return format(trace_id, "032x")


# A job that reports itself running and sends a heartbeat (a fresh snapshot of the same task)
# every 0.3 s until it is killed; it prints READY after its first snapshot was accepted.
KILLED_JOB = textwrap.dedent("""
    import os, sys, time
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    endpoint, job = sys.argv[1], sys.argv[2]
    exporter = OTLPSpanExporter(endpoint=endpoint)
    resource = Resource.create({"service.name": job, "process.pid": os.getpid()})
    trace_id = int.from_bytes(os.urandom(16), "big") | 1
    span_id = int.from_bytes(os.urandom(8), "big") | 1
    start = time.time_ns()
    first = True
    context = SpanContext(trace_id, span_id, False, TraceFlags(1))
    while True:
        span = ReadableSpan(name="killed-task", context=context, parent=None, resource=resource,
                            kind=SpanKind.INTERNAL, attributes={"tasktree.state": "running"},
                            start_time=start, end_time=time.time_ns())
        if exporter.export([span]) == SpanExportResult.SUCCESS and first:
            print("READY", format(trace_id, "032x"), flush=True)
            first = False
        time.sleep(0.3)
""")


def killed_job_command(endpoint: str, job: str) -> list[str]:
    return [sys.executable, "-c", KILLED_JOB, endpoint, job]
