"""JSON API: the runs list, one run, one task and its children, against real PostgreSQL."""

from __future__ import annotations

import pytest

from tasktree.exporter.search import document_words
from tasktree.exporter.tree import status as st

from .api_support import (
    SECOND,
    T0,
    Task,
    api_pool,
    at,
    client,
    db,
    get_json,
    insert_run,
    placeholder,
    walk,
)

# pytest finds these fixtures among the module's names.
FIXTURES = (api_pool, client, db)


TRACE = "a1" * 16
ROOT, EXTRACT, LOAD, PART, GHOST, ORPHAN = (f"{n:016x}" for n in (1, 2, 3, 4, 0xFF, 0x10))
RESOURCE = {"service.name": "nightly", "host.name": "box-1"}


def sample_run(db, trace: str = TRACE) -> None:
    """A root with two children (one failed, with a running subtask) and an orphan under a
    placeholder for a parent that never arrived."""
    insert_run(db, trace, [
        Task(ROOT, None, "nightly-report", st.OK, at(0), at(10), attributes={"env": "prod"},
             resource=RESOURCE),
        Task(EXTRACT, ROOT, "extract", st.OK, at(1), at(3), resource=RESOURCE),
        Task(LOAD, ROOT, "load", st.ERROR, at(4), at(5), message="disk full on /var",
             attributes={"table": "orders_2026", "rows": 12}, resource=RESOURCE,
             events=[{"time_ns": at(4.5), "name": "retry", "attributes": {"attempt": 2}}],
             links=[{"trace_id": "b2" * 16, "span_id": "c3" * 8, "attributes": {}}], kind=3),
        Task(PART, LOAD, "load-part", st.RUNNING, at(4.25), None, heartbeat=at(4.75),
             resource=RESOURCE),
        placeholder(GHOST),
        Task(ORPHAN, GHOST, "orphan", st.OK, at(2), at(2.5), resource=RESOURCE),
    ], job="nightly", dropped=7)


def counts(ok=0, error=0, running=0, stalled=0) -> dict:
    return {"ok": ok, "error": error, "running": running, "stalled": stalled}


ROOT_NODE = {
    "span_id": ROOT, "parent_span_id": None, "name": "nightly-report", "status": "ok",
    "start": "2026-11-26T17:33:26.123456789Z", "end": "2026-11-26T17:33:36.123456789Z",
    "duration": 10.0, "child_count": 2, "counts": counts(ok=1, error=1, running=1),
    "missing": False, "last_heartbeat": None, "refused_parent": None, "status_message": None,
}
GHOST_NODE = {
    "span_id": GHOST, "parent_span_id": None, "name": None, "status": "missing", "start": None,
    "end": None, "duration": None, "child_count": 1, "counts": counts(ok=1), "missing": True,
    "last_heartbeat": None, "refused_parent": None, "status_message": None,
}
RUN = {
    "trace_id": TRACE, "job": "nightly", "name": "nightly-report", "status": "ok",
    "start": "2026-11-26T17:33:26.123456789Z", "end": "2026-11-26T17:33:36.123456789Z",
    "duration": 10.0, "counts": counts(ok=3, error=1, running=1), "task_count": 5,
    "root_count": 1, "dropped_spans": 7,
}


# ---------------------------------------------------------------------------------------------
# One run, one task, children: exact JSON


def test_run_shows_summary_and_real_root_then_missing_placeholder(client, db):
    sample_run(db)
    assert get_json(client, f"/api/runs/{TRACE}") == {
        **RUN, "roots": [ROOT_NODE, GHOST_NODE], "roots_next_cursor": None}


def test_run_lookup_accepts_uppercase_ids_and_answers_lowercase(client, db):
    sample_run(db)
    assert get_json(client, f"/api/runs/{TRACE.upper()}")["trace_id"] == TRACE


def test_task_detail_has_node_payload_resource_and_event_times(client, db):
    sample_run(db)
    assert get_json(client, f"/api/runs/{TRACE}/tasks/{LOAD}") == {
        "span_id": LOAD, "parent_span_id": ROOT, "name": "load", "status": "error",
        "start": "2026-11-26T17:33:30.123456789Z", "end": "2026-11-26T17:33:31.123456789Z",
        "duration": 1.0, "child_count": 1, "counts": counts(running=1), "missing": False,
        "last_heartbeat": None, "refused_parent": None,
        "trace_id": TRACE, "job": "nightly", "kind": "client", "scope": "tests",
        "status_message": "disk full on /var", "truncated": False,
        "attributes": {"table": "orders_2026", "rows": 12},
        "resource": RESOURCE,
        "events": [{"name": "retry", "attributes": {"attempt": 2},
                    "time": "2026-11-26T17:33:30.623456789Z"}],
        "links": [{"trace_id": "b2" * 16, "span_id": "c3" * 8, "attributes": {}}],
    }


