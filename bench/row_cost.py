"""What one task row costs PostgreSQL: the floor under ingest's CPU per span (issue 16).

    .venv/bin/python bench/row_cost.py [--rows 40000]

On a scratch database with tasktree's schema, one connection at a time, PostgreSQL CPU per row
(its backend's utime + stime, from /proc) of:

* a bare COPY into an unindexed table: the reference, as in ``bench/ingest.py``;
* landing: the COPY ``store/landing.py`` makes (what ingest writes before answering 200);
* folding those records (``fold_batch``: the task rows, the parent's counts, the run);
* writing the same records straight into ``tasks`` (a COPY into a temporary table, then one
  ``INSERT … SELECT``): the write a "write once at ingest" design would make in the request, with
  nothing to fold after it but the structure;
* that same insert with the task indexes dropped one after another (search, time, children,
  then the partial ones), which says what each index costs a row.

Issue 16 asks for 25 µs of CPU per span for the server and PostgreSQL together; the last rows
show how much of that one row with tasktree's indexes takes by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import psycopg
from scratch import scratch_database  # bench/scratch.py: the script's folder

from tasktree.exporter.store import partitions
from tasktree.exporter.store.fold import fold_batch
from tasktree.exporter.store.landing import _TYPES as LANDING_TYPES
from tasktree.exporter.store.landing import LANDED_COLUMNS  # what ingest COPYs
from tasktree.exporter.store.migrate import migrate

LANDING_COLUMNS = ", ".join(LANDED_COLUMNS)

ATTRIBUTES = json.dumps({"item": "1", "partition": "1", "host.name": "bench-host"})
BATCH = 512
INSERT_TASKS = """
INSERT INTO tasks (trace_id, span_id, parent_span_id, status, heartbeat_ns, run_day, name, kind,
                   start_ns, end_ns, status_message, resource_id, scope, attributes, events,
                   links, truncated, received_ns, search)
SELECT trace_id, span_id, parent_span_id, status, heartbeat_ns, %s, name, kind, start_ns, end_ns,
       status_message, resource_id, scope, attributes, events, links, truncated, received_ns,
       search
FROM stage
"""
# The temporary table has the landing's columns and its generated search document.
MAKE_TABLES = f"""
CREATE UNLOGGED TABLE bare AS SELECT {LANDING_COLUMNS} FROM span_landing WITH NO DATA;
CREATE TEMP TABLE stage (LIKE span_landing INCLUDING DEFAULTS INCLUDING GENERATED)
    ON COMMIT DELETE ROWS
"""  # noqa: S608 (constants)
# Dropped in this order, each row of the table one index fewer than the one before.
INDEXES = ["tasks_search", "tasks_start", "tasks_children", "tasks_flagged_path",
           "tasks_live_heartbeat", "tasks_missing"]


def flat_run(n: int) -> list[tuple]:
    """Landing rows of one run: a root's n - 1 children (ok, three attributes, as bench/ingest)."""
    trace, root, now = os.urandom(16), os.urandom(8), time.time_ns()
    return [(now, trace, os.urandom(8), root, f"task-{i % 50}", 1, now - 1000, now, None, 3, "",
             1, "", ATTRIBUTES, "[]", "[]", False,
             f"task {i % 50} item {i} partition {i % 7} host name bench host")
            for i in range(n)]


def backend_cpu(conn: psycopg.Connection) -> float:
    with open(f"/proc/{conn.info.backend_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_row(conn: psycopg.Connection, rows: int, work) -> float:
    """µs of the backend's CPU per row of ``work()``."""
    before = backend_cpu(conn)
    work()
    return 1e6 * (backend_cpu(conn) - before) / rows


def copy_in_batches(conn: psycopg.Connection, table: str, rows: list[tuple], then=None) -> None:
    for at in range(0, len(rows), BATCH):
        with conn.transaction():
            with conn.cursor().copy(
                    f"COPY {table} ({LANDING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(LANDING_TYPES)
                for row in rows[at:at + BATCH]:
                    copy.write_row(row)
            if then:
                conn.execute(then, (partitions.today(),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    n = parser.parse_args().rows
    with scratch_database("tasktree_row_cost") as url:
        migrate(url)
        measure(url, n)


def measure(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        partitions.ensure_current(conn)
        conn.execute("INSERT INTO resources (id, digest, job, attributes)"
                     " VALUES (1, '\\x00', 'bench-job', '{}')")
        conn.execute(MAKE_TABLES)
        figures = [("bare COPY (the reference)",
                    per_row(conn, n, lambda: copy_in_batches(conn, "bare", flat_run(n))))]
        figures.append(("landing", per_row(
            conn, n, lambda: copy_in_batches(conn, "span_landing", flat_run(n)))))

        def fold_all() -> None:
            while fold_batch(conn, limit=10_000, stall_after_s=3600).records:
                pass
        figures.append(("folding the landed records", per_row(conn, n, fold_all)))
        figures.append(("one task row written at once, all indexes", per_row(
            conn, n, lambda: copy_in_batches(conn, "stage", flat_run(n), INSERT_TASKS))))
        for index in INDEXES:
            conn.execute(f"DROP INDEX {index}")
            figures.append((f"  without {index} and those above", per_row(
                conn, n, lambda: copy_in_batches(conn, "stage", flat_run(n), INSERT_TASKS))))
    reference = figures[0][1]
    print(f"PostgreSQL CPU per row, {n:,} rows each, one connection:")
    for name, micros in figures:
        print(f"  {name:48s} {micros:6.1f} µs  ({micros / reference:4.1f}× the bare COPY)")


if __name__ == "__main__":
    main()
