"""The README's first command: ``tasktree demo`` serves and stores a sample job of thousands of tasks."""

from __future__ import annotations

import subprocess
import sys

import psycopg


def test_demo_stores_a_multi_level_run_of_thousands_of_tasks_and_prints_the_url(clean_db):
    out = subprocess.run(
        [sys.executable, "-m", "tasktree.exporter", "demo", "--exit", "--database-url", clean_db,
         "--port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", "0"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tasktree is running: http://127.0.0.1:" in out.stdout
    with psycopg.connect(clean_db) as conn:
        runs = conn.execute("SELECT job, status, task_count, n_error FROM runs").fetchall()
        depth = conn.execute(
            "WITH RECURSIVE d AS (SELECT span_id, trace_id, 1 AS depth FROM tasks"
            " WHERE parent_span_id IS NULL UNION ALL SELECT t.span_id, t.trace_id, d.depth + 1"
            " FROM tasks t JOIN d ON t.trace_id = d.trace_id AND t.parent_span_id = d.span_id)"
            " SELECT max(depth) FROM d").fetchone()[0]
    [(job, status, task_count, errors)] = runs
    assert job and task_count >= 2000 and errors > 0 and depth >= 3
