"""Folding a very deep chain of tasks (issue 7, "abuse"): parent → child → … ``--depth`` levels.

    .venv/bin/python bench/deep_tree.py [--depth 100000] [--order in|random|reverse]
        [--batch 512] [--fold-limit 10000] [--max-depth 1000] [--max-seconds 600]

Creates a scratch database (migrated, dropped at the end), lands the chain through
``store.landing.land`` in requests of ``--batch`` spans (in the given order), folds everything
with ``store.fold.fold_batch`` as the service's folder does, and prints the time to land, the
time to fold (and spans/s), how many folds ran, and what the tree looks like afterwards (tasks,
top-level tasks, refused links, the root's rollup).  The
fold gives up after ``--max-seconds`` (the "before" figure of an O(n²) fold is a lower bound).
Not collected by pytest.  ``--max-depth`` is the depth limit (``TASKTREE_MAX_DEPTH``).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time

import psycopg
from scratch import scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.receiver.records import Resource, SpanRow
from tasktree.exporter.store.fold import fold_batch
from tasktree.exporter.store.landing import ResourceIds, land
from tasktree.exporter.store.migrate import migrate
from tasktree.exporter.tree.fold import DEFAULT_MAX_DEPTH

TRACE = bytes.fromhex("de3bde3bde3bde3bde3bde3bde3bde3b")
BASE_NS = 1_795_000_000_000_000_000
_ATTRS = '{"service.name":"deep-bench"}'
RESOURCE = Resource(hashlib.sha256(_ATTRS.encode()).digest(), "deep-bench", _ATTRS)


def chain(depth: int) -> list[SpanRow]:
    """Task i's parent is task i-1; task 0 is the root.  Span ids are 8-byte big-endian i+1."""
    rows = []
    for i in range(depth):
        parent = i.to_bytes(8, "big") if i else None
        rows.append(SpanRow(TRACE, (i + 1).to_bytes(8, "big"), parent, f"level {i}", 1,
                            BASE_NS + i, BASE_NS + 2 * depth - i, None, 3, "", RESOURCE, "bench",
                            "{}", "[]", "[]"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--order", choices=("in", "random", "reverse"), default="in")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--fold-limit", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH)
    args = parser.parse_args()

    rows = chain(args.depth)
    if args.order == "random":
        random.Random(args.seed).shuffle(rows)
    elif args.order == "reverse":
        rows.reverse()

    with scratch_database("tasktree_bench_deep") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            ids = ResourceIds()
            for i in range(0, len(rows), args.batch):
                land(conn, rows[i:i + args.batch], ids, time.time_ns())
            landed = time.perf_counter() - t0

            t0, folds, folded, gave_up = time.perf_counter(), 0, 0, False
            while True:
                n = fold_batch(conn, limit=args.fold_limit, stall_after_s=3600,
                               max_depth=args.max_depth).records
                if not n:
                    break
                folds, folded = folds + 1, folded + n
                elapsed = time.perf_counter() - t0
                print(f"  fold {folds}: {n} records, {folded} in {elapsed:.1f} s", flush=True)
                if elapsed > args.max_seconds:
                    gave_up = True
                    break
            fold_s = time.perf_counter() - t0
            report(conn, args, landed, fold_s, folds, folded, gave_up)


def report(conn, args, landed: float, fold_s: float, folds: int, folded: int,
           gave_up: bool) -> None:
    tasks, tops, missing, refused = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE parent_span_id IS NULL),"
        " count(*) FILTER (WHERE missing), count(*) FILTER (WHERE refused_parent_span_id"
        " IS NOT NULL) FROM tasks WHERE trace_id = %s", (TRACE,)).fetchone()
    (below_root,) = conn.execute(
        "SELECT n_ok + n_error + n_running + n_stalled FROM tasks WHERE trace_id = %s"
        " AND span_id = %s", (TRACE, (1).to_bytes(8, "big"))).fetchone()
    print(f"depth {args.depth}, order {args.order}, requests of {args.batch} spans, "
          f"fold limit {args.fold_limit}, max depth {args.max_depth}")
    print(f"land: {landed:.1f} s ({args.depth / landed:,.0f} spans/s)")
    verdict = f"GAVE UP after {folded:,} records" if gave_up else f"{folded:,} records"
    print(f"fold: {fold_s:.1f} s in {folds} folds, {verdict} ({folded / fold_s:,.0f} spans/s)")
    print(f"tree: {tasks:,} tasks, {tops:,} top-level, {missing:,} placeholders, {refused:,} "
          f"refused links; the root's rollup covers {below_root:,} descendants")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
