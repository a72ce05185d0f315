"""Soak: a real ``tasktree serve`` under steady ingest, live UI readers and scrapes (issue 7).

    .venv/bin/python bench/soak.py [--minutes 5] [--workers 1] [--clients 3] [--database-url URL]

Starts ``tasktree serve`` on a scratch database (created on ``TASKTREE_BENCH_PG``, dropped at the
end) and, for ``--minutes`` (at most 10):

* ``--clients`` ingest clients send OTLP/HTTP protobuf: runs of a root and steps of items, the
  root and the steps sending running snapshots (heartbeats) while they go, finals as they end,
  some items failing; 429/503 are retried after Retry-After, as OTel exporters do;
* live UI readers hold event streams on /api/live/runs and on a current run, re-fetching what a
  page would on each ``changed`` event;
* page readers GET the runs list, a run page, a task page and a children page every second;
* a scraper GETs /metrics every 5 s, as Prometheus would.

Every 10 s it samples the RSS of every tasktree process (psutil), the server's open PostgreSQL
connections (pg_stat_activity of the scratch database), the fold lag (age of the oldest
``span_landing.received_ns``) and the ingest rate; it prints a table and a verdict:

* RSS flat after warm-up: each process's mean RSS over the last third of the samples within 5 %
  (or 8 MiB) of its mean over the middle third;
* connections bounded: never over ``pool_size`` per process;
* fold lag bounded: under 15 s all along after warm-up, and the last third's worst no worse than
  twice the middle third's (plus 2 s);
* nothing lost: no 5xx anywhere, every request acknowledged in the end, and every span
  acknowledged is a task once folding has caught up.

Exit status 0 when every check passes.  Figures go in bench/README.md with date and command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter

import psutil
import psycopg
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from scratch import ADMIN, scratch_database, start_server  # bench/scratch.py: the script's folder

SAMPLE_EVERY_S = 10.0
POOL_SIZE = 10  # Settings.pool_size's default: the server is started with it
MAX_MINUTES = 10.0


# -- ingest -------------------------------------------------------------------------------------


class Stats:
    """Counters shared by the load threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()  # (kind, status) → count
        self.acked: set[tuple[bytes, bytes]] = set()
        self.acked_spans = 0  # records acknowledged (snapshots included), for the ingest rate
        self.unacknowledged = 0
        self.live_events = 0

    def count(self, kind: str, status) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1

    def server_errors(self) -> dict:
        with self.lock:
            return {f"{k} {s}": n for (k, s), n in self.statuses.items()
                    if s == "error" or (isinstance(s, int) and s >= 500 and k != "ingest-503")}


class Run:
    """One job run: a root, ``steps`` steps of ``items`` items, sending as a real job would."""

    def __init__(self, job: str, steps: int, items: int):
        self.job, self.steps, self.items = job, steps, items
        self.trace, self.root = _id(16), _id(8)
        self.start_ns = time.time_ns()

    def records(self):
        """Yields lists of (span_id, parent, name, start_ns, state) to send, request by request.

        state: "running" (a snapshot/heartbeat), "ok" or "error".
        """
        yield [(self.root, None, "nightly", self.start_ns, "running")]
        for s in range(self.steps):
            step, step_start = _id(8), time.time_ns()
            batch = [(self.root, None, "nightly", self.start_ns, "running"),  # heartbeat
                     (step, self.root, f"step-{s}", step_start, "running")]
            for i in range(self.items):
                state = "error" if random.random() < 0.02 else "ok"
                batch.append((_id(8), step, f"item-{i % 20}", time.time_ns(), state))
            yield batch
            yield [(step, self.root, f"step-{s}", step_start, "ok")]
        yield [(self.root, None, "nightly", self.start_ns, "ok")]


def _id(size: int) -> bytes:
    while not any(value := os.urandom(size)):
        pass
    return value


