"""Read-path latency of the JSON API's queries on a run of 1,000,000 tasks.

    .venv/bin/python bench/query.py [--tasks 1000000] [--repeat 50] [--past-days 365]
                                    [--database-url postgresql://...]

Creates a scratch database (migrated, dropped at the end), builds one run of ``--tasks`` tasks in
a few set-based statements, in which one node has 100,000 children, then times through
``tasktree.exporter.store.queries`` (and through the Flask routes, JSON included):

* a page of 100 children from the middle of that node, reached by its keyset cursor;
* the run summary (``GET /api/runs/{trace_id}``: the run row and its top-level tasks);

each as the median of ``--repeat`` calls, beside the median of a primary-key lookup of one task
(in its run's day partition) measured in the same run (the machine is shared: compare ratios, not
milliseconds).  ``--past-days``: the database holds that many earlier days' partitions of
``tasks`` too, as one kept that long does.  Target: both under 20 ms median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import psycopg
from scratch import ADMIN, add_past_days, scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.store import queries
from tasktree.exporter.store.partitions import ensure_current

TRACE = bytes.fromhex("7be1a1ce5c0f4f0e9d2b6a3c1e0f9a10")
BIG_CHILDREN = 100_000
BRANCHES = 1000
BASE_NS = 1_795_000_000_000_000_000
BIG_NODE = (2).to_bytes(8, "big")  # task 1's span id

# Task i of the run: 0 the root; 1 the big node; 2 .. BIG_CHILDREN+1 its children; then BRANCHES
# middle nodes under the root; the rest leaves spread over the middle nodes.  Span ids are
# 8-byte big-endian i+1; start times rise with i, ties every 4 tasks to exercise the span-id
# tie-break.  Every 97th leaf failed, the last 100 are still running.
BUILD_RUN = [
    """
INSERT INTO resources (id, digest, job, attributes)
VALUES (1, '\\x01', 'bench-job', '{"service.name": "bench-job", "host.name": "bench-host"}')
""",
    """
INSERT INTO tasks (trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns,
                   status_message, resource_id, scope, attributes, events, links, received_ns)
SELECT %(trace)s, int8send(i + 1),
       CASE WHEN i = 0 THEN NULL
            WHEN i = 1 OR i >= %(first_branch)s AND i < %(first_leaf)s THEN int8send(1)
            WHEN i <= %(big)s + 1 THEN int8send(2)
            ELSE int8send(%(first_branch)s + (i - %(first_leaf)s) %% %(branches)s + 1) END,
       'task-' || (i %% 50), 1,
       CASE WHEN i >= %(tasks)s - 100 THEN 1 WHEN i %% 97 = 0 AND i > 1 THEN 4 ELSE 3 END,
       %(base)s + (i / 4) * 1000,
       CASE WHEN i >= %(tasks)s - 100 THEN NULL ELSE %(base)s + (i / 4) * 1000 + 5000000 END,
       CASE WHEN i %% 97 = 0 AND i > 1 THEN 'disk full on /var' ELSE '' END,
       1, 'bench', jsonb_build_object('item', i, 'partition', i %% 7), '[]', '[]', %(base)s
FROM generate_series(0, %(tasks)s - 1) AS i
""",
]

# Child counts and rollups in one UPDATE: every task counted at its parent (depth 1) and at its
# grandparent (depth 2); the tree is three levels deep below the root, so that is all of them.
ROLLUPS = [
    """
WITH up AS (
    SELECT c.parent_span_id AS ancestor, 1 AS depth, c.status FROM tasks c
    WHERE c.parent_span_id IS NOT NULL
    UNION ALL
    SELECT p.parent_span_id, 2, c.status FROM tasks c
    JOIN tasks p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id
    WHERE p.parent_span_id IS NOT NULL
), agg AS (
    SELECT ancestor, count(*) FILTER (WHERE depth = 1) AS child_count,
           count(*) FILTER (WHERE status = 3) AS n_ok,
           count(*) FILTER (WHERE status = 4) AS n_error,
           count(*) FILTER (WHERE status = 1) AS n_running,
           count(*) FILTER (WHERE status = 2) AS n_stalled
    FROM up GROUP BY ancestor
)
UPDATE tasks t SET child_count = agg.child_count, n_ok = agg.n_ok, n_error = agg.n_error,
                   n_running = agg.n_running, n_stalled = agg.n_stalled
FROM agg WHERE t.trace_id = %(trace)s AND t.span_id = agg.ancestor
""",
    """
INSERT INTO runs (trace_id, job, name, status, start_ns, end_ns, n_ok, n_error, n_running,
                  n_stalled, task_count, root_count, last_received_ns)
SELECT %(trace)s, 'bench-job', 'task-0', 3, min(start_ns), NULL,
       count(*) FILTER (WHERE status = 3), count(*) FILTER (WHERE status = 4),
       count(*) FILTER (WHERE status = 1), count(*) FILTER (WHERE status = 2), count(*),
       count(*) FILTER (WHERE parent_span_id IS NULL), max(received_ns)
