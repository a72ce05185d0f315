"""JSON API: a subtree's (or a whole run's) running, stalled and failed tasks, newest first,
paged, read from the index over the paths of those tasks (migration 0012), on real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from tasktree.exporter.store import queries
from tasktree.exporter.tree import status as st

from . import api_support
from .api_support import Task, at, get_json, insert_run, placeholder, walk

# The fixtures: pytest finds them among the module's names.
api_pool, client, db = api_support.api_pool, api_support.client, api_support.db

TRACE, OTHER = "a1" * 16, "b2" * 16
ROOT, LEFT, RIGHT, GHOST = (f"{n:016x}" for n in (1, 2, 3, 0xFF))


def sid(n: int) -> str:
    return f"{n:016x}"


def forest(db) -> None:
    """ROOT (ok) over LEFT (failed, over 3 failures, a running and a stalled task) and RIGHT (ok,
    over 2 failures); an orphan failure under a missing parent; another run's failure."""
    insert_run(db, TRACE, [
        Task(ROOT, None, "root", st.OK, at(0), at(100)),
        Task(LEFT, ROOT, "left", st.ERROR, at(1), at(50)),
        Task(sid(10), LEFT, "l-fail-a", st.ERROR, at(2), at(3)),
        Task(sid(11), LEFT, "l-ok", st.OK, at(3), at(4)),
        Task(sid(12), sid(11), "l-fail-deep", st.ERROR, at(3.5), at(3.7)),
        Task(sid(13), LEFT, "l-fail-b", st.ERROR, at(5), at(6)),
        Task(sid(14), LEFT, "l-running", st.RUNNING, at(6), None, heartbeat=at(7)),
        Task(sid(15), sid(14), "l-stalled", st.STALLED, at(6.5), None, heartbeat=at(6.6)),
        Task(RIGHT, ROOT, "right", st.OK, at(10), at(20)),
        Task(sid(20), RIGHT, "r-fail", st.ERROR, at(11), at(12)),
        Task(sid(21), RIGHT, "r-fail-2", st.ERROR, at(13), at(14)),
        placeholder(GHOST),
        Task(sid(30), GHOST, "orphan-fail", st.ERROR, at(8), at(9)),
    ])
    insert_run(db, OTHER, [Task(ROOT, None, "other-root", st.ERROR, at(0), at(1)),
                           Task(LEFT, ROOT, "other-left", st.ERROR, at(1), at(2))])


def spans(body: dict) -> list[str]:
    return [t["span_id"] for t in body["tasks"]]


@pytest.mark.parametrize(("top", "status", "expected"), [
    (LEFT, "error", [sid(13), sid(12), sid(10), LEFT]),  # itself included, newest first
    (ROOT, "error", [sid(21), sid(20), sid(13), sid(12), sid(10), LEFT]),
    (RIGHT, "error", [sid(21), sid(20)]),
    (sid(11), "error", [sid(12)]),
    (LEFT, "running", [sid(14)]),
    (ROOT, "stalled", [sid(15)]),
    (RIGHT, "running", []),
    (GHOST, "error", [sid(30)]),
])
def test_a_subtree_lists_its_tasks_in_one_status_newest_first(client, db, top, status, expected):
    forest(db)
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{top}/subtree?status={status}")
    assert spans(body) == expected
    assert body["next_cursor"] is None


def test_the_whole_run_lists_every_failure_under_every_top_level_task(client, db):
    forest(db)
    body = get_json(client, f"/api/runs/{TRACE}/tasks?status=error")
    assert spans(body) == [sid(21), sid(20), sid(30), sid(13), sid(12), sid(10), LEFT]
    assert get_json(client, f"/api/runs/{OTHER}/tasks?status=error")["tasks"][0] == {
        "span_id": LEFT, "parent_span_id": ROOT, "name": "other-left", "status": "error",
        "start": "2026-11-26T17:33:27.123456789Z", "end": "2026-11-26T17:33:28.123456789Z",
        "duration": 1.0, "child_count": 0,
        "counts": {"ok": 0, "error": 0, "running": 0, "stalled": 0}, "missing": False,
        "last_heartbeat": None, "refused_parent": None, "status_message": None,
    }