def encode(run: Run, records) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (("service.name", run.job), ("host.name", "soak"), ("process.pid", "1")):
        rs.resource.attributes.add(key=key).value.string_value = value
    scope = rs.scope_spans.add()
    scope.scope.name = "tasktree.instrumentation"
    now = time.time_ns()
    for span_id, parent, name, start_ns, state in records:
        span = scope.spans.add(trace_id=run.trace, span_id=span_id, parent_span_id=parent or b"",
                               name=name, kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
                               start_time_unix_nano=start_ns, end_time_unix_nano=max(now, start_ns))
        span.attributes.add(key="soak.attempt").value.int_value = 1
        if state == "running":
            span.attributes.add(key="tasktree.state").value.string_value = "running"
        elif state == "error":
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            span.status.message = "simulated failure"
        else:
            span.status.code = trace_pb2.Status.STATUS_CODE_OK
    return request.SerializeToString()


def ingest_client(n: int, otlp: str, stats: Stats, stop: threading.Event, current: dict) -> None:
    """Sends runs one after another, a request every ~0.1 s, until ``stop``."""
    session = requests.Session()
    url = otlp + "/v1/traces"
    while not stop.is_set():
        run = Run(f"soak-job-{n}", steps=random.randint(5, 15), items=random.randint(10, 40))
        current[n] = run
        for records in run.records():
            if not _send(session, url, encode(run, records), stats, stop):
                return
            with stats.lock:
                stats.acked.update((run.trace, r[0]) for r in records)
                stats.acked_spans += len(records)
            stop.wait(0.1)
        # the last run may be cut short by ``stop``: its root then stays running, which is right


def _send(session, url: str, body: bytes, stats: Stats, stop: threading.Event) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = session.post(url, data=body, timeout=60,
                                    headers={"Content-Type": "application/x-protobuf"})
            status = response.status_code
        except requests.RequestException:
            status = "error"
        stats.count("ingest" if status != 503 else "ingest-503", status)
        if status == 200:
            return True
        if status not in (429, 503):
            break
        time.sleep(min(5.0, float(response.headers.get("Retry-After", "1"))))
    with stats.lock:
        stats.unacknowledged += 1
    return False


# -- readers ------------------------------------------------------------------------------------


def live_reader(web: str, path_of, refetch, stats: Stats, stop: threading.Event) -> None:
    """Holds an event stream like a page does; on each ``changed`` re-fetches; reconnects."""
    while not stop.is_set():
        parts = urllib.parse.urlsplit(web + path_of())
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
        try:
            conn.request("GET", parts.path, headers={"Accept": "text/event-stream"})
            response = conn.getresponse()
            stats.count("live", response.status)
            if response.status != 200:
                stop.wait(2)
                continue
            deadline = time.monotonic() + 30  # a page moves on: streams come and go
            while not stop.is_set() and time.monotonic() < deadline:
                line = response.fp.readline()
                if not line:
                    break
                if line.startswith(b"event: changed"):
                    with stats.lock:
                        stats.live_events += 1
                    refetch()
        except (OSError, http.client.HTTPException):
            stats.count("live", "error")
        finally:
            conn.close()


