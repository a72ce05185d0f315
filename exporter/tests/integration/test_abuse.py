"""Abuse (issue 7): parent loops, a 100,000-deep chain, a million children, ids of wrong length or
all zeros, times far in the future or before 1970.  Each is stored or refused with a clear
reason, the tree stays consistent, and every page still renders: the API routes and the pages
``/``, ``/runs/<id>``, ``/runs/<id>/tasks/<id>`` and ``/search?q=`` answer 200 or 4xx, never 5xx.

The tree tests fold by hand (``store_database_url``) and read the pages through the app in
process; the ingest tests send OTLP to a real ``tasktree serve``.  Time is never asserted: a
request that does not finish within ``otlp_fuzz.HANG_SECONDS`` fails as a hang.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tasktree.exporter.app import create_app
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import open_pool
from tasktree.exporter.tree import status as st

from ..otlp_fuzz import HANG_SECONDS, check_decoding, no_hang, requests
from ..spans import deliver, sid, span, tid
from ..ui.browser import ARTIFACTS
from .abuse_data import DEPTH_LIMIT, INT64_MAX, seed, send_protobuf
from .abuse_data import T0 as T_OK

# ---------------------------------------------------------------------------------------------
# Folding by hand, reading in process


@pytest.fixture
def conn(clean_store_db):
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def store_pool(store_database_url):
    pool = open_pool(store_database_url, max_size=2)
    pool.wait()
    yield pool
    pool.close()


@pytest.fixture
def client(conn, store_pool, tmp_path):
    """The service's whole web app (as ``tasktree serve`` builds it) on the hand-folded store."""
    return create_app(Settings(data_dir=tmp_path), store_pool).test_client()


def get(client, url: str, *, status: int | None = 200):
    """GET ``url`` in process (a hang fails the test); assert the status, or just not 5xx."""
    with no_hang(HANG_SECONDS):
        response = client.get(url)
    if status is None:
        assert response.status_code < 500, (url, response.status_code)
    else:
        assert response.status_code == status, (
            url,
            response.status_code,
            response.get_data(as_text=True)[:300],
        )
    return (
        response.get_json()
        if response.mimetype == "application/json"
        else (response.get_data(as_text=True))
    )


def tree_problems(conn, trace: bytes, max_depth: int) -> list:
    """Whatever breaks the tree's promises for run ``trace`` (empty when all is well):
    a child count or rollup that differs from the children's, a parent that is not stored, a
    task deeper than ``max_depth``, or a run summary that does not add up."""
    problems = conn.execute(
        """
        WITH kids AS (
            SELECT parent_span_id AS span_id, count(*) AS n,
                   sum(n_ok + (status = 3)::int) AS ok, sum(n_error + (status = 4)::int) AS err,
                   sum(n_running + (status = 1)::int) AS run,
                   sum(n_stalled + (status = 2)::int) AS stl
            FROM tasks WHERE trace_id = %(t)s AND parent_span_id IS NOT NULL GROUP BY 1)
        SELECT 'rollup', t.span_id FROM tasks t LEFT JOIN kids k USING (span_id)
        WHERE t.trace_id = %(t)s AND (t.child_count, t.n_ok, t.n_error, t.n_running, t.n_stalled)
              IS DISTINCT FROM (coalesce(k.n, 0), coalesce(k.ok, 0), coalesce(k.err, 0),
                                coalesce(k.run, 0), coalesce(k.stl, 0))
        UNION ALL
        SELECT 'dangling', c.span_id FROM tasks c
        WHERE c.trace_id = %(t)s AND c.parent_span_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM tasks p WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)
        """,
        {"t": trace},
    ).fetchall()
    deepest = conn.execute(
        """
        WITH RECURSIVE down AS (
            SELECT span_id, 1 AS level FROM tasks WHERE trace_id = %(t)s AND parent_span_id IS NULL
            UNION ALL
            SELECT c.span_id, d.level + 1 FROM down d
            JOIN tasks c ON c.trace_id = %(t)s AND c.parent_span_id = d.span_id
            WHERE d.level <= %(limit)s)
        SELECT max(level), count(*) FROM down""",
        {"t": trace, "limit": max_depth},
    ).fetchone()
    stored = conn.execute("SELECT count(*) FROM tasks WHERE trace_id = %s", (trace,)).fetchone()[0]
    if deepest[0] > max_depth:
        problems.append(("too deep", deepest[0]))
    if deepest[1] != stored:
        problems.append(("unreachable from a top-level task", stored - deepest[1]))
    run = conn.execute(
        "SELECT task_count, n_ok + n_error + n_running + n_stalled FROM runs WHERE trace_id = %s",
        (trace,),
    ).fetchone()
    real = conn.execute(
        "SELECT count(*) FROM tasks WHERE trace_id = %s AND NOT missing", (trace,)
    ).fetchone()[0]
    if run != (real, real):
        problems.append(("run summary", run, real))
    return problems


