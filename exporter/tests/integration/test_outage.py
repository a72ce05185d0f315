"""design.md §3 rule 4: PostgreSQL stopped and restarted during an SDK export loses nothing."""

from __future__ import annotations

import threading
import time

import psycopg
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def _provider(endpoint: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "outage-job"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint + "/v1/traces", timeout=60),
            schedule_delay_millis=100,
        )
    )
    return provider


def test_postgresql_restart_during_export_loses_no_span(embedded_pg, start_tasktree):
    url = embedded_pg.get_uri(database="tasktree")
    server = start_tasktree(database=url)
    provider = _provider(server.otlp_http)
    tracer = provider.get_tracer("outage")
    with tracer.start_as_current_span("before"):
        pass
    assert provider.force_flush(30_000)

    embedded_pg.stop()
    with tracer.start_as_current_span("during") as root:
        for i in range(50):
            with tracer.start_as_current_span(f"child-{i}"):
                pass
    flushed = {}
    flusher = threading.Thread(
        target=lambda: flushed.setdefault("ok", provider.force_flush(60_000))
    )
    flusher.start()
    time.sleep(2.0)  # the export is now being refused with 503 and retried
    embedded_pg.start()
    flusher.join(90)
    assert flushed.get("ok"), "the SDK exporter gave up"
    provider.shutdown()

    server.wait_folded()
    trace_id = format(root.get_span_context().trace_id, "032x")
    with psycopg.connect(url, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM tasks")}
        run = conn.execute(
            "SELECT task_count, n_ok FROM runs WHERE trace_id = %s", (bytes.fromhex(trace_id),)
        ).fetchone()
    assert {"before", "during"} | {f"child-{i}" for i in range(50)} <= names
    assert run == (51, 51)  # the run counts every task, the root included