def page_reader(web: str, current: dict, stats: Stats, stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.is_set():
        runs = list(current.values())
        if runs:
            run = random.choice(runs)
            trace, root = run.trace.hex(), run.root.hex()
            for path in ("/", "/api/runs?limit=50", f"/runs/{trace}", f"/runs/{trace}/tasks/{root}",
                         f"/api/runs/{trace}/tasks/{root}/children?limit=100"):
                _get(session, web + path, "page", stats)
        stop.wait(1.0)


def scraper(web: str, stats: Stats, stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.wait(5.0):
        _get(session, web + "/metrics", "metrics", stats)


def _get(session, url: str, kind: str, stats: Stats) -> None:
    try:
        status = session.get(url, timeout=30).status_code
    except requests.RequestException:
        status = "error"
    stats.count(kind, status)


# -- sampling -----------------------------------------------------------------------------------


def processes(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def sample(root_pid: int, url: str, stats: Stats, last: dict) -> dict:
    rss = {}
    for proc in processes(root_pid):
        try:
            rss[proc.pid] = proc.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        connections = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                   (url.rsplit("/", 1)[1],)).fetchone()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        lag_ns, backlog, tasks = conn.execute(
            "SELECT %s - min(received_ns), count(*), (SELECT count(*) FROM tasks)"
            " FROM span_landing",
            (time.time_ns(),)).fetchone()
    now = time.monotonic()
    with stats.lock:
        acked = stats.acked_spans
    rate = (acked - last.get("acked", 0)) / (now - last["at"]) if "at" in last else 0.0
    last.update(acked=acked, at=now)
    return {"t": now, "rss": rss, "connections": connections, "lag_s": (lag_ns or 0) / 1e9,
            "backlog": backlog, "tasks": tasks, "rate": rate}


# -- verdict ------------------------------------------------------------------------------------


def verdict(samples: list[dict], processes_count: int, stats: Stats, lost: int) -> list[tuple]:
    """(check, passed, detail) for each claim in the module docstring."""
    third = max(1, len(samples) // 3)
    middle, last = samples[third:2 * third], samples[2 * third:]
    checks = []
    for pid in samples[-1]["rss"]:
        mid = statistics.mean(s["rss"].get(pid, 0) for s in middle)
        end = statistics.mean(s["rss"].get(pid, 0) for s in last)
        growth = end - mid
        checks.append((f"RSS flat, pid {pid}", growth <= max(0.05 * mid, 8.0),
                       f"middle {mid:.1f} MiB → last {end:.1f} MiB ({growth:+.1f} MiB)"))
    limit = POOL_SIZE * processes_count
    top = max(s["connections"] for s in samples)
    checks.append(("connections bounded", top <= limit, f"max {top} (limit {limit})"))
    lag_mid = max(s["lag_s"] for s in middle)
    lag_end = max(s["lag_s"] for s in last)
    lag_all = max(s["lag_s"] for s in samples[third:])
    checks.append(("fold lag bounded", lag_all < 15 and lag_end <= 2 * lag_mid + 2,
                   f"max {lag_all:.1f} s after warm-up (middle {lag_mid:.1f}, last {lag_end:.1f})"))
    errors = stats.server_errors()
    checks.append(("no 5xx, no failed request", not errors,
                   json.dumps(errors) if errors else "none"))
    checks.append(("every request acknowledged", stats.unacknowledged == 0,
                   f"{stats.unacknowledged} not acknowledged"))
    checks.append(("every acknowledged span is a task", lost == 0, f"{lost} missing"))
    return checks


# -- main ---------------------------------------------------------------------------------------


def stop_server(proc: subprocess.Popen) -> None:
    helpers = [p for p in processes(proc.pid)[1:]] if proc.poll() is None else []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for helper in helpers:  # fold workers: ended by the main process, or here by PID
        try:
            helper.wait(10)
        except psutil.TimeoutExpired:
            helper.kill()
        except psutil.NoSuchProcess:
            pass


def missing_tasks(url: str, acked: set[tuple[bytes, bytes]]) -> int:
    """Waits for folding to catch up, then counts acknowledged spans that are not tasks."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        while conn.execute("SELECT EXISTS (SELECT 1 FROM span_landing)").fetchone()[0]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        stored = {(bytes(t), bytes(s)) for t, s in conn.execute(
            "SELECT trace_id, span_id FROM tasks WHERE NOT missing")}
    return len(acked - stored)


def print_table(samples: list[dict], start: float) -> None:
    """One line per sample: RSS (MiB) of each tasktree process, then the other figures."""
    pids = sorted({pid for s in samples for pid in s["rss"]})
    print("  t (s)" + "".join(f"  RSS {pid:>7}" for pid in pids)
          + "  PG conns  lag (s)  backlog    tasks  spans/s")
    for s in samples:
        rss = "".join(f"  {s['rss'].get(pid, 0):11.1f}" for pid in pids)
        print(f"{s['t'] - start:7.0f}{rss}  {s['connections']:8d}  {s['lag_s']:7.1f}"
              f"  {s['backlog']:7d}  {s['tasks']:7d}  {s['rate']:7.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    with scratch_database("tasktree_soak") as url:
        return soak(url, args, min(args.minutes, MAX_MINUTES))


def soak(url: str, args: argparse.Namespace, minutes: float) -> int:
    """Load a ``tasktree serve`` on the database ``url`` for ``minutes``; 0 when every check
    passed."""
    db = url.rsplit("/", 1)[1]
    workdir = tempfile.mkdtemp(prefix="tasktree-soak-")
    log = open(os.path.join(workdir, "serve.log"), "w")  # noqa: SIM115 (lives as long as the server)
    proc, urls = start_server(url, "--workers", str(args.workers), stderr=log, cwd=workdir)
    try:
        web = urls["ui"].rstrip("/")
        otlp = urls["otlp_http"].removesuffix("/v1/traces")
        print(f"tasktree serve pid {proc.pid} (--workers {args.workers}), {args.clients} clients, "
              f"{minutes:g} min, database {db}, log {workdir}/serve.log", flush=True)
        stats, stop, current = Stats(), threading.Event(), {}

        def some_run() -> str:
            runs = list(current.values())
            return f"/api/live/runs/{random.choice(runs).trace.hex()}" if runs else "/api/live/runs"

        def refetch_list() -> None:
            _get(requests, web + "/api/runs?limit=50", "live-refetch", stats)

        def refetch_run() -> None:
            runs = list(current.values())
            if runs:
                trace = random.choice(runs).trace.hex()
                _get(requests, f"{web}/api/runs/{trace}", "live-refetch", stats)

        threads = [threading.Thread(target=ingest_client, args=(n, otlp, stats, stop, current))
                   for n in range(args.clients)]
        threads += [threading.Thread(target=live_reader, args=(web, lambda: "/api/live/runs",
                                                               refetch_list, stats, stop)),
                    threading.Thread(target=live_reader,
                                     args=(web, some_run, refetch_run, stats, stop)),
                    threading.Thread(target=page_reader, args=(web, current, stats, stop)),
                    threading.Thread(target=scraper, args=(web, stats, stop))]
        for thread in threads:
            thread.daemon = True
            thread.start()

        start = time.monotonic()
        end = start + minutes * 60
        samples, last = [], {"acked": 0, "at": start}
        while time.monotonic() < end:
            time.sleep(min(SAMPLE_EVERY_S, max(0.0, end - time.monotonic())))
            samples.append(sample(proc.pid, url, stats, last))
            s = samples[-1]
            rss = " ".join(f"{v:.1f}" for v in s["rss"].values())
            print(f"  {s['t'] - start:5.0f} s  RSS {rss} MiB"
                  f"  conns {s['connections']}  lag {s['lag_s']:.1f} s  {s['rate']:.0f} spans/s",
                  flush=True)
        stop.set()
        for thread in threads:
            thread.join(60)
        process_count = len(samples[-1]["rss"])
        lost = missing_tasks(url, stats.acked)

        print()
        print_table(samples, start)
        print()
        print(f"requests: {dict(sorted((f'{k} {s}', n) for (k, s), n in stats.statuses.items()))}")
        print(f"live events received: {stats.live_events}; spans acknowledged: {len(stats.acked)}")
        checks = verdict(samples, process_count, stats, lost)
        for name, passed, detail in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
        return 0 if all(passed for _, passed, _ in checks) else 1
    finally:
        stop_server(proc)


if __name__ == "__main__":
    sys.exit(main())