def test_running_task_has_no_end_or_duration_but_its_last_heartbeat(client, db):
    sample_run(db)
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{PART}")
    assert (body["status"], body["end"], body["duration"]) == ("running", None, None)
    assert body["last_heartbeat"] == "2026-11-26T17:33:30.873456789Z"


def test_placeholder_detail_is_marked_missing_with_empty_payload(client, db):
    sample_run(db)
    assert get_json(client, f"/api/runs/{TRACE}/tasks/{GHOST}") == {
        **GHOST_NODE, "trace_id": TRACE, "job": None, "kind": None, "scope": None,
        "status_message": None, "truncated": False, "attributes": {},
        "resource": None, "events": [], "links": [],
    }


def test_children_of_root_in_start_order(client, db):
    sample_run(db)
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children")
    assert body["next_cursor"] is None
    assert [c["span_id"] for c in body["children"]] == [EXTRACT, LOAD]
    assert body["children"][1] == {
        "span_id": LOAD, "parent_span_id": ROOT, "name": "load", "status": "error",
        "start": "2026-11-26T17:33:30.123456789Z", "end": "2026-11-26T17:33:31.123456789Z",
        "duration": 1.0, "child_count": 1, "counts": counts(running=1), "missing": False,
        "last_heartbeat": None, "refused_parent": None, "status_message": "disk full on /var",
    }


def test_a_failed_node_says_why_in_short_and_its_task_in_full(client, db):
    long = "ValueError: " + "bad row " * 60
    insert_run(db, TRACE, [
        Task(ROOT, None, "main", st.ERROR, at(0), at(9), message=long),
        Task(EXTRACT, ROOT, "fine", st.OK, at(1), at(2), message="nothing wrong"),
    ])
    root = get_json(client, f"/api/runs/{TRACE}")["roots"][0]
    assert root["status_message"] == long[:200] + "…"
    assert get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}")["status_message"] == long
    (fine,) = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children")["children"]
    assert fine["status_message"] is None  # a message on a task that did not fail says no why


def test_children_of_placeholder_are_the_orphans(client, db):
    sample_run(db)
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{GHOST}/children")
    assert [(c["span_id"], c["parent_span_id"]) for c in body["children"]] == [(ORPHAN, GHOST)]


def test_leaf_has_an_empty_children_page(client, db):
    sample_run(db)
    assert get_json(client, f"/api/runs/{TRACE}/tasks/{EXTRACT}/children") == {
        "children": [], "next_cursor": None}


