"""design.md §3 rule 4, issue 7 "Faults": ``tasktree serve`` killed with SIGKILL in the middle of an
SDK export, then restarted on the same ports.  The exporter's retries deliver everything, and every
span acknowledged is in the tree exactly once with the right rollups.

Two clients: the plain OTel SDK (BatchSpanProcessor + OTLP/HTTP exporter), and a job set up by
``tasktree.instrumentation.configure()`` (LiveSpanProcessor: running snapshots, heartbeats) run as
a child program that prints JSON (scripts/sink_killed_job.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .faults_support import AckRecordingExporter, free_port

STEPS, ITEMS = 40, 10  # 1 root + 40 steps + 400 items
SCRIPTS = Path(__file__).parent / "scripts"


def _fixed_ports() -> tuple[str, ...]:
    """Ports chosen up front, so that the restarted server is where the exporter sends."""
    return ("--port", str(free_port()), "--otlp-http-port", str(free_port()),
            "--otlp-grpc-port", str(free_port()))


def _kill(server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)


def _landed_or_folded(url: str, job: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM span_landing l JOIN resources r ON r.id = l.resource_id"
            "        WHERE r.job = %(job)s)"
            "     + (SELECT count(*) FROM tasks t JOIN resources r ON r.id = t.resource_id"
            "        WHERE r.job = %(job)s)", {"job": job}).fetchone()[0]


def _tree(url: str, trace_id: bytes) -> dict:
    """What the store holds for one run: tasks by span id, the run row, and the root's rollup."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT span_id, name, status, missing, parent_span_id, n_ok, n_error,"
                            " n_running, n_stalled FROM tasks WHERE trace_id = %s",
                            (trace_id,)).fetchall()
        run = conn.execute("SELECT task_count, n_ok, n_error, n_running, n_stalled FROM runs"
                           " WHERE trace_id = %s", (trace_id,)).fetchone()
    return {"rows": rows, "run": run}


def _produce(tracer, stop_at: threading.Event) -> None:
    """A run of 441 tasks, spread over a few seconds so that exports keep flowing."""
    with tracer.start_as_current_span("nightly"):
        for step in range(STEPS):
            with tracer.start_as_current_span(f"step-{step}"):
                for item in range(ITEMS):
                    with tracer.start_as_current_span(f"item-{step}-{item}"):
                        pass
            time.sleep(0.1)
    stop_at.set()


def test_sink_killed_mid_sdk_export_and_restarted_loses_nothing_and_duplicates_nothing(
        start_tasktree, clean_db):
    ports = _fixed_ports()
    server = start_tasktree(extra_args=ports)
    exporter = AckRecordingExporter(OTLPSpanExporter(endpoint=server.otlp_http + "/v1/traces",
                                                     timeout=60))
    provider = TracerProvider(resource=Resource.create({"service.name": "sigkill-sdk-job"}))
    provider.add_span_processor(BatchSpanProcessor(
        exporter, schedule_delay_millis=50, max_export_batch_size=25, max_queue_size=10_000))
    tracer = provider.get_tracer("faults")
    produced = threading.Event()
    producer = threading.Thread(target=_produce, args=(tracer, produced))
    producer.start()
    try:
        deadline = time.monotonic() + 30
        while len(exporter.acked) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exporter.in_flight.wait(10), "no export was going on"
        _kill(server)  # while the exporter is inside export(): request sent, or being answered
        acked_before_kill = len(exporter.acked)
        time.sleep(1.0)  # the exporter now meets refused connections and backs off
        restarted = start_tasktree(extra_args=ports)
    finally:
        producer.join(60)
    assert produced.is_set()
    assert provider.force_flush(90_000), "the SDK exporter gave up"
    provider.shutdown()

    total = 1 + STEPS + STEPS * ITEMS
    trace_ids = {t for t, _ in exporter.acked}
    assert len(trace_ids) == 1 and exporter.failed_exports == 0
    assert acked_before_kill < total, "the sink was killed in the middle of the run"
    assert len(set(exporter.acked)) == total, "every span was acknowledged, none dropped"
    restarted.wait_folded()
    trace_id = next(iter(trace_ids)).to_bytes(16, "big")
    tree = _tree(clean_db, trace_id)
    acked = {span_id.to_bytes(8, "big") for _, span_id in exporter.acked}
    stored = [bytes(r[0]) for r in tree["rows"]]
    assert len(stored) == len(set(stored)) == total and set(stored) == acked  # exactly once
    assert not any(r[3] for r in tree["rows"]), "no missing-parent placeholder is left"
    assert {r[2] for r in tree["rows"]} == {3}, "every task is ok"
    root = next(r for r in tree["rows"] if r[4] is None)
    assert root[1] == "nightly" and root[5:] == (total - 1, 0, 0, 0)
    assert tree["run"] == (total, total, 0, 0, 0)
    api = restarted.get(f"/api/runs/{trace_id.hex()}")
    assert api["task_count"] == total and api["status"] == "ok"
    assert api["roots"][0]["counts"] == {"ok": total - 1, "error": 0, "running": 0, "stalled": 0}


def test_sink_killed_under_a_configured_job_with_heartbeats_loses_no_task(start_tasktree, clean_db):
    """``configure()``'s LiveSpanProcessor: finals and running snapshots go through the kill."""
    ports = _fixed_ports()
    server = start_tasktree(extra_args=ports)
    env = {**os.environ, "TASKTREE_HEARTBEAT_INTERVAL": "0.3", "TASKTREE_SNAPSHOT_DELAY": "0.1",
           "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "25",
           # the outage must fit in the exporter's retry window (its default is 10 s)
           "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "30"}
    job = subprocess.Popen([sys.executable, str(SCRIPTS / "sink_killed_job.py"), server.otlp_http,
                            str(STEPS), str(ITEMS)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while _landed_or_folded(clean_db, "sigkill-configured-job") < 100:
            assert time.monotonic() < deadline and job.poll() is None, "the job sent nothing"
            time.sleep(0.02)
        _kill(server)
        assert job.poll() is None, "the sink was killed in the middle of the run"
        time.sleep(1.0)
        restarted = start_tasktree(extra_args=ports)
        out, _ = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["flushed"] and report["dropped_finals"] == 0, report

    total = 1 + STEPS + STEPS * ITEMS
    restarted.wait_folded()
    tree = _tree(clean_db, bytes.fromhex(report["trace_id"]))
    stored = [bytes(r[0]) for r in tree["rows"]]
    assert len(stored) == len(set(stored)) == total
    assert not any(r[3] for r in tree["rows"]) and {r[2] for r in tree["rows"]} == {3}, \
        "final records beat every running snapshot, whichever arrived last"
    assert tree["run"] == (total, total, 0, 0, 0)
    root = next(r for r in tree["rows"] if r[4] is None)
    assert root[1] == "nightly" and root[5:] == (total - 1, 0, 0, 0)
