"""Every pull and deploy is itself a tasktree run: job ``tasktree.docker``, one child task per host.

The standard way: the OpenTelemetry SDK in this process, with its own ``TracerProvider`` (the
global one is left alone) and an OTLP/HTTP exporter pointed at this server's own OTLP/HTTP port
(with a bearer token of its own that the server makes at start and its receivers accept: no
configured ingest token is this process's to use).  So the run goes through the same receiver,
limits and store as any job's.  ``flush()`` at the end of each operation makes it show at once.
Before ``connect()`` (or without a server) spans get ids, for ``TRACEPARENT``, but go nowhere.
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

logger = logging.getLogger(__name__)

JOB = "tasktree.docker"


class DockerTracing:
    def __init__(self):
        self.provider = TracerProvider(resource=Resource.create({"service.name": JOB}))
        self.tracer = self.provider.get_tracer("tasktree.exporter.docker")
        self._connected = False

    def connect(self, endpoint: str, token: str | None = None) -> None:
        """Export to ``endpoint`` (``http://host:port/v1/traces``) from now on."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = {"Authorization": f"Bearer {token}"} if token else None
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self._connected = True

    def flush(self, timeout_s: float = 5.0) -> None:
        if self._connected:
            self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` of ``span``, for a child process's ``TRACEPARENT``."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def ids(span: Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def fail(span: Span, exc: BaseException | None, message: str) -> None:
    """Mark ``span`` as failed with ``message`` (and an ``exception`` event, when there is one).

    Only the short, checked ``message`` is recorded, not the exception's text or stack: a docker
    error may quote the request it refused, and requests can hold secrets.
    """
    if exc is not None:
        span.add_event(
            "exception", {"exception.type": type(exc).__name__, "exception.message": message}
        )
    span.set_status(Status(StatusCode.ERROR, message))
