"""The demo's sample job: an ETL run of a few thousand tasks in several levels, with failures.

Sent with the plain OpenTelemetry SDK, as any job in any language would.
"""

from __future__ import annotations

import random
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), max_queue_size=20000))
    tracer = provider.get_tracer("tasktree.demo")
    rng = random.Random(7)
    with tracer.start_as_current_span("nightly-etl", attributes={"run.kind": "nightly"}):
        for stage, width, depth in (("extract", 10, 50), ("transform", 10, 100), ("load", 10, 100)):
            with tracer.start_as_current_span(stage):
                for part in range(width):
                    with tracer.start_as_current_span(f"{stage}-partition", attributes={"partition": part}):
                        for item in range(depth):
                            _leaf(tracer, rng, stage, part, item)
    provider.shutdown()


def _leaf(tracer, rng, stage: str, part: int, item: int) -> None:
    with tracer.start_as_current_span(f"{stage}-chunk", attributes={"chunk": item}) as span:
        time.sleep(0)
        if stage == "transform" and rng.random() < 0.002:
            span.set_status(Status(StatusCode.ERROR, f"chunk {item} of partition {part}: bad record"))
            span.add_event("exception", {"exception.type": "ValueError",
                                         "exception.message": "bad record",
                                         "exception.stacktrace": "Traceback ...\nValueError: bad record"})


if __name__ == "__main__":
    main()
