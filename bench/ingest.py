"""Ingest throughput, end to end: OTLP/HTTP requests → durably stored → folded into the tree.

    .venv/bin/python bench/ingest.py [--clients 4] [--workers 1] [--repeat 1]

Starts a real ``tasktree serve`` on a scratch database, sends pre-encoded protobuf requests of
512 spans from several concurrent clients, and reports spans per second until every span is in
the tree, for (a) one run of 20,000 flat tasks, (b) 100 runs of 1,000 tasks (depth 3, fan-out
10), interleaved, (b') both of them sent together, shuffled ("mixed": real traffic is flat and
many runs at once), (c) with ``--big-run N`` one flat run of N tasks (issue 16: one big run must
fold as fast as many small ones), and (d) with ``--small-runs N``, N one-span runs in requests
of 5,000 (a day of many small jobs: issue 18), printing the rate of each tenth of the day too,
which must stay flat from the first batch of the day to the last, and (e) with ``--trickle N``,
N spans as requests of 100, ten a second (jobs exporting every second), whose CPU per span is
set against the same spans sent at once.  Beside it, the same number of
span-like rows bare-COPYed into an unindexed table in the same run, and the ratio (the machine is
shared: compare ratios, not seconds).
Target (issue 16): ≥ 60,000 spans/s end to end, ratio to bare COPY ≥ 0.07, CPU per span
(server + PostgreSQL) ≤ 25 µs.

Also the CPU time per span of the server's processes and of the database's PostgreSQL backends
(from /proc, Linux only), which is steadier than seconds on a shared machine: two cores at
30,000 spans/s leave 66 µs of CPU per span for everything; and the WAL bytes written per span
(the server's whole WAL: on a shared server this counts other databases' writes too).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import threading
import time

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from scratch import scratch_database, start_server  # bench/scratch.py: the script's folder

BATCH = 512
SMALL_RUNS_BATCH = 5_000  # spans per request in the many-small-runs scenario


def _attrs(**kv) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=str(v))) for k, v in kv.items()]


def flat_run(n: int) -> list[tuple]:
    """(trace_id, span_id, parent) of one run: a root and n-1 children."""
    trace = os.urandom(16)
    root = os.urandom(8)
    return [(trace, root, b"")] + [(trace, os.urandom(8), root) for _ in range(n - 1)]


def tree_run(n: int, fanout: int = 10) -> list[tuple]:
    """(trace_id, span_id, parent) of one run of n tasks, breadth first with the given fan-out."""
    trace = os.urandom(16)
    spans = [(trace, os.urandom(8), b"")]
    i = 0
    while len(spans) < n:
        parent = spans[i][1]
        for _ in range(min(fanout, n - len(spans))):
            spans.append((trace, os.urandom(8), parent))
        i += 1
    return spans


def many_runs(n: int, size: int = 1_000) -> list[tuple]:
    """n runs of ``size`` tasks (fan-out 10)."""
    return [s for _ in range(n) for s in tree_run(size)]


def small_runs(n: int) -> list[tuple]:
    """n runs of one task each (random trace ids)."""
    return [(os.urandom(16), os.urandom(8), b"") for _ in range(n)]


def encode(spans: list[tuple], batch: int = BATCH) -> list[bytes]:
    """Protobuf request bodies of ``batch`` spans each, as an SDK exporter would send them."""
    bodies, now = [], time.time_ns()
    for at in range(0, len(spans), batch):
        scope = ScopeSpans()
        for k, (trace, span_id, parent) in enumerate(spans[at:at + batch]):
            scope.spans.append(Span(
                trace_id=trace, span_id=span_id, parent_span_id=parent, name=f"task-{k % 50}",
                kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=now + k,
                end_time_unix_nano=now + k + 1_000_000,
                attributes=_attrs(**{"item": k, "partition": k % 7, "host.name": "bench-host"}),
            ))
        rs = ResourceSpans(scope_spans=[scope])
        rs.resource.attributes.extend(_attrs(**{"service.name": "bench-job"}))
        bodies.append(ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString())
    return bodies


def send_all(port: int, bodies: list[bytes], clients: int) -> None:
    queue = list(reversed(bodies))
    lock = threading.Lock()
    errors = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            while True:
                conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    break
                if resp.status not in (429, 503):
                    errors.append(resp.status)
                    return
                time.sleep(float(resp.getheader("Retry-After", "1")))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"requests failed: {errors[:5]}")


_OWN_BACKENDS: set[int] = set()  # PostgreSQL backends of this script, not of the server


def own_connection(url: str) -> psycopg.Connection:
    """A connection of this script's own: ``cpu_seconds`` leaves its backend out (a backend
    that has just emptied a table, still exiting when CPU is read, made figures negative)."""
    conn = psycopg.connect(url, autocommit=True)
    _OWN_BACKENDS.add(conn.info.backend_pid)
    return conn


def wait_folded(url: str, expected_tasks: int) -> None:
    with own_connection(url) as conn:
        while True:
            # min(id) walks the primary key, which skips the folded (deleted) records; a plain
            # EXISTS would read them all in the heap, 50 times a second (no vacuum here), and
            # that PostgreSQL time would be counted as the server's.
            landed = conn.execute("SELECT min(id) FROM span_landing").fetchone()[0] is not None
            if not landed:  # the sum reads every run: only once the landing is empty
                total = conn.execute("SELECT coalesce(sum(task_count), 0) FROM runs").fetchone()[0]
                if total >= expected_tasks:
                    return
            time.sleep(0.02)


class RunsSampler(threading.Thread):
    """Samples (seconds, runs in the tree) four times a second until stopped: for one-span runs,
    the tasks folded so far."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.stop = url, [], threading.Event()
        self.start_time = time.perf_counter()
        self.done_at = 0.0  # seconds from the start to the last span folded (set by the caller)

    def run(self) -> None:
        with own_connection(self.url) as conn:
            while not self.stop.wait(0.25):
                n = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
                self.samples.append((time.perf_counter() - self.start_time, n))

    def tenths(self, total: int) -> list[float]:
        """Folded spans/s over each tenth of ``total``, from the samples (interpolated)."""
        points = sorted([(0.0, 0), *self.samples, (self.done_at, total)])
        def time_at(n: int) -> float:
            for (t0, n0), (t1, n1) in zip(points, points[1:], strict=False):
                if n1 >= n:
                    return t0 + (t1 - t0) * (n - n0) / max(n1 - n0, 1)
            return points[-1][0]
        marks = [time_at(total * k // 10) for k in range(11)]
        return [total / 10 / max(b - a, 1e-9) for a, b in zip(marks, marks[1:], strict=False)]


def bare_copy_rate(url: str, spans: list[tuple]) -> float:
    """Rows/s of a bare binary COPY of span-like rows into an unindexed table (the reference)."""
    attrs = json.dumps({"item": "1", "partition": "1", "host.name": "bench-host"})
    with own_connection(url) as conn:
        conn.execute("CREATE UNLOGGED TABLE IF NOT EXISTS bare (trace_id bytea, span_id bytea,"
                     " parent bytea, name text, start_ns bigint, end_ns bigint, attributes text)")
        conn.execute("TRUNCATE bare")
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(
                "COPY bare FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["bytea", "bytea", "bytea", "text", "int8", "int8", "text"])
            for trace, span_id, parent in spans:
                copy.write_row((trace, span_id, parent or None, "task", 1, 2, attrs))
        return len(spans) / (time.perf_counter() - t0)


def start_ingest_server(url: str, workers: int) -> tuple[subprocess.Popen, int]:
    """``tasktree serve`` with ``workers``; returns it and its OTLP/HTTP port."""
    proc, urls = start_server(url, "--workers", str(workers))
    return proc, int(urls["otlp_http"].rsplit(":", 1)[1].split("/")[0])


def cpu_seconds(server_pid: int, database: str) -> tuple[float, float]:
    """(CPU seconds of the server and its child processes, of PostgreSQL backends serving
    ``database``) so far; (0, 0) where /proc is not there."""
    server = postgres = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid) == server_pid or int(fields[1]) == server_pid:  # itself or a --workers child
            server += used
        elif (title.startswith("postgres:") and f" {database} " in title
              and int(pid) not in _OWN_BACKENDS):
            postgres += used
    return server, postgres


def wal_position(url: str) -> int:
    """Bytes of WAL the server has written so far (all databases)."""
    with own_connection(url) as conn:
        return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def scenario(name: str, spans: list[tuple], url: str, port: int, clients: int,
             server_pid: int, batch: int = BATCH, sample: bool = False) -> float:
    """Send ``spans`` and wait until they are folded; prints and returns spans/s end to end.
    ``sample``: also print the rate of each tenth (one-span runs only)."""
    random.shuffle(spans)  # children usually arrive before their parents; any order must work
    bodies = encode(spans, batch)
    database = url.rsplit("/", 1)[1]
    with own_connection(url) as conn:
        conn.execute("TRUNCATE tasks, runs, span_landing")
    cpu_before = cpu_seconds(server_pid, database)
    wal_before = wal_position(url)
    sampler = RunsSampler(url)
    start = time.perf_counter()
    if sample:
        sampler.start()
    send_all(port, bodies, clients)
    acked = time.perf_counter()
    wait_folded(url, len(spans))
    done = time.perf_counter()
    sampler.stop.set()
    sampler.done_at = done - start
    wal_bytes = wal_position(url) - wal_before
    server_s, postgres_s = (b - a for a, b in zip(cpu_before, cpu_seconds(server_pid, database),
                                                   strict=True))
    e2e = len(spans) / (done - start)
    reference = bare_copy_rate(url, spans)
    print(f"{name:34s} {len(spans):>7} spans  stored {len(spans) / (acked - start):>9,.0f}/s  "
          f"stored+folded {e2e:>9,.0f}/s   bare COPY {reference:>9,.0f} rows/s   "
          f"ratio {e2e / reference:.3f}")
    print(f"{'':34s} CPU per span: server {1e6 * server_s / len(spans):5.1f} µs, "
          f"PostgreSQL {1e6 * postgres_s / len(spans):5.1f} µs, together "
          f"{1e6 * (server_s + postgres_s) / len(spans):5.1f} µs; "
          f"WAL {wal_bytes / len(spans):,.0f} bytes")
    if sample:
        sampler.join()
        print(f"{'':34s} each tenth of the day, spans/s: "
              + " ".join(f"{r:,.0f}" for r in sampler.tenths(len(spans))))
    return e2e


TRICKLE_BATCH = 100  # spans per request in the trickle scenario
TRICKLE_GAP_S = 0.1  # between its requests: ten a second, as ten jobs exporting every second


def cpu_until_folded(send, spans: list[tuple], url: str, server_pid: int
                     ) -> tuple[float, float, float]:
    """On emptied tables: CPU seconds of the server and of PostgreSQL, and wall seconds, from
    ``send()`` until all ``spans`` are folded."""
    database = url.rsplit("/", 1)[1]
    with own_connection(url) as conn:
        conn.execute("TRUNCATE tasks, runs, span_landing")
    before, started = cpu_seconds(server_pid, database), time.perf_counter()
    send()
    wait_folded(url, len(spans))
    after, elapsed = cpu_seconds(server_pid, database), time.perf_counter() - started
    return after[0] - before[0], after[1] - before[1], elapsed


def cpu_per_span(send, spans: list[tuple], url: str, server_pid: int) -> float:
    """µs of CPU (server and PostgreSQL together) per span of ``send()`` until all are folded."""
    server, postgres, _ = cpu_until_folded(send, spans, url, server_pid)
    return 1e6 * (server + postgres) / len(spans)


def send_one_at_a_time(port: int, bodies: list[bytes], gap_s: float) -> None:
    """Each request after the answer to the one before, ``gap_s`` seconds apart."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in bodies:
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"request failed: {answer.status}")
        time.sleep(gap_s)


def trickle(n: int, url: str, port: int, server_pid: int) -> None:
    """n spans of 10 flat runs as small requests, one after another (what jobs that export every
    second send: each fold is small, so the fixed costs of a request and a fold dominate), and
    the same spans sent at once by 4 clients as the reference: CPU per span of each, and their
    ratio."""
    spans = [s for _ in range(10) for s in flat_run(n // 10)]
    random.shuffle(spans)
    small, large = encode(spans, TRICKLE_BATCH), encode(spans, BATCH)

    trickled = cpu_per_span(lambda: send_one_at_a_time(port, small, TRICKLE_GAP_S), spans, url,
                            server_pid)
    at_once = cpu_per_span(lambda: send_all(port, large, 4), spans, url, server_pid)
    print(f"{f'trickle: {TRICKLE_BATCH}-span requests':34s} {len(spans):>7} spans  CPU per span "
          f"(server + PostgreSQL) {trickled:6.1f} µs; sent at once {at_once:6.1f} µs; "
          f"ratio {trickled / at_once:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario this many times and print the median too")
    parser.add_argument("--small-runs", type=int, default=0, metavar="N",
                        help="also N one-span runs in requests of 5,000 (e.g. 100000)")
    parser.add_argument("--big-run", type=int, default=0, metavar="N",
                        help="also one flat run of N tasks (e.g. 1000000)")
    parser.add_argument("--only-small-runs", action="store_true",
                        help="run the --small-runs scenario alone")
    parser.add_argument("--trickle", type=int, default=0, metavar="N",
                        help=f"also N spans as {TRICKLE_BATCH}-span requests, ten a second, and"
                             " their CPU per span against the same sent at once (e.g. 4000)")
    parser.add_argument("--only-trickle", action="store_true",
                        help="run the --trickle scenario alone")
    args = parser.parse_args()
    with scratch_database("tasktree_bench") as url:
        run_scenarios(url, args)


def run_scenarios(url: str, args: argparse.Namespace) -> None:
    proc, port = start_ingest_server(url, args.workers)
    try:
        print(f"clients={args.clients} workers={args.workers} batch={BATCH} spans/request")
        scenarios = [] if args.only_small_runs or args.only_trickle else [
            ("1 run x 20,000 flat tasks", lambda: flat_run(20_000), BATCH),
            ("100 runs x 1,000 tasks (fan-out 10)", lambda: many_runs(100), BATCH),
            ("mixed: both of the above at once", lambda: flat_run(20_000) + many_runs(100),
             BATCH)]
        if args.big_run and not args.only_trickle:
            scenarios.append((f"1 run x {args.big_run:,} flat tasks",
                              lambda: flat_run(args.big_run), BATCH))
        if args.small_runs and not args.only_trickle:
            scenarios.append((f"{args.small_runs:,} one-span runs",
                              lambda: small_runs(args.small_runs), SMALL_RUNS_BATCH))
        for name, make, batch in scenarios:
            rates = [scenario(name, make(), url, port, args.clients, proc.pid, batch,
                              sample=batch == SMALL_RUNS_BATCH)
                     for _ in range(args.repeat)]
            if args.repeat > 1:
                print(f"{name:34s} median of {args.repeat}: {statistics.median(rates):,.0f}/s")
        for _ in range(args.repeat if args.trickle else 0):
            trickle(args.trickle, url, port, proc.pid)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
