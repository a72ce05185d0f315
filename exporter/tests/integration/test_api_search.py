"""JSON API: task search by id (prefix), keywords, job, status and time, on real PostgreSQL."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from tasktree.exporter.tree import status as st

from .api_support import (
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


RUN_A, RUN_B = "a1" * 16, "b2" * 16
ETL = {"service.name": "etl", "host.name": "box-1"}
REPORT = {"service.name": "report"}


def two_runs(db) -> None:
    """Run A (job etl, one task from another service) and run B (job report), interleaved."""
    insert_run(db, RUN_A, [
        Task("aa00000000000001", None, "etl-main", st.OK, at(0), at(100), resource=ETL),
        Task("aa00000000000002", "aa00000000000001", "extract orders", st.OK, at(10), at(20),
             attributes={"table": "orders_2026", "shard": 3}, resource=ETL),
        Task("ab00000000000003", "aa00000000000001", "load", st.ERROR, at(30), at(40),
             message="disk full on /var/lib", resource=ETL),
        Task("ab10000000000004", "aa00000000000001", "notify", st.RUNNING, at(50), None,
             heartbeat=at(55), resource=REPORT),
    ], job="etl")
    insert_run(db, RUN_B, [
        Task("bb00000000000001", None, "report-main", st.OK, at(5), at(95), resource=REPORT),
        Task("abc0000000000002", "bb00000000000001", "render pdf", st.STALLED, at(25), None,
             heartbeat=at(26), attributes={"template": "monthly-sales"}, resource=REPORT),
    ], job="report")


def found(body: dict) -> list[tuple[str, str]]:
    """(trace id prefix, span id) of each hit, in order."""
    return [(t["trace_id"][:2], t["span_id"]) for t in body["tasks"]]


def test_search_hit_is_node_plus_trace_id_and_job(client, db):
    two_runs(db)
    body = get_json(client, "/api/search?q=render")
    assert body == {"tasks": [{
        "span_id": "abc0000000000002", "parent_span_id": "bb00000000000001", "name": "render pdf",
        "status": "stalled", "start": "2026-11-26T17:33:51.123456789Z", "end": None,
        "duration": None, "child_count": 0,
        "counts": {"ok": 0, "error": 0, "running": 0, "stalled": 0}, "missing": False,
        "last_heartbeat": "2026-11-26T17:33:52.123456789Z", "refused_parent": None,
        "status_message": None, "trace_id": RUN_B, "job": "report",
    }], "next_cursor": None}


def test_no_query_lists_every_task_newest_first(client, db):
    two_runs(db)
    assert found(get_json(client, "/api/search")) == [
        ("a1", "ab10000000000004"), ("a1", "ab00000000000003"), ("b2", "abc0000000000002"),
        ("a1", "aa00000000000002"), ("b2", "bb00000000000001"), ("a1", "aa00000000000001"),
    ]


def test_no_query_lists_no_placeholder(client, db):
    """A run whose root names a parent never sent (tasktree-run under CI's TRACEPARENT): its
    placeholder, with no start time, stood above every task of the newest-first list for good."""
    two_runs(db)
    insert_run(db, "cc" * 16, [
        placeholder("cc000000000000f1"),
        Task("cc00000000000011", "cc000000000000f1", "ci-step", st.OK, at(-3600), at(-3500)),
    ], job="ci")  # fmt: skip
    listed = found(get_json(client, "/api/search"))
    assert listed[0] == ("a1", "ab10000000000004") and listed[-1] == ("cc", "cc00000000000011")
    assert ("cc", "cc000000000000f1") not in listed
    assert ("cc", "cc000000000000f1") in found(get_json(client, "/api/search?q=" + "cc" * 16))


@pytest.mark.parametrize(("q", "expected"), [
    ("orders", [("a1", "aa00000000000002")]),  # a word of an attribute value
    ("orders_2026", [("a1", "aa00000000000002")]),
    ("table", [("a1", "aa00000000000002")]),  # an attribute key
    ("monthly-sal", [("b2", "abc0000000000002")]),  # a prefix of a hyphenated value
    ("disk full", [("a1", "ab00000000000003")]),  # the status message, every word
    ("DISK fu", [("a1", "ab00000000000003")]),  # any case, the last word a prefix
    ("disk orders", []),  # words in different tasks do not match
    ("main", [("b2", "bb00000000000001"), ("a1", "aa00000000000001")]),  # names, newest first
    ("it's a 'quote' & | ! :* (x", []),  # tsquery syntax is just text
    ("!!!", []),  # no word at all
])
def test_keywords_match_name_attributes_and_status_message(client, db, q, expected):
    two_runs(db)
    assert found(get_json(client, "/api/search?" + urlencode({"q": q}))) == expected


def test_full_trace_id_finds_the_runs_top_level_tasks(client, db):
    two_runs(db)
    assert found(get_json(client, f"/api/search?q={RUN_B.upper()}")) == [("b2", "bb00000000000001")]


def test_trace_id_search_shows_placeholders_first_as_time_unknown(client, db):
    insert_run(db, RUN_A, [
        Task("0000000000000001", None, "main", st.OK, at(0), at(9)),
        placeholder("00000000000000f1"),
        Task("0000000000000011", "00000000000000f1", "orphan", st.OK, at(1), at(2)),
    ])
    assert found(get_json(client, f"/api/search?q={RUN_A}")) == [
        ("a1", "00000000000000f1"), ("a1", "0000000000000001")]


@pytest.mark.parametrize(("q", "expected"), [
    ("ab", [("a1", "ab10000000000004"), ("a1", "ab00000000000003"), ("b2", "abc0000000000002")]),
    ("abc", [("b2", "abc0000000000002")]),  # an odd number of digits
    ("ab1", [("a1", "ab10000000000004")]),
    ("AB000000000000", [("a1", "ab00000000000003")]),
    ("ab00000000000003", [("a1", "ab00000000000003")]),  # a whole span id
    ("b", [("b2", "bb00000000000001")]),  # both the root's span id and its run's trace id: once
    ("a1a", [("a1", "aa00000000000001")]),  # run A's id only (no span id starts so)
    ("a1a1a1a1a1a1a1a1a1", [("a1", "aa00000000000001")]),  # longer than a span id
    ("dd", []),
])
def test_hex_finds_span_id_prefixes_and_trace_id_prefixes(client, db, q, expected):
    two_runs(db)
    assert found(get_json(client, f"/api/search?q={q}")) == expected


def test_hex_in_quotes_is_a_keyword(client, db):
    two_runs(db)
    insert_run(db, "cc" * 16, [Task("cc00000000000001", None, "add", st.OK, at(1), at(2))], job="x")
    assert found(get_json(client, '/api/search?q="add"')) == [("cc", "cc00000000000001")]
    assert found(get_json(client, "/api/search?q=add")) == []


@pytest.mark.parametrize(("query", "expected"), [
    ("job=report", ["ab10000000000004", "abc0000000000002", "bb00000000000001"]),  # the task's job
    ("job=etl&q=main", ["aa00000000000001"]),
    ("status=error", ["ab00000000000003"]),
    ("status=running&job=report", ["ab10000000000004"]),
    ("from=2026-11-26T17:33:51.123456789Z&to=2026-11-26T17:34:16.123456789Z",  # [+25 s, +50 s)
     ["ab00000000000003", "abc0000000000002"]),
    (f"from={(T0 + 40 * 10**9) / 10**9:.9f}", ["ab10000000000004"]),  # Unix seconds
    ("q=ab&status=stalled", ["abc0000000000002"]),
    ("q=main&to=2026-11-26T17:33:32Z", ["bb00000000000001", "aa00000000000001"]),
])
def test_filters(client, db, query, expected):
    two_runs(db)
    assert [t["span_id"] for t in get_json(client, f"/api/search?{query}")["tasks"]] == expected


# ---------------------------------------------------------------------------------------------
# Pagination


def crowd(trace: str = RUN_A) -> list[Task]:
    """A root, four placeholders and 30 tasks under them whose starts tie in fives."""
    tasks = [Task("f000000000000000", None, "crowd", st.OK, at(0), at(99))]
    tasks += [placeholder(f"e{i:015x}") for i in range(4)]
    tasks += [Task(f"{(i * 13) % 64 + 1:016x}", f"e{i % 4:015x}", "crowd", st.OK, at(i // 5),
                   at(50)) for i in range(30)]
    return tasks


def newest_first(runs: dict[str, list[Task]]) -> list[tuple[str, str]]:
    """(trace id, span id) of the recorded tasks in search order: start desc, trace, span."""
    keys = [(-t.start, trace, t.span)
            for trace, tasks in runs.items() for t in tasks if not t.missing]
    return [(trace, span) for _, trace, span in sorted(keys)]


@pytest.mark.parametrize("limit", [1, 4, 7, 31])
def test_keyword_pages_cover_every_hit_once_in_order(client, db, limit):
    insert_run(db, RUN_A, crowd())
    pages = walk(client, "/api/search?q=crowd", "tasks", limit=limit)
    got = [(t["trace_id"], t["span_id"]) for page in pages for t in page]
    assert got == newest_first({RUN_A: crowd()})


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_trace_id_pages_cross_from_placeholders_to_started_tasks(client, db, limit):
    insert_run(db, RUN_A, crowd())
    pages = walk(client, f"/api/search?q={RUN_A[:5]}", "tasks", limit=limit)
    assert [t["span_id"] for page in pages for t in page] == [
        "e000000000000000", "e000000000000001", "e000000000000002", "e000000000000003",
        "f000000000000000"]


@pytest.mark.parametrize("limit", [3, 6, 7])
def test_pages_over_runs_with_equal_starts_order_by_trace_then_span(client, db, limit):
    insert_run(db, RUN_B, crowd())
    insert_run(db, RUN_A, crowd())
    pages = walk(client, "/api/search?q=crowd", "tasks", limit=limit)
    got = [(t["trace_id"], t["span_id"]) for page in pages for t in page]
    assert got == newest_first({RUN_A: crowd(), RUN_B: crowd()})