def refused(conn, trace: bytes) -> dict:
    rows = conn.execute(
        "SELECT span_id, refused_parent_span_id, refused_reason, parent_span_id"
        " FROM tasks WHERE trace_id = %s AND refused_parent_span_id IS NOT NULL",
        (trace,),
    )
    return {bytes(s): (bytes(p), r, q) for s, p, r, q in rows}


def structure(conn, trace: bytes) -> dict:
    rows = conn.execute(
        "SELECT span_id, parent_span_id, refused_parent_span_id, missing, status,"
        " child_count, n_ok, n_error FROM tasks WHERE trace_id = %s",
        (trace,),
    )
    return {bytes(r[0]): (r[1] and bytes(r[1]), r[2] and bytes(r[2]), *r[3:]) for r in rows}


def renders(conn, client, trace: bytes, spans: list[bytes]) -> None:
    """The run's pages and each task's pages answer; nothing is a server error."""
    t = trace.hex()
    get(client, f"/api/runs/{t}")
    get(client, f"/runs/{t}")
    get(client, "/")
    for s in (x.hex() for x in spans):
        get(client, f"/api/runs/{t}/tasks/{s}")
        get(client, f"/api/runs/{t}/tasks/{s}/children?limit=1000")
        get(client, f"/runs/{t}/tasks/{s}")
        get(client, f"/runs/{t}?node={s}")
        search_opens_a_task_found_once(conn, client, t, s)
        get(client, f"/api/search?q={s}")


def search_opens_a_task_found_once(conn, client, trace: str, span: str) -> None:
    """``/search?q=<span id>``: an id stored once redirects to its task's page; an id several
    runs share (the same records folded in several orders) lists them instead."""
    stored = conn.execute(
        "SELECT count(*) FROM tasks WHERE span_id = %s", (bytes.fromhex(span),)
    ).fetchone()[0]
    with no_hang(HANG_SECONDS):
        response = client.get(f"/search?q={span}")
    if stored == 1:
        assert response.status_code == 302, (span, response.status_code)
        assert response.location.endswith(f"/runs/{trace}/tasks/{span}"), response.location
    else:
        assert response.status_code == 200, (span, response.status_code)
        assert span in response.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------
# Parent loops


LOOP = [  # 1 -> 2 -> 1 under nothing; 3 -> 4 -> 5 -> 3 with 6 (a child of 4) failing; 8 its own
    (1, 2, st.OK),
    (2, 1, st.OK),
    (3, 5, st.OK),
    (4, 3, st.OK),
    (5, 4, st.OK),
    (6, 4, st.ERROR),
    (8, 8, st.RUNNING),
]


def _loop_rows(trace: bytes, order: list) -> list:
    return [
        span(
            trace,
            sid(n),
            sid(p),
            status=status,
            start=1_000 + n,
            name=f"loop {n}",
            heartbeat=time.time_ns(),
        )
        for n, p, status in order
    ]