def many_failures(db, n: int = 23) -> list[str]:
    """A root over ``n`` failures whose starts tie in threes, and as many ok tasks; returns the
    failures newest first (start, then span id, both descending)."""
    failed = [Task(sid(1000 + (i * 7919) % 997), ROOT, f"f-{i}", st.ERROR, at(i // 3),
                   at(i // 3 + 1)) for i in range(n)]
    fine = [Task(sid(5000 + i), ROOT, f"ok-{i}", st.OK, at(i // 3), at(i // 3 + 1))
            for i in range(n)]
    insert_run(db, TRACE, [Task(ROOT, None, "root", st.OK, at(0), at(60)), *failed, *fine])
    return [t.span for t in sorted(failed, key=lambda t: (t.start, t.span), reverse=True)]


@pytest.mark.parametrize("limit", [1, 4, 7, 23, 1000])
def test_subtree_pages_cover_every_task_once_in_order(client, db, limit):
    expected = many_failures(db)
    for url in (f"/api/runs/{TRACE}/tasks/{ROOT}/subtree?status=error",
                f"/api/runs/{TRACE}/tasks?status=error"):
        pages = walk(client, url, "tasks", limit=limit)
        assert [t["span_id"] for page in pages for t in page] == expected


@pytest.mark.parametrize(("url", "code", "words"), [
    (f"/api/runs/{TRACE}/tasks/{ROOT}/subtree", 400, "status must be one of: running, stalled"),
    (f"/api/runs/{TRACE}/tasks/{ROOT}/subtree?status=ok", 400, "ok tasks are its children"),
    (f"/api/runs/{TRACE}/tasks?status=missing", 400, "status must be one of"),
    (f"/api/runs/{TRACE}/tasks/{'ee' * 8}/subtree?status=error", 404, "no task eeeeeeee"),
    (f"/api/runs/{'ee' * 16}/tasks?status=error", 404, "no run with trace id eeee"),
])
def test_a_wrong_status_or_an_unknown_task_says_what_to_do(client, db, url, code, words):
    forest(db)
    assert words in get_json(client, url, code)["error"]["message"]


def test_a_children_cursor_is_refused_for_a_subtree(client, db):
    many_failures(db, 5)
    cursor = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children?limit=2")["next_cursor"]
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/subtree?status=error&cursor={cursor}",
                    400)
    assert "cursor" in body["error"]["message"]


def test_the_list_is_read_from_the_paths_index_not_by_walking_the_subtree(db):
    """A root over 20,000 ok tasks and 10 failures: the plan is a lookup of the path index, and
    reads no more rows than the failures."""
    insert_run(db, TRACE, [Task(ROOT, None, "root", st.OK, at(0), at(60)),
                           *(Task(sid(100 + i), ROOT, "f", st.ERROR, at(i), at(i + 1))
                             for i in range(10))])
    db.execute(
        "INSERT INTO tasks (trace_id, span_id, parent_span_id, name, status, start_ns)"
        " SELECT %s, int8send(1000000 + i), %s, 'fine', %s, %s + i"
        " FROM generate_series(1, 20000) i",
        (bytes.fromhex(TRACE), bytes.fromhex(ROOT), st.OK, at(0)),
    )
    db.execute("ANALYZE tasks")
    query = queries.statement("subtree_tasks")
    params = {"trace_id": bytes.fromhex(TRACE), "top": bytes.fromhex(ROOT), "status": st.ERROR,
              "limit": 11, "run_day": queries.day_of_run(db, bytes.fromhex(TRACE))}
    (plan,) = db.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + query.as_bytes(db), params).fetchone()
    text = json.dumps(plan)
    assert '"Index Name": "tasks_' in text and "path" in text, text
    assert _rows_read(plan[0]["Plan"]) <= 11 + 10, text


def _rows_read(node: dict) -> int:
    """Rows the plan's scans returned, summed over the whole plan."""
    own = node.get("Actual Rows", 0) if "Scan" in node["Node Type"] else 0
    return own + sum(_rows_read(child) for child in node.get("Plans", ()))