@pytest.mark.parametrize("url", [
    f"/api/runs/{'ee' * 16}",
    f"/api/runs/{TRACE}/tasks/{'ee' * 8}",
    f"/api/runs/{TRACE}/tasks/{'ee' * 8}/children",
    f"/api/runs/{'ee' * 16}/tasks/{ROOT}",
])
def test_unknown_run_or_task_is_404(client, db, url):
    sample_run(db)
    assert get_json(client, url, 404)["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------------------------
# Children pagination


def wide_node(db, n: int = 23) -> list[str]:
    """A root with ``n`` children whose start times tie in threes; returns the expected order."""
    kids = [Task(f"{(i * 7919) % 1000 + 10:016x}", ROOT, f"kid-{i}", st.OK, at(i // 3),
                 at(i // 3 + 1)) for i in range(n)]
    insert_run(db, TRACE, [Task(ROOT, None, "root", st.OK, at(0), at(60))] + kids)
    return [k.span for k in sorted(kids, key=lambda k: (k.start, k.span))]


@pytest.mark.parametrize("limit", [1, 4, 7, 23, 1000])
def test_children_pages_cover_every_child_once_in_order(client, db, limit):
    expected = wide_node(db)
    pages = walk(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children", "children", limit=limit)
    assert [c["span_id"] for page in pages for c in page] == expected


def test_children_default_page_is_100(client, db):
    wide_node(db, 150)
    body = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children")
    assert len(body["children"]) == 100 and body["next_cursor"]


# ---------------------------------------------------------------------------------------------
# Top-level tasks, paged like children


def many_tops(db, n: int, placeholders: int = 0) -> list[str]:
    """A run of ``n`` top-level tasks (starts tying in threes) and ``placeholders`` missing
    parents (each with one orphan); returns the expected order: by start, then placeholders."""
    tops = [Task(f"{(i * 7919) % 100_000 + 10:016x}", None, f"top-{i}", st.OK, at(i // 3),
                 at(i // 3 + 1)) for i in range(n)]
    ghosts = [placeholder(f"{0xF000_0000 + i:016x}") for i in range(placeholders)]
    orphans = [Task(f"{0xE000_0000 + i:016x}", g.span, "orphan") for i, g in enumerate(ghosts)]
    insert_run(db, TRACE, tops + ghosts + orphans)
    return [t.span for t in sorted(tops, key=lambda t: (t.start, t.span))] + [
        g.span for g in ghosts]


@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_top_level_pages_cover_every_task_once_then_placeholders(client, db, limit):
    expected = many_tops(db, 20, placeholders=5)
    pages = walk(client, f"/api/runs/{TRACE}", "roots", limit=limit, cursor_key="roots_next_cursor")
    assert [t["span_id"] for page in pages for t in page] == expected


def test_every_one_of_5000_top_level_tasks_is_reachable(client, db):
    expected = many_tops(db, 5000, placeholders=2)
    first = get_json(client, f"/api/runs/{TRACE}")
    assert len(first["roots"]) == 1000 and first["roots_next_cursor"]  # the default page
    pages = walk(client, f"/api/runs/{TRACE}", "roots", limit=1000, cursor_key="roots_next_cursor")
    assert [t["span_id"] for page in pages for t in page] == expected


def test_a_children_cursor_is_refused_for_top_level_tasks(client, db):
    wide_node(db, 5)
    cursor = get_json(client, f"/api/runs/{TRACE}/tasks/{ROOT}/children?limit=2")["next_cursor"]
    body = get_json(client, f"/api/runs/{TRACE}?cursor={cursor}", 400)
    assert "cursor" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------
# Runs list


def many_runs(db) -> list[str]:
    """Twelve runs over three jobs, starts tying in pairs; returns trace ids newest first."""
    runs = []
    for i in range(12):
        trace = f"{(i * 37) % 256:02x}" + f"{i:030x}"
        job = ("alpha", "beta", "gamma")[i % 3]
        status = st.ERROR if i % 4 == 0 else st.OK
        insert_run(db, trace, [Task(ROOT, None, f"{job}-main", status, at(i // 2), at(i // 2 + 1))],
                   job=job)
        runs.append((at(i // 2), trace))
    return [trace for _, trace in sorted(runs, reverse=True)]


def run_ids(body: dict) -> list[str]:
    return [r["trace_id"] for r in body["runs"]]


def test_runs_list_is_newest_first_ties_by_trace_id_descending(client, db):
    expected = many_runs(db)
    body = get_json(client, "/api/runs")
    assert run_ids(body) == expected and body["next_cursor"] is None


def test_runs_list_entry_is_the_run_shape(client, db):
    sample_run(db)
    assert get_json(client, "/api/runs") == {"runs": [RUN], "next_cursor": None}


@pytest.mark.parametrize("limit", [1, 5, 12])
def test_runs_pages_cover_every_run_once_in_order(client, db, limit):
    expected = many_runs(db)
    pages = walk(client, "/api/runs", "runs", limit=limit)
    assert [r["trace_id"] for page in pages for r in page] == expected


def test_runs_pages_with_filters_keep_the_filters(client, db):
    expected = [t for t in many_runs(db) if int(t[2:], 16) % 3 == 1]  # job beta
    pages = walk(client, "/api/runs?job=beta", "runs", limit=2)
    assert [r["trace_id"] for page in pages for r in page] == expected


@pytest.mark.parametrize(("query", "indexes"), [
    ("job=gamma", [11, 8, 5, 2]),
    ("status=error", [8, 4, 0]),
    ("job=alpha&status=error", [0]),
    ("job=nobody", []),
    ("from=2026-11-26T17:33:30.123456789Z", [11, 10, 9, 8]),  # starts at +4 s and +5 s
    ("to=2026-11-26T17:33:27.123456789Z", [1, 0]),  # before +1 s: the end is exclusive
    (f"from={T0 // SECOND + 2}&to={T0 // SECOND + 4}", [7, 6, 5, 4]),  # Unix seconds
    ("from=2026-11-26T18:33:29.123456789%2B01:00&to=2026-11-26T17:33:30.123456789Z", [7, 6]),
])
def test_runs_filters(client, db, query, indexes):
    expected = {f"{(i * 37) % 256:02x}" + f"{i:030x}" for i in indexes}
    many_runs(db)
    assert set(run_ids(get_json(client, f"/api/runs?{query}"))) == expected


def test_runs_search_box_takes_a_full_trace_id(client, db):
    traces = many_runs(db)
    assert run_ids(get_json(client, f"/api/runs?q={traces[3].upper()}")) == [traces[3]]


@pytest.mark.parametrize("prefix_length", [1, 3, 6, 31])
def test_runs_search_box_takes_a_trace_id_prefix_of_any_length(client, db, prefix_length):
    traces = many_runs(db)
    prefix = traces[5][:prefix_length]
    expected = [t for t in traces if t.startswith(prefix)]
    assert run_ids(get_json(client, f"/api/runs?q={prefix}")) == expected


@pytest.mark.parametrize(("q", "jobs"), [
    ("gamma", {"gamma"}),
    ("GAM", {"gamma"}),  # a word prefix, any case
    ("beta-main", {"beta"}),  # the run name
    ("main al", {"alpha"}),  # every word must match
    ("zeta", set()),
    ("%", set()),  # no word at all: nothing
])
def test_runs_search_box_takes_words_of_job_and_name(client, db, q, jobs):
    many_runs(db)
    body = get_json(client, f"/api/runs?q={q.replace('%', '%25')}")
    assert {r["job"] for r in body["runs"]} == jobs
    assert len(body["runs"]) == 4 * len(jobs)


def test_runs_search_box_in_quotes_is_words_even_when_hex(client, db):
    insert_run(db, "cafe" + "0" * 28, [Task(ROOT, None, "main")], job="backup")
    insert_run(db, "0" * 31 + "1", [Task(ROOT, None, "main")], job="cafe-sync")
    assert [r["job"] for r in get_json(client, "/api/runs?q=cafe")["runs"]] == ["backup"]
    assert [r["job"] for r in get_json(client, '/api/runs?q="cafe"')["runs"]] == ["cafe-sync"]


@pytest.mark.parametrize(("q", "found"), [
    ("nightly", ["etl.nightly"]),  # the parser kept "etl.nightly" whole, as a host name
    ("generate", ["etl.nightly"]),  # and "report/generate", as a file name
    ("etl.night", ["etl.nightly"]),  # a query's words are split the same way
    ("load", ["ops"]),
    ("db 3", ["ops"]),
    ("part", ["ops"]),
    ("x", ["x:y"]),
])
def test_runs_search_box_splits_words_at_punctuation_as_task_search_does(client, db, q, found):
    insert_run(db, "1" * 32, [Task(ROOT, None, "report/generate")], job="etl.nightly")
    insert_run(db, "2" * 32, [Task(ROOT, None, "load_all@db-3+part")], job="ops")
    insert_run(db, "3" * 32, [Task(ROOT, None, "main")], job="x:y")
    assert [r["job"] for r in get_json(client, f"/api/runs?q={q}")["runs"]] == found


def test_runs_search_words_are_split_by_the_characters_task_search_splits_at(db):
    """The runs' words are split in SQL (migration 0016), the tasks' in search.py: one rule."""
    every_ascii = "".join(chr(c) for c in range(1, 128))
    in_sql = db.execute("SELECT punctuation_to_spaces(%s)", (every_ascii,)).fetchone()[0]
    assert in_sql.lower().split() == document_words(every_ascii).split()


def test_blank_search_box_and_job_filter_nothing(client, db):
    expected = many_runs(db)
    assert run_ids(get_json(client, "/api/runs?q=%20&job=")) == expected


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_runs_without_a_start_come_first_and_pages_cross_into_started_ones(client, db, limit):
    started = many_runs(db)
    unstarted = ["ff" * 16, "fe" * 16, "01" * 16]  # newest first: trace id descending
    for trace in unstarted:
        insert_run(db, trace, [Task(ROOT, None, "main")])
        db.execute("UPDATE runs SET start_ns = NULL WHERE trace_id = %s", (bytes.fromhex(trace),))
    pages = walk(client, "/api/runs", "runs", limit=limit)
    assert [r["trace_id"] for page in pages for r in page] == unstarted + started
    assert (pages[0][0]["start"], pages[0][0]["duration"]) == (None, None)