@pytest.mark.parametrize("split", ["one batch", "one span per batch"])
def test_parent_loops_are_stored_with_the_smallest_ids_link_refused_in_any_order(
    conn, client, split
):
    rng = random.Random(11)
    orders = [LOOP, LOOP[::-1], *(rng.sample(LOOP, len(LOOP)) for _ in range(4))]
    seen = []
    for n, order in enumerate(orders):
        trace = tid(100 + n)
        rows = _loop_rows(trace, order)
        deliver(conn, *([rows] if split == "one batch" else [[r] for r in rows]))
        assert tree_problems(conn, trace, 1000) == []
        seen.append(structure(conn, trace))
    assert all(s == seen[0] for s in seen)  # the same tree whatever the order

    trace = tid(100)
    assert refused(conn, trace) == {  # in each loop the task with the smallest id keeps none
        sid(1): (sid(2), 1, None),
        sid(3): (sid(5), 1, None),
        sid(8): (sid(8), 1, None),
    }
    three = get(client, f"/api/runs/{trace.hex()}/tasks/{sid(3).hex()}")
    assert three["refused_parent"] == {"span_id": sid(5).hex(), "reason": "cycle"}
    assert three["parent_span_id"] is None and three["counts"] == {
        "ok": 2,
        "error": 1,
        "running": 0,
        "stalled": 0,
    }  # 4, 5 and the failed 6
    roots = get(client, f"/api/runs/{trace.hex()}")["roots"]
    assert {r["span_id"] for r in roots} == {sid(1).hex(), sid(3).hex(), sid(8).hex()}
    page = get(client, f"/runs/{trace.hex()}/tasks/{sid(3).hex()}")
    assert "declared parent" in page and sid(5).hex() in page and "loop back" in page
    renders(conn, client, trace, [sid(n) for n, _, _ in LOOP])


def test_a_loop_closed_by_a_later_batch_moves_the_cut_to_the_smallest_id(conn, client):
    trace = tid(120)
    # 1 -> 2 arrives first (2 a placeholder); then 2 -> 3 and 3 -> 1 close the loop later.
    deliver(conn, [span(trace, sid(1), sid(2), start=1)], [span(trace, sid(2), sid(3), start=2)])
    assert refused(conn, trace) == {}
    deliver(conn, [span(trace, sid(3), sid(1), start=3)])
    assert refused(conn, trace) == {sid(1): (sid(2), 1, None)}
    assert structure(conn, trace)[sid(1)][3:] == (st.OK, 1, 2, 0)  # 3 under 1, 2 under 3
    assert tree_problems(conn, trace, 1000) == []


# ---------------------------------------------------------------------------------------------
# Fuzzed requests, stored


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_rows_of_fuzzed_requests_land_and_fold_into_consistent_trees(conn, request):
    batch = check_decoding(request.SerializeToString(), "protobuf", measure_memory=False)
    deliver(conn, batch.spans)
    for trace in {row.trace_id for row in batch.spans}:
        assert tree_problems(conn, trace, 1000) == []


# ---------------------------------------------------------------------------------------------
# A 100,000-deep chain


CHAIN = 100_000
LIMIT = 50
"""The depth limit for the chain tests: the cost per record is O(limit), so a small one keeps
the test quick; the default (1000) behaves the same (bench/deep_tree.py measures it)."""


