"""What one small export request costs the sink: the fixed part of ingest's CPU (issues 12, 16).

    .venv/bin/python bench/request_cost.py [--sizes 1 30 300] [--requests 60] [--gap 0.25]
                                           [--past-days 365 --settle 60]

Jobs export every second or so (the SDK's batch processor), so a sink mostly receives small
requests, each followed by a small fold; a Celery or Dask worker's pool process sends one such
request a second.  On a scratch database with a real ``tasktree serve``, for each size: requests
of that many spans of one flat run, one at a time, ``--gap`` seconds apart, until every span is
folded.  Printed per request: the CPU of the server's process and of its PostgreSQL backends (from
/proc, Linux only), less what the same server spends idle over the same time (measured first, in
the same run: the folder's probes and the once-a-second sweep).  Then a straight line through the
sizes: the **fixed cost of a request** (its intercept) and the cost of each further span (its
slope), beside the reference: CPU per span of the same spans sent at once as 512-span requests by
4 clients.  Last, the smallest requests once more, measured with nothing else touching the
database: the transactions committed in it (``pg_stat_database``) per request, and the CPU per
request with the idle work left in (what a service that receives nothing else spends at that
rate).  ``--past-days``: the database holds that many earlier days' partitions of ``tasks``
already, as one kept that long does; ``--settle``: the service idles that long after its warm-up
(PostgreSQL plans the stall sweep for its values at its first five runs on each connection).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from ingest import (  # bench/ingest.py: the script's folder
    cpu_per_span,
    cpu_seconds,
    cpu_until_folded,
    encode,
    flat_run,
    send_all,
    send_one_at_a_time,
    start_ingest_server,
    wait_folded,
)
from scratch import ADMIN, add_past_days, scratch_database

_WARM_UP_REQUESTS = 200


def transactions(database: str) -> int:
    """Transactions committed in ``database`` so far.  A backend reports its own at most once a
    second, after a transaction: so first a wait a little longer than that."""
    time.sleep(1.2)
    with psycopg.connect(ADMIN, autocommit=True) as conn:  # not a transaction in ``database``
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def transactions_and_cost(pid: int, database: str, send) -> tuple[float, float, float, float]:
    """(transactions, server CPU seconds, PostgreSQL CPU seconds, seconds) of ``send()`` and the
    folds after it, everything the service did meanwhile included."""
    xacts, cpu, started = transactions(database), cpu_seconds(pid, database), time.monotonic()
    send()
    time.sleep(1.0)  # the last request's fold: polling for it would be transactions too
    xacts = transactions(database) - xacts
    elapsed = time.monotonic() - started
    server, postgres = (b - a for a, b in zip(cpu, cpu_seconds(pid, database), strict=True))
    return xacts, server, postgres, elapsed


def request_cost(url: str, port: int, pid: int, size: int, requests: int, gap_s: float,
                 idle_per_s: tuple[float, float]) -> tuple[float, float]:
    """(server, PostgreSQL) CPU ms per request of ``size`` spans, idle cost taken off."""
    spans = flat_run(size * requests)
    bodies = encode(spans, size)
    server, postgres, elapsed = cpu_until_folded(
        lambda: send_one_at_a_time(port, bodies, gap_s), spans, url, pid)
    idle_server, idle_postgres = (idle * elapsed for idle in idle_per_s)
    return 1e3 * (server - idle_server) / requests, 1e3 * (postgres - idle_postgres) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 30, 300])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between two requests")
    parser.add_argument("--past-days", type=int, default=0,
                        help="day partitions of earlier days the database holds already")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds the service runs idle after the warm-up")
    args = parser.parse_args()
    with scratch_database("tasktree_request_cost") as url:
        if args.past_days:
            add_past_days(url, args.past_days)
        proc, port = start_ingest_server(url, 1)
        try:
            measure(url, port, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait()


def measure(url: str, port: int, pid: int, args: argparse.Namespace) -> None:
    database = url.rsplit("/", 1)[1]
    # Warm: partitions, the pool, and prepared statements.  psycopg prepares a statement on its
    # fifth execution on a connection, and the pool lends its connections in turn: a service
    # that has run for a while has made each of them that many folds.
    send_one_at_a_time(port, encode(flat_run(_WARM_UP_REQUESTS * 3), 3), 0.02)
    wait_folded(url, _WARM_UP_REQUESTS * 3)
    time.sleep(args.settle)
    idle_xacts, *idle_cpu, idle_s = transactions_and_cost(pid, database, lambda: time.sleep(10.0))
    idle = (idle_cpu[0] / idle_s, idle_cpu[1] / idle_s)  # CPU seconds a second
    idle_rate = idle_xacts / idle_s
    print(f"idle: server {1e3 * idle[0]:.1f} ms, PostgreSQL {1e3 * idle[1]:.1f} ms of CPU and"
          f" {idle_rate:.1f} transactions a second, taken off below")
    costs = []
    for size in args.sizes:
        server, postgres = request_cost(url, port, pid, size, args.requests, args.gap, idle)
        costs.append(server + postgres)
        print(f"requests of {size:5d} spans: server {server:6.2f} ms, PostgreSQL {postgres:6.2f} ms"
              f" a request ({1e3 * (server + postgres) / size:8.1f} µs a span)")
    smallest = min(args.sizes)
    bodies = encode(flat_run(smallest * args.requests), smallest)
    xacts, server, postgres, elapsed = transactions_and_cost(
        pid, database, lambda: send_one_at_a_time(port, bodies, args.gap))
    print(f"requests of {smallest} spans again: {xacts / args.requests:.1f} transactions a request"
          f" ({(xacts - idle_rate * elapsed) / args.requests:.1f} with the idle ones taken off);"
          f" with the idle work, server {1e3 * server / args.requests:.2f} ms,"
          f" PostgreSQL {1e3 * postgres / args.requests:.2f} ms a request")
    bulk = flat_run(max(args.sizes) * args.requests)
    reference = cpu_per_span(lambda: send_all(port, encode(bulk), 4), bulk, url, pid)
    print(f"sent at once (the reference): {reference:.1f} µs a span")
    if len(args.sizes) > 1:
        slope, intercept = statistics.linear_regression(args.sizes, costs)
        print(f"fixed cost of a request: {intercept:.2f} ms, as much as"
              f" {1e3 * intercept / reference:,.0f} spans sent at once; each further span"
              f" {1e3 * slope:.1f} µs")


if __name__ == "__main__":
    main()
