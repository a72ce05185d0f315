"""LiveSpanProcessor: running snapshots, heartbeats, final records, a sink that is slow or down."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from job_support import one_task_job
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tasktree.instrumentation.heartbeat import LiveSpanProcessor
from tasktree.instrumentation.snapshot import ABANDONED_MESSAGE, LIVE_ATTRIBUTE, is_running_snapshot


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Pipeline:
    """A private TracerProvider (not the global one) with a LiveSpanProcessor into memory."""

    def __init__(self, exporter=None, **settings):
        self.exporter = exporter or InMemorySpanExporter()
        settings.setdefault("snapshot_delay", 0.1)
        settings.setdefault("heartbeat_interval", 0.2)
        settings.setdefault("schedule_delay", 0.05)
        self.processor = LiveSpanProcessor(self.exporter, **settings)
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("test")

    def records(self):
        return list(self.exporter.get_finished_spans())

    def snapshots(self, name):
        return [r for r in self.records() if r.name == name and is_running_snapshot(r)]

    def finals(self, name):
        return [r for r in self.records() if r.name == name and not is_running_snapshot(r)]


@pytest.fixture
def pipeline():
    pipe = Pipeline()
    yield pipe
    pipe.provider.shutdown()


def test_a_running_task_gets_snapshots_that_copy_it_and_the_final_record_is_clean(pipeline):
    with pipeline.tracer.start_as_current_span("long", attributes={"a": 1}) as span:
        wait_until(lambda: len(pipeline.snapshots("long")) >= 1)
        span.set_attribute("later", "yes")
        wait_until(lambda: any(s.attributes.get("later") for s in pipeline.snapshots("long")))
        assert LIVE_ATTRIBUTE not in span.attributes  # the live span is never touched
    wait_until(lambda: pipeline.finals("long"))
    first = pipeline.snapshots("long")[0]
    (final,) = pipeline.finals("long")
    assert first.context.span_id == final.context.span_id and first.parent == final.parent
    assert first.start_time == final.start_time
    assert first.attributes["a"] == 1 and first.attributes[LIVE_ATTRIBUTE] == "running"
    assert first.status.status_code is StatusCode.UNSET
    assert first.start_time <= first.end_time <= final.end_time
    assert LIVE_ATTRIBUTE not in final.attributes


def test_heartbeats_repeat_while_the_task_runs_with_newer_times(pipeline):
    with pipeline.tracer.start_as_current_span("beats"):
        wait_until(lambda: len(pipeline.snapshots("beats")) >= 3)
    times = [s.end_time for s in pipeline.snapshots("beats")]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_short_tasks_cost_no_snapshot():
    pipe = Pipeline(snapshot_delay=5.0)
    try:
        for _ in range(20):
            with pipe.tracer.start_as_current_span("quick"):
                pass
        wait_until(lambda: len(pipe.finals("quick")) == 20)
        assert pipe.snapshots("quick") == []
    finally:
        pipe.provider.shutdown()


def test_force_flush_exports_everything_ended_so_far():
    pipe = Pipeline(schedule_delay=60.0)
    try:
        with pipe.tracer.start_as_current_span("flushed"):
            pass
        assert pipe.processor.force_flush(5000)
        assert len(pipe.finals("flushed")) == 1
    finally:
        pipe.provider.shutdown()


def test_shutdown_records_tasks_still_running_as_abandoned_errors():
    pipe = Pipeline(snapshot_delay=60.0)
    span = pipe.tracer.start_span("never-ends")
    pipe.provider.shutdown()
    (final,) = pipe.finals("never-ends")
    assert final.status.status_code is StatusCode.ERROR
    assert final.status.description == ABANDONED_MESSAGE
    assert span.is_recording()  # the application's span object is left alone


class FailingExporter(SpanExporter):
    """A sink that is down: every export fails (or blocks until released)."""

    def __init__(self, block: bool = False):
        self.calls = 0
        self.block = block
        self.release = threading.Event()

    def export(self, spans):
        self.calls += 1
        if self.block:
            self.release.wait(30)
        return SpanExportResult.FAILURE

    def shutdown(self):
        self.release.set()


def test_a_sink_that_is_down_never_blocks_the_job_and_the_queue_stays_bounded(caplog):
    exporter = FailingExporter(block=True)
    pipe = Pipeline(exporter, max_queue_size=100, flush_timeout=0.2)
    done = threading.Event()

    def job():
        for _ in range(5000):
            with pipe.tracer.start_as_current_span("many"):
                pass
        done.set()

    worker = threading.Thread(target=job)
    worker.start()
    worker.join(60)
    assert done.is_set()
    assert len(pipe.processor._queue) <= 100
    assert pipe.processor._dropped_finals >= 5000 - 100 - 512
    assert pipe.processor.force_flush() is False  # bounded by the flush timeout
    with caplog.at_level(logging.WARNING, logger="tasktree.instrumentation.heartbeat"):
        pipe.provider.shutdown()  # bounded too: cuts the stuck export short
    assert "not delivered so far" in caplog.text
    assert "final span records" in caplog.text


def test_after_a_failed_export_flushes_return_at_once_and_exports_back_off():
    exporter = FailingExporter()
    pipe = Pipeline(exporter)
    try:
        with pipe.tracer.start_as_current_span("lost"):
            pass
        wait_until(lambda: exporter.calls >= 1)
        wait_until(lambda: pipe.processor.sink_down)
        assert pipe.processor.force_flush(60_000) is False  # no waiting on a sink that is down
        calls = exporter.calls
        for _ in range(50):
            with pipe.tracer.start_as_current_span("more"):
                pass
        assert exporter.calls <= calls + 1  # waiting out the backoff, not retrying per span
    finally:
        pipe.provider.shutdown()


class SlowSink(InMemorySpanExporter):
    """A sink that is up and answers every request, but takes a while: slower than a tight loop
    makes tasks."""

    def export(self, spans):
        time.sleep(0.02)
        return super().export(spans)


def test_a_job_faster_than_a_sink_that_is_up_waits_for_it_instead_of_losing_records():
    """A tight loop of 20,000 tasks lost a third of them as "queue full" with a healthy local
    server, and the run showed nothing missing."""
    pipe = Pipeline(SlowSink(), max_queue_size=200, max_export_batch_size=100)
    try:
        for _ in range(3000):
            with pipe.tracer.start_as_current_span("many"):
                pass
        assert pipe.processor.force_flush() is True
        assert len(pipe.finals("many")) == 3000
        assert pipe.processor._dropped_finals == 0
    finally:
        pipe.provider.shutdown()


class SlowlyFailingExporter(SpanExporter):
    """A sink that is down, reached the way OpenTelemetry's exporter does: it retries for a
    while before it gives up; ``back`` makes it a sink that answers again."""

    def __init__(self, fails_after: float):
        self.fails_after = fails_after
        self.back = False
        self.exported: list = []

    def export(self, spans):
        if self.back:
            self.exported += spans
            return SpanExportResult.SUCCESS
        time.sleep(self.fails_after)
        return SpanExportResult.FAILURE

    def shutdown(self):
        pass


def test_once_an_export_failed_a_flush_waits_for_no_attempt_until_one_succeeds():
    """A pool worker flushes at the end of every task: when its backoff was over by the next
    task, each flush waited out a whole attempt at the sink that was down (5 s a task)."""
    exporter = SlowlyFailingExporter(fails_after=2.0)
    pipe = Pipeline(exporter, flush_timeout=5.0)
    try:
        with pipe.tracer.start_as_current_span("lost"):
            pass
        pipe.processor.force_flush()  # waits out the first attempt, which fails
        wait_until(lambda: pipe.processor._failures >= 1 and not pipe.processor.sink_down)
        with pipe.tracer.start_as_current_span("next-task"):
            pass
        started = time.monotonic()
        assert pipe.processor.force_flush() is False
        assert time.monotonic() - started < 1.0  # not the 2 s of an attempt
        exporter.back = True  # the attempt going on meanwhile fails; the next one delivers
        with pipe.tracer.start_as_current_span("after"):
            pass
        wait_until(lambda: {s.name for s in exporter.exported} >= {"next-task", "after"}, 30)
        with pipe.tracer.start_as_current_span("flushed"):
            pass
        assert pipe.processor.force_flush() is True  # the sink is up again: waited for
        assert "flushed" in {s.name for s in exporter.exported}
    finally:
        pipe.provider.shutdown()


def test_an_exporter_that_raises_is_counted_not_propagated():
    class Raising(SpanExporter):
        def export(self, spans):
            raise ConnectionError("boom")

        def shutdown(self):
            pass

    pipe = Pipeline(Raising())
    with pipe.tracer.start_as_current_span("x"):
        pass
    wait_until(lambda: pipe.processor._dropped_finals == 1)
    assert "ConnectionError" in pipe.processor._last_error
    pipe.provider.shutdown()


def test_unsampled_spans_are_neither_tracked_nor_exported():
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    processor = LiveSpanProcessor(exporter, snapshot_delay=0, schedule_delay=0.01)
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("off"):
        assert processor._live == {}
    provider.shutdown()
    assert exporter.get_finished_spans() == ()


class CountingExporter(SpanExporter):
    """A sink that takes everything at once."""

    def __init__(self):
        self.exported = 0

    def export(self, spans):
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_a_busy_thread_with_system_calls_in_its_tasks_loses_no_record_to_an_instant_sink():
    # Each task does some work and calls os.urandom (as uuid.uuid4() does): the thread lets go of
    # the interpreter for the system call and takes it straight back, before the woken worker
    # can; without the hand-off the worker ran a few times a second and thousands were dropped.
    exporter = CountingExporter()
    pipe = Pipeline(exporter, snapshot_delay=60.0, schedule_delay=1.0)
    try:
        for _ in range(20_000):
            with pipe.tracer.start_as_current_span("busy"):
                os.urandom(16)
                sum(range(3_000))
        assert pipe.processor.force_flush(10_000)
        assert pipe.processor._dropped_finals == 0
        assert exporter.exported == 20_000
    finally:
        pipe.provider.shutdown()


@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "-1", "ten", "86401"])
def test_a_bad_flush_timeout_warns_and_the_job_still_delivers_its_tasks(otlp_sink, value):
    stderr = one_task_job(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.endpoint,
                          TASKTREE_FLUSH_TIMEOUT=value)  # fmt: skip
    assert f"ignoring TASKTREE_FLUSH_TIMEOUT={value!r}" in stderr
    assert "Traceback" not in stderr
    otlp_sink.wait_for(lambda rs: any(r.name == "one" and not r.running for r in rs))


def test_records_of_a_sink_down_longer_than_the_exporter_s_timeout_arrive_once_it_is_back(
    otlp_sink,
):
    """The sink answers 503 for longer than OpenTelemetry's exporter keeps retrying a batch (its
    timeout): those records were dropped, so a database outage of 30 s behind tasktree serve
    lost every task a job finished meanwhile.  Now they go again after the back-off."""
    from tasktree.instrumentation import otlp

    otlp_sink.mode = "down"
    exporter = otlp.SpanExporter(endpoint=otlp_sink.endpoint + "/v1/traces", timeout=1.5)
    pipe = Pipeline(exporter)
    try:
        for i in range(20):
            with pipe.tracer.start_as_current_span(f"during-outage-{i}"):
                pass
        wait_until(lambda: pipe.processor._failures >= 2, 30)  # two exports gave up
        otlp_sink.mode = "up"
        names = {f"during-outage-{i}" for i in range(20)}
        otlp_sink.wait_for(lambda records: names <= {r.name for r in records}, 60)
        assert pipe.processor._dropped_finals == 0
    finally:
        pipe.provider.shutdown()
