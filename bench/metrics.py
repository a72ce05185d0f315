"""Scrape time of /metrics, and how it grows with the number of stored tasks.

    .venv/bin/python bench/metrics.py [--tasks 10000 1000000] [--scrapes 30] [--past-days 365]

For each task count, a scratch database (migrated by tasktree) holds 100 jobs with 10 task names
each (1,000 task names: finished counts and duration histograms in ``metric_totals``, the per-job
timestamps), the same live set whatever the size (200 running, 50 stalled, 20 missing-parent
tasks), and the rest finished tasks up to the task count.  A collector stands in for 50 docker
containers (the families ``docker/metrics.py`` builds; the engines' own answer time is
``bench/docker.py``'s subject).  Each scrape renders the full text page with the PostgreSQL cache
off (every scrape queries), as a cold scrape does.  The search index is dropped in the scratch
database to load 1M rows faster: /metrics never uses it.  ``--past-days``: each database holds
that many earlier days' partitions of ``tasks`` too (empty), as one kept that long does.

Prints the median and p95 scrape time for each size, and the ratio large/small.
Target: under 50 ms, flat in the number of tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import time

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from scratch import ADMIN, add_past_days, scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.metrics import DURATION_BUCKETS, ServiceMetrics
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import open_pool

JOBS, NAMES_PER_JOB, CONTAINERS = 100, 10, 50
LIVE_RUNNING, LIVE_STALLED, MISSING = 200, 50, 20


class FakeDocker:
    """The docker families for 50 containers on 5 hosts, as docker/metrics.py shapes them."""

    def collect(self):
        up = GaugeMetricFamily("tasktree_docker_host_up", "up", labels=["host"])
        state = GaugeMetricFamily(
            "tasktree_container_state", "state", labels=["host", "container", "state"]
        )
        cpu = CounterMetricFamily(
            "tasktree_container_cpu_seconds", "cpu", labels=["host", "container"]
        )
        mem = GaugeMetricFamily(
            "tasktree_container_memory_bytes", "mem", labels=["host", "container"]
        )
        restarts = CounterMetricFamily(
            "tasktree_container_restarts", "restarts", labels=["host", "container"]
        )
        for h in range(5):
            up.add_metric([f"host-{h}"], 1)
        for c in range(CONTAINERS):
            labels = [f"host-{c % 5}", f"container-{c}"]
            for s in ("created", "running", "paused", "restarting", "removing", "exited", "dead"):
                state.add_metric([*labels, s], 1.0 if s == "running" else 0.0)
            cpu.add_metric(labels, 12.5)
            mem.add_metric(labels, 2.0e8)
            restarts.add_metric(labels, 0)
        return [up, state, cpu, mem, restarts]


def populate(url: str, tasks: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX tasks_search")
        conn.execute(
            "INSERT INTO resources (digest, job, attributes)"
            " SELECT sha256(j::text::bytea), 'job-' || j,"
            " jsonb_build_object('service.name', 'job-' || j) FROM generate_series(1, %s) j",
            (JOBS,),
        )
        now = time.time_ns()
        conn.execute(
            "INSERT INTO jobs SELECT 'job-' || j, %s, %s, %s, %s FROM generate_series(1, %s) j",
            (now - 10**12, now - 10**11, now - 10**13, now, JOBS),
        )
        buckets = [3] * (len(DURATION_BUCKETS) + 1)
        conn.execute(
            "INSERT INTO metric_totals SELECT 'job-' || j, false, 'task-' || n, s, 100, 42.0, %s"
            " FROM generate_series(1, %s) j, generate_series(1, %s) n, (VALUES (3), (4)) v(s)",
            (buckets, JOBS, NAMES_PER_JOB),
        )
        conn.execute(
            "INSERT INTO metric_totals SELECT 'job-' || j, true, '', s, 10, 420.0, %s"
            " FROM generate_series(1, %s) j, (VALUES (3), (4)) v(s)",
            (buckets, JOBS),
        )
        conn.execute(
            "INSERT INTO runs (trace_id, job, status, start_ns) SELECT sha256(r::text::bytea), "
            "'job-' || (r %% %s + 1), 3, %s FROM generate_series(1, 1000) r",
            (JOBS, now),
        )
        # live and missing tasks first (the same in every size), then finished ones
        live = LIVE_RUNNING + LIVE_STALLED + MISSING
        conn.execute(
            "INSERT INTO tasks (trace_id, span_id, status, missing, heartbeat_ns, resource_id,"
            " name, start_ns, end_ns)"
            " SELECT sha256((i %% 1000 + 1)::text::bytea), int8send(i), "
            "  CASE WHEN i <= %(r)s THEN 1 WHEN i <= %(r)s + %(s)s THEN 2"
            "   WHEN i <= %(l)s THEN 0 ELSE 3 END,"
            "  i > %(r)s + %(s)s AND i <= %(l)s,"
            "  CASE WHEN i <= %(r)s + %(s)s THEN %(now)s END, i %% %(jobs)s + 1,"
            "  'task-' || (i %% 10 + 1),"
            "  %(now)s, CASE WHEN i > %(l)s THEN %(now)s + 1000 END"
            " FROM generate_series(1, %(n)s) i",
            {"r": LIVE_RUNNING, "s": LIVE_STALLED, "l": live, "now": now, "jobs": JOBS, "n": tasks},
        )
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE runs")


def open_metrics(url: str):
    pool = open_pool(url, max_size=2)
    pool.wait(10)
    metrics = ServiceMetrics(pool, Settings(database_url=url), registry=CollectorRegistry())
    metrics.add_collector(FakeDocker())
    metrics.store._ttl = 0.0  # cold scrapes: every one queries PostgreSQL
    metrics.exposition()  # warm up connections and plans
    return pool, metrics


def scrape(metrics) -> tuple[float, float, int]:
    """(seconds, seconds spent in PostgreSQL, lines) of one cold scrape."""
    started = time.perf_counter()
    page = metrics.exposition()
    elapsed = time.perf_counter() - started
    read = float(re.search(rb"^tasktree_metrics_store_read_seconds (\S+)$", page, re.M).group(1))
    return elapsed, read, page.count(b"\n")


def explain(url: str) -> str:
    from tasktree.exporter.metrics import store_metrics

    with psycopg.connect(url) as conn:
        plan = conn.execute("EXPLAIN (COSTS OFF) " + store_metrics.LIVE).fetchall()
        plan += conn.execute("EXPLAIN (COSTS OFF) " + store_metrics.MISSING).fetchall()
    return "\n".join("    " + r[0] for r in plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--scrapes", type=int, default=40)
    parser.add_argument("--past-days", type=int, default=0,
                        help="day partitions of earlier days each database holds too")
    args = parser.parse_args()
    opened = {}
    with contextlib.ExitStack() as scratch:
        for tasks in args.tasks:
            url = scratch.enter_context(scratch_database("tasktree_bench_metrics"))
            add_past_days(url, args.past_days)  # migrates
            started = time.perf_counter()
            populate(url, tasks)
            print(
                f"{tasks:>9,} stored tasks: loaded in {time.perf_counter() - started:.0f} s;"
                f" plans:\n{explain(url)}"
            )
            opened[tasks] = open_metrics(url)
            scratch.callback(opened[tasks][0].close)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        # Interleaved, so that the other load on a shared machine weighs on every size alike.
        samples = {tasks: [] for tasks in opened}
        for _ in range(args.scrapes):
            for tasks, (_, metrics) in opened.items():
                samples[tasks].append(scrape(metrics))
        medians = {}
        for tasks, runs in samples.items():
            times = sorted(t for t, _, _ in runs)
            medians[tasks] = statistics.median(times)
            print(
                f"{tasks:>9,} stored tasks: /metrics {runs[-1][2]:,} lines,"
                f" median {medians[tasks] * 1000:.1f} ms "
                f"(PostgreSQL {statistics.median(r for _, r, _ in runs) * 1000:.1f} ms), "
                f"p95 {times[int(0.95 * (len(times) - 1))] * 1000:.1f} ms"
                f" over {len(times)} cold scrapes"
            )
        if len(medians) >= 2:
            small, large = min(medians), max(medians)
            print(
                f"ratio {large:,} / {small:,} tasks:"
                f" {medians[large] / medians[small]:.2f} (flat: ~1.0)"
            )


if __name__ == "__main__":
    main()
