"""The stored tree and run summary as rows, for the tests that fold into PostgreSQL and compare."""

from __future__ import annotations


def tree(conn, trace):
    rows = conn.execute(
        "SELECT span_id, parent_span_id, missing, status, child_count, n_ok, n_error, n_running,"
        " n_stalled FROM tasks WHERE trace_id = %s ORDER BY span_id",
        (trace,),
    ).fetchall()
    return {bytes(r[0]): (bytes(r[1]) if r[1] else None, *r[2:]) for r in rows}


def run(conn, trace):
    return conn.execute(
        "SELECT job, name, status, start_ns, end_ns, n_ok, n_error, n_running, n_stalled,"
        " task_count, root_count FROM runs WHERE trace_id = %s",
        (trace,),
    ).fetchone()