@pytest.mark.parametrize("order", ["parents first", "random"])
def test_a_100000_deep_chain_is_stored_whole_in_trees_within_the_depth_limit(conn, client, order):
    trace = tid(200 if order == "parents first" else 201)
    rows = [
        span(
            trace,
            sid(i),
            sid(i - 1) if i else None,
            start=1_000 + i,
            end=10**9 - i,
            name=f"level {i}",
        )
        for i in range(CHAIN)
    ]
    if order == "random":
        random.Random(3).shuffle(rows)
    deliver(conn, *[rows[i : i + 5000] for i in range(0, CHAIN, 5000)], max_depth=LIMIT)

    assert tree_problems(conn, trace, LIMIT) == []  # every tree within the limit, rollups right
    cuts = refused(conn, trace)
    assert len(cuts) >= CHAIN // LIMIT - 1
    assert all(
        parent == sid(int.from_bytes(s, "big") - 2) and reason == 2 and now is None
        for s, (parent, reason, now) in cuts.items()
    )  # each cut keeps its true parent
    run = get(client, f"/api/runs/{trace.hex()}")
    assert run["task_count"] == CHAIN and run["root_count"] == len(cuts) + 1
    assert len(run["roots"]) == min(1000, len(cuts) + 1)  # the first 1000 shown
    cut = next(iter(cuts))
    task = get(client, f"/api/runs/{trace.hex()}/tasks/{cut.hex()}")
    assert task["refused_parent"] == {"span_id": cuts[cut][0].hex(), "reason": "depth"}
    assert "deeper than this server" in get(client, f"/runs/{trace.hex()}/tasks/{cut.hex()}")
    renders(conn, client, trace, [sid(0), sid(CHAIN // 2), sid(CHAIN - 1), cut])


def test_a_chain_within_the_limit_is_never_cut_whatever_the_order(conn):
    for n in range(3):
        trace = tid(210 + n)
        rows = [
            span(trace, sid(i), sid(i - 1) if i else None, start=1_000 + i) for i in range(LIMIT)
        ]
        random.Random(n).shuffle(rows)
        deliver(conn, *[rows[i : i + 7] for i in range(0, LIMIT, 7)], max_depth=LIMIT)
        assert refused(conn, trace) == {} and tree_problems(conn, trace, LIMIT) == []


# ---------------------------------------------------------------------------------------------
# A million children


MILLION = 1_000_000
WIDE = bytes.fromhex("c0ffee00" * 4)


def _million_children(conn) -> None:
    """One root with a million finished children, written in SQL as the folder would leave them
    (generated: folding them one by one is not what this test is about)."""
    conn.execute(
        "INSERT INTO resources (digest, job, attributes) VALUES ('\\xc0ffee', 'wide',"
        ' \'{"service.name": "wide"}\') ON CONFLICT DO NOTHING'
    )
    (resource,) = conn.execute("SELECT id FROM resources WHERE digest = '\\xc0ffee'").fetchone()
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO tasks (trace_id, span_id, parent_span_id, name, kind, status, start_ns,
                               end_ns, status_message, resource_id, scope, attributes, events,
                               links, received_ns, search)
            SELECT %(t)s, int8send(i + 1), CASE WHEN i = 0 THEN NULL ELSE int8send(1) END,
                   name, 1, CASE WHEN i %% 1000 = 7 THEN 4 ELSE 3 END, 1000 + i / 3,
                   10000000 + i, '', %(r)s, 'gen', '{}', '[]', '[]', 1,
                   array_to_tsvector(string_to_array(name, ' '))  -- its words (search.py)
            FROM generate_series(0, %(n)s) AS i,
                 LATERAL (SELECT CASE WHEN i = 0 THEN 'wide root' ELSE 'child ' || i END) AS n(name)
            """,
            {"t": WIDE, "r": resource, "n": MILLION},
        )
        conn.execute(
            """
            UPDATE tasks SET child_count = %(n)s, height = 1,
                   n_ok = %(n)s - %(n)s / 1000, n_error = %(n)s / 1000
            WHERE trace_id = %(t)s AND span_id = int8send(1)""",
            {"t": WIDE, "n": MILLION},
        )
        conn.execute(
            """
            INSERT INTO runs (trace_id, job, name, status, start_ns, end_ns, n_ok, n_error,
                              task_count, root_count, last_received_ns)
            SELECT %(t)s, 'wide', 'wide root', 3, 1000, 10000000,
                   count(*) FILTER (WHERE status = 3), count(*) FILTER (WHERE status = 4),
                   count(*), 1, 1
            FROM tasks WHERE trace_id = %(t)s""",
            {"t": WIDE},
        )
    conn.execute("ANALYZE tasks")


def test_a_million_children_are_paged_and_a_new_one_still_folds_in(conn, client):
    _million_children(conn)
    root = sid(0)
    deliver(conn, [span(WIDE, sid(MILLION + 5), root, status=st.ERROR, start=5, name="late")])
    node = get(client, f"/api/runs/{WIDE.hex()}/tasks/{root.hex()}")
    assert node["child_count"] == MILLION + 1 and node["counts"]["error"] == MILLION // 1000 + 1

    url = f"/api/runs/{WIDE.hex()}/tasks/{root.hex()}/children"
    first = get(client, url)
    assert len(first["children"]) == 100 and first["next_cursor"]
    assert [c["name"] for c in first["children"][:2]] == ["late", "child 1"]  # by start time
    second = get(client, f"{url}?cursor={first['next_cursor']}&limit=1000")
    assert len(second["children"]) == 1000
    keys = [(c["start"], c["span_id"]) for c in first["children"] + second["children"]]
    assert keys == sorted(keys) and len(set(keys)) == 1100  # the second page goes on

    page = get(client, f"/runs/{WIDE.hex()}")  # the root opens with its first page only
    opened = tree_data(page)["open"][root.hex()]
    assert len(opened["children"]) == 100 and opened["next_cursor"]
    assert "1,000,001" in get(client, f"/runs/{WIDE.hex()}/tasks/{root.hex()}")
    found = get(client, "/api/search?q=child&limit=1000")
    assert len(found["tasks"]) == 1000 and found["next_cursor"]
    get(client, "/search?q=child")
    get(client, "/")
    assert tree_problems(conn, WIDE, 2) == []


def tree_data(html: str) -> dict:
    """The JSON the run page embeds for its script."""
    start = html.index('<script type="application/json" id="tree-data">') + 47
    return json.loads(html[start : html.index("</script>", start)])


# ---------------------------------------------------------------------------------------------
# Through a real server: ids, times, strings, and every page of it


@pytest.fixture
def abused(start_tasktree, private_db):
    # Its own database: only a server with this depth limit may fold these runs.
    server = start_tasktree(env={"TASKTREE_MAX_DEPTH": str(DEPTH_LIMIT)}, database=private_db)
    data = seed(server.otlp_http)
    server.wait_folded(timeout=120)
    return server, data


def fetch(server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.web + path, timeout=HANG_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_bad_ids_and_times_are_refused_alone_with_reasons_over_json(abused):
    server, data = abused
    message, count = data.rejections
    assert count == "10"
    for reason in (
        "trace_id is all zeros",
        "trace_id must be 16 bytes, got 15",
        "span_id is all zeros",
        "span_id must be 8 bytes, got 2",
        "parent_span_id must be empty or 8 bytes, got 3",
        "start_time_unix_nano is missing (0)",
        "startTimeUnixNano -5 is before 1970 (negative)",
        "startTimeUnixNano 253402300799000000000 is beyond year 2262",
        "is before start_time_unix_nano",
        "times beyond year 2262 are not supported",
    ):
        assert reason in message, reason
    run = server.get(f"/api/runs/{data.traces['refused']}")
    assert sorted(r["name"] for r in run["roots"]) == ["all-zero parent: a root", "the good one"]
    assert run["task_count"] == 2


def test_bad_ids_are_refused_alone_with_reasons_over_protobuf(abused):
    server, _ = abused
    trace = bytes.fromhex("b0b0" * 8)
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans

    def add(trace_id=trace, span_id=b"\x05" * 8, parent=b"", start=T_OK):
        spans.add(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name="p",
            start_time_unix_nano=start,
            end_time_unix_nano=max(start, T_OK) + 1,
        )

    add(span_id=b"\x01" * 8)  # good
    add(span_id=b"\x02" * 8, parent=bytes(8))  # an all-zero parent is no parent: a root
    add(trace_id=bytes(16))
    add(trace_id=trace[:8])
    add(span_id=bytes(8))
    add(span_id=b"\x03" * 9)
    add(span_id=b"")
    add(span_id=b"\x04" * 8, parent=b"\x01" * 16)
    add(span_id=b"\x06" * 8, start=INT64_MAX + 1)
    answer = send_protobuf(server.otlp_http, request)
    assert answer.partial_success.rejected_spans == 7
    for reason in (
        "trace_id is all zeros",
        "trace_id must be 16 bytes, got 8",
        "span_id is all zeros",
        "span_id must be 8 bytes, got 9",
        "span_id must be 8 bytes, got 0",
        "parent_span_id must be empty or 8 bytes",
        "beyond year 2262",
    ):
        assert reason in answer.partial_success.error_message, reason
    server.wait_folded()
    roots = server.get(f"/api/runs/{trace.hex()}")["roots"]
    assert sorted(r["span_id"] for r in roots) == ["0101010101010101", "0202020202020202"]


def test_times_at_the_ends_of_what_is_stored_show_as_dates(abused):
    server, data = abused
    t = data.traces["times"]
    early = server.get(f"/api/runs/{t}/tasks/{data.spans['early']}")
    assert (early["start"], early["end"]) == (
        "1970-01-01T00:00:00.000000001Z",
        "2262-04-11T23:47:16.854775807Z",
    )
    assert [e["time"] for e in early["events"]] == [
        "1970-01-01T00:00:00.000000000Z",
        "2554-07-21T23:34:33.709551615Z",
    ]
    live = server.get(f"/api/runs/{t}/tasks/{data.spans['live']}")  # its heartbeat: year 2262
    heard = datetime.fromisoformat(live["last_heartbeat"][:26])  # a clock that far ahead counts
    assert live["status"] == "running"  # at most a minute past the time it was received
    assert heard < datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=61)
    status, page = fetch(server, f"/runs/{t}/tasks/{data.spans['early']}")
    assert status == 200 and "1970-01-01" in page and "2262-04-11" in page and "2554-07-21" in page
    assert server.get(f"/api/runs/{t}/tasks/{data.spans['zero_duration']}")["duration"] == 0.0


def test_refused_links_show_on_the_tree_and_the_task_page(abused):
    server, data = abused
    loop = server.get(f"/api/runs/{data.traces['loop']}")
    assert loop["name"] == "root"  # named after its true root, not a task whose link was refused
    by_id = {r["span_id"]: r for r in loop["roots"]}
    assert by_id[data.spans["loop_a"]]["refused_parent"] == {
        "span_id": data.spans["loop_b"],
        "reason": "cycle",
    }
    assert by_id[data.spans["self_parent"]]["refused_parent"]["reason"] == "cycle"
    deep = server.get(f"/api/runs/{data.traces['deep']}")
    assert deep["task_count"] == 3 * DEPTH_LIMIT
    assert {r["refused_parent"]["reason"] for r in deep["roots"] if r["refused_parent"]} == {
        "depth"
    }


def test_every_page_of_an_abused_server_answers_without_a_server_error(abused):
    server, data = abused
    paths = [
        "/",
        "/api/runs",
        "/search?q=loop",
        "/search?q=%3Cscript%3E",
        "/api/search?q=level",
        "/search?q=" + "ab" * 16,
        "/api/search?q=%00",
        "/api/runs?from=0&to=99999999999",
    ]
    for trace in data.traces.values():
        paths += [f"/runs/{trace}", f"/api/runs/{trace}"]
        for root in server.get(f"/api/runs/{trace}")["roots"]:
            spans = [root["span_id"]]
            kids = server.get(f"/api/runs/{trace}/tasks/{root['span_id']}/children?limit=1000")
            spans += [k["span_id"] for k in kids["children"][:5]]
            for s in spans:
                paths += [
                    f"/runs/{trace}/tasks/{s}",
                    f"/api/runs/{trace}/tasks/{s}",
                    f"/runs/{trace}?node={s}",
                    f"/api/runs/{trace}/tasks/{s}/children",
                    f"/search?q={s}",
                ]
    statuses = {}
    for path in paths:
        statuses[path] = fetch(server, path)[0]
    assert {p: s for p, s in statuses.items() if s >= 500} == {}
    assert sum(s == 200 for s in statuses.values()) > len(paths) * 0.9
    hostile = fetch(server, f"/runs/{data.traces['strings']}/tasks/{data.spans['hostile']}")[1]
    assert "<script>alert(1)</script>" not in hostile and "&lt;script&gt;" in hostile
    assert "truncated by tasktree" in hostile
    assert json.loads(fetch(server, "/api/runs?limit=1000")[1])["runs"]


def test_the_tree_in_a_browser_marks_refused_links_and_survives_extreme_times(
    abused, browser_context, page_errors
):
    from playwright.sync_api import expect

    server, data = abused
    page = browser_context.new_page()
    page.goto(f"{server.web}/runs/{data.traces['loop']}")
    row = page.locator(f'[data-span-id="{data.spans["loop_a"]}"] > .row')
    expect(row.locator(".refused")).to_have_text(f"⚠ parent {data.spans['loop_b']} refused (cycle)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "abuse-loop-run.png"))
    page.goto(f"{server.web}/runs/{data.traces['deep']}")
    expect(page.locator(".refused").first).to_contain_text("refused (depth)")
    for trace in ("times", "strings", "wide"):
        page.goto(f"{server.web}/runs/{data.traces[trace]}")
        expect(page.locator('[role="treeitem"]').first).to_be_visible()
    page.goto(f"{server.web}/runs/{data.traces['times']}/tasks/{data.spans['early']}")
    expect(page.locator("h1")).to_contain_text("starts 1 ns after 1970")
    assert page_errors == []