FROM tasks WHERE trace_id = %(trace)s
""",
]


def build(url: str, tasks: int) -> None:
    """Fill the scratch database with the one big run, rollups consistent, statistics fresh."""
    first_branch = BIG_CHILDREN + 2
    params = {
        "trace": TRACE,
        "tasks": tasks,
        "big": BIG_CHILDREN,
        "branches": BRANCHES,
        "first_branch": first_branch,
        "first_leaf": first_branch + BRANCHES,
        "base": BASE_NS,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_current(conn)  # the run's rows go to today's partition, as the fold puts them
        for step, statements in (("tasks", BUILD_RUN), ("rollups", ROLLUPS)):
            started = time.perf_counter()
            with conn.transaction():
                for text in statements:
                    conn.execute(text, params)
            print(f"built {step} in {time.perf_counter() - started:.1f} s", flush=True)
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE runs")


def median_ms(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``call`` in milliseconds, after three warm-up calls."""
    for _ in range(3):
        call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def middle_key(conn: psycopg.Connection) -> tuple:
    """The keyset cursor of the 50,000th child of the big node (a page from its middle)."""
    row = conn.execute(
        "SELECT start_ns, span_id FROM tasks WHERE trace_id = %s AND parent_span_id = %s"
        " ORDER BY start_ns, span_id OFFSET %s LIMIT 1",
        (TRACE, BIG_NODE, BIG_CHILDREN // 2),
    ).fetchone()
    return (row[0], row[1])


def measure(url: str, repeat: int) -> dict[str, float]:
    """Median milliseconds of the reference lookup, the children page and the run summary."""
    big = BIG_NODE
    with psycopg.connect(url, autocommit=True) as conn:
        after = middle_key(conn)
        day = queries.day_of_run(conn, TRACE)
        page = queries.children(conn, TRACE, big, limit=100, after=after)
        assert len(page.rows) == 100 and page.next_after is not None, "middle page is not full"
        return {
            "reference: primary-key lookup": median_ms(
                lambda: conn.execute(
                    "SELECT 1 FROM tasks WHERE trace_id = %s AND span_id = %s AND run_day = %s",
                    (TRACE, big, day),
                    prepare=False,
                ).fetchall(),
                repeat,
            ),
            "children page (query)": median_ms(
                lambda: queries.children(conn, TRACE, big, limit=100, after=after), repeat
            ),
            "run summary (query)": median_ms(
                lambda: (queries.get_run(conn, TRACE), queries.run_roots(conn, TRACE)), repeat
            ),
            **measure_routes(url, after, repeat),
        }


def measure_routes(url: str, after: tuple, repeat: int) -> dict[str, float]:
    """The same two reads through the Flask routes (pool, parameters, JSON encoding)."""
    from flask import Flask

    from tasktree.exporter.api import api_blueprint
    from tasktree.exporter.api.params import encode_cursor
    from tasktree.exporter.services import Services, install_services
    from tasktree.exporter.settings import Settings
    from tasktree.exporter.store.pool import open_pool

    pool = open_pool(url, max_size=2)
    try:
        pool.wait()
        app = Flask("bench")
        install_services(app, Services(Settings(), pool))
        app.register_blueprint(api_blueprint)
        client = app.test_client()
        cursor = encode_cursor("children", after)
        base = f"/api/runs/{TRACE.hex()}"
        children = f"{base}/tasks/{BIG_NODE.hex()}/children?limit=100&cursor={cursor}"
        assert client.get(children).status_code == 200 and client.get(base).status_code == 200
        return {
            "children page (route)": median_ms(lambda: client.get(children), repeat),
            "run summary (route)": median_ms(lambda: client.get(base), repeat),
        }
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--past-days", type=int, default=0,
                        help="day partitions of earlier days the database holds too")
    parser.add_argument("--database-url", default=ADMIN, help="an admin URL of the server to use")
    args = parser.parse_args(argv)
    if args.tasks < BIG_CHILDREN + 2 + BRANCHES:
        parser.error(f"--tasks must be at least {BIG_CHILDREN + 2 + BRANCHES}")
    with scratch_database("tasktree_bench_query", args.database_url) as url:
        add_past_days(url, args.past_days)  # migrates
        build(url, args.tasks)
        report(measure(url, args.repeat), args)
    return 0


def report(figures: dict[str, float], args: argparse.Namespace) -> None:
    reference = figures["reference: primary-key lookup"]
    print(
        f"\none run of {args.tasks:,} tasks, a node of {BIG_CHILDREN:,} children, "
        f"{args.past_days} past days; median of {args.repeat} calls"
    )
    for what, ms in figures.items():
        verdict = "" if what.startswith("reference") else ("  ok" if ms < 20 else "  OVER 20 ms")
        print(f"  {what:32} {ms:8.3f} ms  {ms / reference:6.1f} x reference{verdict}")


if __name__ == "__main__":
    sys.exit(main())
