"""JSON API over trees the real ingest built: spans landed, folded, then read through the routes."""

from __future__ import annotations

from tasktree.exporter.app import create_app
from tasktree.exporter.settings import Settings
from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid
from .api_support import api_pool, client, db, get_json

# pytest finds these fixtures among the module's names.
FIXTURES = (api_pool, client, db)


T = 1_795_714_406_000_000_000  # 2026-11-26T17:33:26Z


def test_children_before_their_parent_hang_under_a_placeholder_until_it_arrives(client, db):
    trace, url = tid(1), f"/api/runs/{tid(1).hex()}"
    deliver(db, [
        span(trace, sid(2), sid(1), name="step", start=T + 10, end=T + 20),
        span(trace, sid(3), sid(1), name="step", status=st.ERROR, start=T + 30, end=T + 40),
    ])
    roots = get_json(client, url)["roots"]
    assert [(r["span_id"], r["status"], r["missing"], r["child_count"]) for r in roots] == [
        (sid(1).hex(), "missing", True, 2)]
    assert roots[0]["counts"] == {"ok": 1, "error": 1, "running": 0, "stalled": 0}

    deliver(db, [span(trace, sid(1), None, name="main", start=T, end=T + 50)])
    run = get_json(client, url)
    roots = [(r["span_id"], r["status"], r["missing"]) for r in run["roots"]]
    assert roots == [(sid(1).hex(), "ok", False)]
    summary = (run["name"], run["status"], run["job"], run["task_count"])
    assert summary == ("main", "ok", "test-job", 3)
    children = get_json(client, f"{url}/tasks/{sid(1).hex()}/children")["children"]
    assert [c["span_id"] for c in children] == [sid(2).hex(), sid(3).hex()]


def test_landed_task_is_found_by_keyword_and_id_and_shows_its_details(client, db):
    trace, upload = tid(7), sid(0xABC)  # 0000000000000abd
    deliver(db, [span(trace, sid(1), None, name="main", start=T, end=T + 5_000_000_000),
                 span(trace, upload, sid(1), name="upload", start=T + 1, end=T + 2,
                      attributes={"bucket": "reports-eu"})])
    hits = get_json(client, "/api/search?q=reports")["tasks"]
    assert [(h["trace_id"], h["span_id"], h["job"]) for h in hits] == [
        (trace.hex(), upload.hex(), "test-job")]
    by_prefix = get_json(client, "/api/search?q=0000000000000ab")["tasks"]
    assert [h["span_id"] for h in by_prefix] == [upload.hex()]
    detail = get_json(client, f"/api/runs/{trace.hex()}/tasks/{upload.hex()}")
    assert detail["attributes"] == {"bucket": "reports-eu"}
    assert detail["resource"] == {"service.name": "test-job"}
    assert get_json(client, f"/api/runs?q={trace.hex()}")["runs"][0]["duration"] == 5.0


def test_a_large_double_attribute_comes_back_as_a_double(client, db):
    """jsonb stores 1e308 as a numeric written out in full: it came back as a 309-digit integer."""
    trace = tid(8)
    numbers = {"huge": 1e308, "tiny": -2.5e300, "big_int": 2**63 - 1, "small": -(2**63), "x": 0.1,
               "time_like": 2**64 - 1}  # an unsigned 64-bit time (events') stays an integer
    deliver(db, [span(trace, sid(1), None, name="main", start=T, end=T + 1, attributes=numbers)])
    detail = get_json(client, f"/api/runs/{trace.hex()}/tasks/{sid(1).hex()}")
    assert detail["attributes"] == numbers
    assert [type(detail["attributes"][k]) for k in numbers] == [float, float, int, int, float, int]


def test_the_app_factory_serves_the_blueprint(db, api_pool):
    response = create_app(Settings(), api_pool).test_client().get("/api/runs")
    assert response.status_code == 200 and response.get_json() == {"runs": [], "next_cursor": None}
