"""Load and checks for the failover tests (issue 17): an OTel SDK job sending runs through a real
``tasktree serve`` while its primary dies, and what the promoted server holds afterwards."""

from __future__ import annotations

import os
import threading
import time

import requests
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from exporter.tests.integration.faults_support import (
    AckRecordingExporter,
    OtlpClient,
    otlp_request,
    random_id,
)
from tasktree.exporter.tree.status import OK

CHILDREN = 20
"""Tasks under each run's root."""


class Load:
    """A job sending runs (a root and ``CHILDREN`` tasks) through the OTel SDK's batch processor
    and HTTP exporter, which retries 503s after their Retry-After, until ``stop()``."""

    def __init__(self, otlp_http: str, job: str = "failover"):
        self.exporter = AckRecordingExporter(
            OTLPSpanExporter(endpoint=otlp_http + "/v1/traces", timeout=30)
        )
        self.provider = TracerProvider(resource=Resource.create({"service.name": job}))
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self.exporter,
                max_queue_size=1_000_000,  # nothing dropped: every span is exported or failed
                schedule_delay_millis=50,
                max_export_batch_size=200,
            )
        )
        self._tracer = self.provider.get_tracer("failover")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-load", daemon=True)
        self.runs = 0

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            root = self._tracer.start_span("nightly")
            context = otel_trace.set_span_in_context(root)
            for i in range(CHILDREN):
                self._tracer.start_span(f"chunk-{i}", context=context).end()
            root.end()
            self.runs += 1
            self._stop.wait(0.02)

    def acked(self) -> set[tuple[bytes, bytes]]:
        """(trace id, span id) of every span whose export got a 200."""
        return {
            (trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"))
            for trace_id, span_id in list(self.exporter.acked)
        }

    def wait_acked(self, count: int, timeout: float) -> None:
        """Wait until ``count`` more spans than now are acknowledged."""
        target = len(self.exporter.acked) + count
        deadline = time.monotonic() + timeout
        while len(self.exporter.acked) < target:
            assert time.monotonic() < deadline, f"fewer than {count} spans acknowledged in time"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop making runs; export (with retries) what is queued; shut the SDK down."""
        self._stop.set()
        self._thread.join(30)
        self.provider.shutdown()


class Prober:
    """Small requests sent one after another (each retried after 503 until a 200), counting
    every status ingest answers, so that a test sees what clients are told during the outage."""

    def __init__(self, otlp_http: str):
        self.client = OtlpClient(otlp_http, max_retry_after=0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-probe", daemon=True)

    def start(self) -> Prober:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            body = otlp_request(random_id(16), [(random_id(8), None, "probe", False)], "probe")
            self.client.send(body, deadline=time.monotonic() + 60)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)


def wait_healthy(server, deadline: float) -> None:
    """Wait until ``/healthz`` answers 200 and a span sent now is acknowledged (200), before
    ``deadline`` (monotonic)."""
    while True:
        try:
            health = requests.get(server.web + "/healthz", timeout=5).status_code
        except requests.RequestException:
            health = None
        if health == 200 and _probe_ingest(server) == 200:
            return
        assert time.monotonic() < deadline, f"tasktree not healthy in time (healthz {health})"
        time.sleep(0.1)


def _probe_ingest(server) -> int | None:
    span = {
        "traceId": os.urandom(16).hex(),
        "spanId": os.urandom(8).hex(),
        "name": "probe",
        "startTimeUnixNano": str(time.time_ns() - 1000),
        "endTimeUnixNano": str(time.time_ns()),
    }
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "probe"}}]
                },
                "scopeSpans": [{"spans": [span]}],
            }
        ]
    }
    try:
        return requests.post(server.otlp_http + "/v1/traces", json=body, timeout=10).status_code
    except requests.RequestException:
        return None


def stored_spans(cluster) -> set[tuple[bytes, bytes]]:
    """(trace id, span id) of every task (not placeholders) on ``cluster``."""
    rows = cluster.execute("SELECT trace_id, span_id FROM tasks WHERE NOT missing")
    return {(bytes(t), bytes(s)) for t, s in rows}


def wrong_rollups(cluster) -> list[tuple]:
    """Runs of the load whose root (task or placeholder) does not count exactly its stored
    children, all ``ok``: empty when every rollup is right."""
    return cluster.execute(
        """
        SELECT r.trace_id, r.child_count, r.n_ok, r.n_error, r.n_running, r.n_stalled, c.n
        FROM tasks r
        JOIN LATERAL (SELECT count(*) AS n FROM tasks c
                      WHERE c.trace_id = r.trace_id AND c.parent_span_id = r.span_id
                        AND NOT c.missing AND c.status = %s) c ON true
        WHERE r.parent_span_id IS NULL AND r.name IS DISTINCT FROM 'probe'
          AND (r.child_count, r.n_ok, r.n_error, r.n_running, r.n_stalled) <> (c.n, c.n, 0, 0, 0)
        """,
        (int(OK),),
    )
