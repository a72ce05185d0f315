"""The README's first command: ``tasktree demo`` serves and stores an instrumented sample job."""

from __future__ import annotations

import subprocess
import sys

import psycopg


def test_demo_stores_an_instrumented_run_of_thousands_of_tasks_and_prints_the_url(clean_db):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasktree.exporter",
            "demo",
            "--exit",
            "--database-url",
            clean_db,
            "--port",
            "0",
            "--otlp-http-port",
            "0",
            "--otlp-grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tasktree is running: http://127.0.0.1:" in out.stdout
    with psycopg.connect(clean_db) as conn:
        [(job, status, tasks, errors, roots)] = conn.execute(
            "SELECT job, status, task_count, n_error, root_count FROM runs"
        ).fetchall()
        names = dict(conn.execute("SELECT name, count(*) FROM tasks GROUP BY name").fetchall())
        report_parent = conn.execute(
            "SELECT p.name FROM tasks c JOIN tasks p ON p.trace_id = c.trace_id"
            " AND p.span_id = c.parent_span_id WHERE c.name = 'render-report'"
        ).fetchone()
    assert (job, status, roots) == ("demo-etl", 3, 1)  # one root, ended ok
    assert tasks > 2500 and errors > 0
    assert names["transform-chunk"] == 1000 and names["load-batch"] == 1000  # process pool, threads
    assert report_parent == ("report",)  # the child program hangs under its launcher
