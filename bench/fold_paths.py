"""The fold's cost for running and failed tasks, whose paths it keeps (issue 15, migration 0012).

    .venv/bin/python bench/fold_paths.py [--runs 30] [--repeat 3]

``--runs`` runs of 1,000 tasks (fan-out 10) on a scratch database, landed through
``store.landing.land`` (untimed) and folded lane by lane with ``store.fold.fold_batch`` as one
folder thread does, in two timed phases, as a job decorated with ``@task`` sends them:

1. every task's running snapshot, parents first (each a new running task: its path is written);
2. every task's final record, shuffled, 2 % of them errors (a task already running: no write).

Prints folded spans/s and PostgreSQL CPU per span of each phase (from /proc, Linux only), median
of ``--repeat``, beside a bare binary COPY of as many rows into an unindexed table (the
reference, same run).  Ok-only traffic (``bench/ingest.py``, ``bench/fold.py``) writes no path.
Compare two versions of the code by running this with ``PYTHONPATH`` set to each checkout.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg
from ingest import bare_copy_rate, cpu_seconds, tree_run
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from scratch import scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.receiver.decode import Limits, decode_protobuf
from tasktree.exporter.store.fold import fold_batch, lanes_with_records
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.store.migrate import migrate
from tasktree.instrumentation.snapshot import LIVE_ATTRIBUTE

BATCH = 512
ERROR = Status(code=Status.STATUS_CODE_ERROR, message="boom")


def attributes(**kv: object) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=str(v))) for k, v in kv.items()]


def encode(spans: list[tuple], now: int, *, running: bool, failed: set[bytes]) -> list[bytes]:
    """Requests of running snapshots, or of final records (``failed`` span ids as errors)."""
    bodies = []
    for at in range(0, len(spans), BATCH):
        scope = ScopeSpans()
        for k, (trace, span_id, parent) in enumerate(spans[at:at + BATCH]):
            attrs = attributes(item=k, **({LIVE_ATTRIBUTE: "running"} if running else {}))
            span = Span(trace_id=trace, span_id=span_id, parent_span_id=parent,
                        name=f"task-{k % 50}", kind=Span.SPAN_KIND_INTERNAL,
                        start_time_unix_nano=now + k,
                        end_time_unix_nano=now + k + (10 if running else 1_000_000),
                        attributes=attrs)
            if not running and span_id in failed:
                span.status.CopyFrom(ERROR)
            scope.spans.append(span)
        resource_spans = ResourceSpans(scope_spans=[scope])
        resource_spans.resource.attributes.extend(attributes(**{"service.name": "bench-job"}))
        bodies.append(ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString())
    return bodies


def phase(conn: psycopg.Connection, database: str, bodies: list[bytes], n: int
          ) -> tuple[float, float]:
    """Land ``bodies``, then fold them all; (spans/s, PostgreSQL CPU µs per span) of the folds."""
    resources = ResourceIds()
    for body in bodies:
        land(conn, decode_protobuf(body, Limits(256 * 1024)).spans, resources, time.time_ns())
    cpu_before, started = cpu_seconds(-1, database)[1], time.perf_counter()
    while busy := lanes_with_records(conn):
        for lane in sorted(busy):
            fold_batch(conn, limit=10_000, stall_after_s=3600, lane=lane)
    seconds = time.perf_counter() - started
    return n / seconds, 1e6 * (cpu_seconds(-1, database)[1] - cpu_before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snapshots, finals = [], []
    with scratch_database("tasktree_bench_paths") as url:
        migrate(url)
        database = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(args.repeat):
                conn.execute("TRUNCATE tasks, runs, span_landing")
                spans = [s for _ in range(args.runs) for s in tree_run(1_000)]
                failed = {s[1] for s in random.sample(spans, len(spans) // 50)}
                now = time.time_ns()
                bodies = encode(spans, now, running=True, failed=failed)
                snapshots.append(phase(conn, database, bodies, len(spans)))
                random.shuffle(spans)
                bodies = encode(spans, now, running=False, failed=failed)
                finals.append(phase(conn, database, bodies, len(spans)))
        reference = statistics.median(bare_copy_rate(url, spans) for _ in range(3))
    print(f"{args.runs} runs x 1,000 tasks, median of {args.repeat}; "
          f"bare COPY {reference:,.0f} rows/s")
    for name, rounds in (("running snapshots", snapshots), ("final records, 2 % errors", finals)):
        rate = statistics.median(r for r, _ in rounds)
        print(f"  {name:26} folded {rate:8,.0f} spans/s (ratio {rate / reference:.3f}), "
              f"PostgreSQL CPU {statistics.median(c for _, c in rounds):5.1f} µs/span")


if __name__ == "__main__":
    main()
