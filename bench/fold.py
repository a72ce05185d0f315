"""The fold alone: landed spans → task tree, without HTTP or concurrent requests.

    .venv/bin/python bench/fold.py [--shape flat|runs] [--runs 30] [--chunk 0] [--repeat 5]

Creates a scratch database, lands shuffled spans through ``store.landing.land`` (untimed), and
folds them lane by lane with ``store.fold.fold_batch`` as one folder thread does, timing only
the folds: spans/s, and PostgreSQL CPU per span (from /proc, Linux only), median of
``--repeat`` rounds.  ``--shape flat``: one run of 20,000 tasks; ``runs``: ``--runs`` runs of
1,000 (fan-out 10), interleaved.  ``--chunk N`` lands N spans between fold passes instead of all
of them first (the end-to-end benchmark's folds see a few thousand records a lane at a time).
Reference, same run: a bare binary COPY of as many rows into an unindexed table (median
of 3).
Not collected by pytest; where a change's effect on the fold is smaller than ``ingest.py``'s
run-to-run swing, this is how it was measured (bench/README.md).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg
from ingest import bare_copy_rate, cpu_seconds, encode, flat_run, tree_run
from scratch import scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.receiver.decode import Limits, decode_protobuf
from tasktree.exporter.store.fold import fold_batch, lanes_with_records
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.store.migrate import migrate


def one_round(conn: psycopg.Connection, database: str, spans: list[tuple], chunk: int
              ) -> tuple[float, float]:
    """Land and fold ``spans``; returns (spans/s, PostgreSQL CPU µs per span) of the folds."""
    conn.execute("TRUNCATE tasks, runs, span_landing")
    requests = [decode_protobuf(body, Limits(256 * 1024)).spans for body in encode(spans)]
    per_pass = max(1, chunk // len(requests[0])) if chunk else len(requests)
    resources, seconds, cpu = ResourceIds(), 0.0, 0.0
    for at in range(0, len(requests), per_pass):
        for request in requests[at:at + per_pass]:
            land(conn, request, resources, time.time_ns())
        cpu_before, start = cpu_seconds(-1, database)[1], time.perf_counter()
        while busy := lanes_with_records(conn):
            for lane in sorted(busy):
                fold_batch(conn, limit=10_000, stall_after_s=3600, lane=lane)
        seconds += time.perf_counter() - start
        cpu += cpu_seconds(-1, database)[1] - cpu_before
    return len(spans) / seconds, 1e6 * cpu / len(spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["flat", "runs"], default="flat")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with scratch_database("tasktree_bench") as url:
        migrate(url)
        database = url.rsplit("/", 1)[1]
        with psycopg.connect(url, autocommit=True) as conn:
            rounds = []
            for _ in range(args.repeat):
                spans = (flat_run(20_000) if args.shape == "flat"
                         else [s for _ in range(args.runs) for s in tree_run(1_000)])
                random.shuffle(spans)
                rounds.append(one_round(conn, database, spans, args.chunk))
        reference = statistics.median(bare_copy_rate(url, spans) for _ in range(3))
    rate = statistics.median(r for r, _ in rounds)
    what = "1 run x 20,000 flat" if args.shape == "flat" else f"{args.runs} runs x 1,000"
    print(f"{what}, chunk {args.chunk or 'all'}: folded {rate:,.0f} spans/s "
          f"(median of {args.repeat}), PostgreSQL CPU "
          f"{statistics.median(c for _, c in rounds):.1f} µs/span;  bare COPY {reference:,.0f} "
          f"rows/s, ratio {rate / reference:.3f}")


if __name__ == "__main__":
    main()
