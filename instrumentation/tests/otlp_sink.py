"""A test double of the network peer: a tiny OTLP/HTTP receiver that keeps every span record.

Used by the unit-level tests that need a real exporter on a real socket; the end-to-end tests use
a real ``tasktree serve`` instead.  ``mode`` makes it answer 503 (``"down"``) or stall
(``"slow"``) to play an unavailable sink.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LIVE_ATTRIBUTE, LIVE_VALUE = "tasktree.state", "running"
STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass(frozen=True)
class Record:
    """One received span record, decoded."""

    trace_id: str
    span_id: str
    parent: str | None
    name: str
    status: str  # unset / ok / error
    status_message: str
    start_ns: int
    end_ns: int
    attributes: dict = field(hash=False, compare=False)
    resource: dict = field(hash=False, compare=False)
    events: list = field(hash=False, compare=False)

    @property
    def running(self) -> bool:
        return self.attributes.get(LIVE_ATTRIBUTE) == LIVE_VALUE


def decode(body: bytes) -> list[Record]:
    request = ExportTraceServiceRequest.FromString(body)
    records = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                records.append(
                    Record(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent=span.parent_span_id.hex() or None,
                        name=span.name,
                        status=STATUS_NAMES[span.status.code],
                        status_message=span.status.message,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource,
                        events=[
                            (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in span.events
                        ],
                    )
                )
    return records


class OTLPSink:
    """``with OTLPSink() as sink:`` → ``sink.endpoint`` for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.requests = 0
        self.mode = "up"  # "up" | "down" (503) | "slow" (holds each request 2 s, then 503)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with sink._lock:
                    sink.requests += 1
                    mode = sink.mode
                if mode == "slow":
                    time.sleep(2)
                if mode != "up":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                records = decode(body)
                with sink._changed:
                    sink.records.extend(records)
                    sink._changed.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OTLPSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def wait_for(self, predicate, timeout: float = 20.0) -> list[Record]:
        """Waits until ``predicate(records)``; returns the records (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.records):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(r.name, r.status, r.running) for r in self.records})
                    raise AssertionError(f"condition not met in {timeout}s; received {names}")
                self._changed.wait(remaining)
            return list(self.records)

    def finals(self) -> list[Record]:
        return [r for r in self.snapshot() if not r.running]
