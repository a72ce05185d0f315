"""Cost of one ``@task`` call against a bare ``tracer.start_as_current_span``, same set-up.

    .venv/bin/python bench/instrumentation.py [calls-per-round]

Both go through the same SDK TracerProvider made by ``configure()`` (its LiveSpanProcessor with
an exporter that discards), interleaved in rounds; the best round of each is compared.
Target (issue 3): at most 1.5x.
"""

from __future__ import annotations

import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tasktree.instrumentation import configure, task


class Discard(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def main(calls: int = 20_000, rounds: int = 7) -> None:
    configure(exporter=Discard(), snapshot_delay=60)
    tracer = trace.get_tracer("bench")

    def bare():
        for _ in range(calls):
            with tracer.start_as_current_span("bare"):
                pass

    @task(name="decorated")
    def decorated():
        pass

    def tasks():
        for _ in range(calls):
            decorated()

    def blocks():
        for _ in range(calls):
            with task("block"):
                pass

    best = {"bare start_as_current_span": [], "@task function": [], "with task(...)": []}
    for _ in range(rounds):
        for runs, run in zip(best.values(), (bare, tasks, blocks), strict=True):
            started = time.perf_counter()
            run()
            runs.append((time.perf_counter() - started) / calls * 1e6)
    base = min(best["bare start_as_current_span"])
    for label, runs in best.items():
        print(f"{label:28s} {min(runs):6.2f} us/call  {min(runs) / base:4.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
