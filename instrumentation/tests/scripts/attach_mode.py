"""An application that set OpenTelemetry up itself, then calls configure(): tasktree only adds
running snapshots.  Prints {"same_provider", "app_finals"}."""

import json
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tasktree.instrumentation import configure, task

if __name__ == "__main__":
    provider = TracerProvider()
    app_exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(app_exporter))
    trace.set_tracer_provider(provider)
    same = configure() is provider
    with task("attached"):
        time.sleep(0.6)
    print(
        json.dumps(
            {
                "same_provider": same,
                "app_finals": [s.name for s in app_exporter.get_finished_spans()],
            }
        )
    )
