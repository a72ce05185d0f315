"""The stored tree and run summary as rows, for the tests that fold into PostgreSQL and compare."""

from __future__ import annotations

from tasktree.exporter.tree import status as st


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


def wrong_paths(conn, trace):
    """The tasks in a status listed by subtree (running, stalled, error) whose stored path is not
    their trace id then the span ids from the top of the tree down to them: {span: (stored,
    expected)}; empty when every path is right."""
    rows = conn.execute(
        "SELECT span_id, parent_span_id, status, path FROM tasks WHERE trace_id = %s", (trace,)
    ).fetchall()
    parents = {bytes(r[0]): bytes(r[1]) if r[1] else None for r in rows}
    wrong = {}
    for span, _, status, stored in rows:
        if status not in (st.RUNNING, st.STALLED, st.ERROR):
            continue
        expected, at = [], bytes(span)
        while at is not None:
            expected.insert(0, at)
            at = parents.get(at)
        expected.insert(0, trace)
        stored = [bytes(p) for p in stored] if stored is not None else None
        if stored != expected:
            wrong[bytes(span)] = (stored, expected)
    return wrong
