"""JSON API: every malformed input answers 400 saying what is expected; auth; outage; OpenAPI."""

from __future__ import annotations

import base64
import json

import pytest

from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import open_pool

from .api_support import (
    Task,
    api_pool,
    client,
    create_test_app,
    db,
    get_json,
    insert_run,
)

# pytest finds these fixtures among the module's names.
FIXTURES = (api_pool, client, db)


TRACE, SPAN = "a1" * 16, "00000000000000a1"
TASK = f"/api/runs/{TRACE}/tasks/{SPAN}"
LISTS = ["/api/runs", "/api/search", f"{TASK}/children"]


def cursor_of(*parts) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).rstrip(b"=").decode()


BAD_IDS = [
    (f"/api/runs/{TRACE[:-1]}", "trace id must be 32 hexadecimal digits (16 bytes)"),
    (f"/api/runs/{TRACE}0", "trace id must be 32 hexadecimal digits (16 bytes)"),
    (f"/api/runs/{'g' * 32}", "trace id must be 32 hexadecimal digits (16 bytes)"),
    (f"/api/runs/{'a1' * 15}%20%20", "trace id must be 32 hexadecimal digits (16 bytes)"),
    (f"/api/runs/{TRACE}/tasks/abc", "span id must be 16 hexadecimal digits (8 bytes)"),
    (f"/api/runs/{TRACE}/tasks/{'z' * 16}/children",
     "span id must be 16 hexadecimal digits (8 bytes)"),
    (f"/api/runs/xyz/tasks/{SPAN}", "trace id must be 32 hexadecimal digits (16 bytes)"),
]

LIMIT = "limit must be an integer from 1 to 1000"
TIME = "must be an RFC 3339 date-time (e.g. 2026-11-26T17:33:26.5Z) or Unix seconds"
STATUS = "status must be one of: running, stalled, ok, error"
CURSOR = "cursor is not valid: pass back a next_cursor of this list unchanged"

BAD_PARAMETERS = [
    ("limit=0", LIMIT), ("limit=1001", LIMIT), ("limit=-1", LIMIT), ("limit=ten", LIMIT),
    ("limit=1.5", LIMIT), ("limit=", LIMIT), ("limit=%D9%A3", LIMIT),  # an Arabic-Indic three
    ("limit=99999999999999999999", LIMIT),
    ("cursor=", CURSOR), ("cursor=!!!", CURSOR), ("cursor=e30", CURSOR),  # {}
    ("cursor=" + "A" * 600, CURSOR),
    ("cursor=" + cursor_of("nope", 1), CURSOR),
]
BAD_FILTERS = [
    ("status=failed", STATUS), ("status=", STATUS), ("status=missing", STATUS),
    ("from=yesterday", "from " + TIME), ("to=2026-11-26", "to " + TIME),
    ("from=2026-02-30T00:00:00Z", "from " + TIME), ("to=", "to " + TIME),
    ("from=1e9", "from " + TIME), ("to=2026-11-26T25:00:00Z", "to " + TIME),
    ("q=" + "x" * 257, "q must be at most 256 characters, without NUL"),
    ("job=a%00b", "job must be at most 1100 characters, without NUL"),
    ("job=" + "x" * 1101, "job must be at most 1100 characters, without NUL"),
]


@pytest.mark.parametrize(("url", "message"), BAD_IDS)
def test_malformed_ids_are_400_saying_the_expected_form(client, url, message):
    assert get_json(client, url, 400) == {"error": {"code": "bad_request", "message": message}}


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize(("query", "message"), BAD_PARAMETERS)
def test_malformed_page_parameters_are_400(client, url, query, message):
    assert get_json(client, f"{url}?{query}", 400) == {
        "error": {"code": "bad_request", "message": message}}


@pytest.mark.parametrize("url", ["/api/runs", "/api/search"])
@pytest.mark.parametrize(("query", "message"), BAD_FILTERS)
def test_malformed_filters_are_400(client, url, query, message):
    assert get_json(client, f"{url}?{query}", 400) == {
        "error": {"code": "bad_request", "message": message}}


@pytest.mark.parametrize(("url", "other"), [
    ("/api/runs", cursor_of("search", None, TRACE, SPAN)),
    ("/api/search", cursor_of("runs", 5, TRACE)),
    ("/api/runs", cursor_of("runs", 5, TRACE.upper())),  # ids in cursors are as issued
    ("/api/runs", cursor_of("runs", "5", TRACE)),
    ("/api/runs", cursor_of("runs", 2**63, TRACE)),
    ("/api/runs", cursor_of("runs", True, TRACE)),
    ("/api/runs", cursor_of("runs", 5, TRACE, SPAN)),
    ("/api/search", cursor_of("search", 5, TRACE, SPAN[:-2])),
    (f"{TASK}/children", cursor_of("children", None, SPAN)),  # children always have a start
])
def test_cursor_of_another_list_or_tampered_is_400(client, db, url, other):
    insert_run(db, TRACE, [Task(SPAN)])
    assert get_json(client, f"{url}?cursor={other}", 400)["error"]["message"] == CURSOR


def test_times_beyond_what_is_stored_clamp_instead_of_failing(client, db):
    insert_run(db, TRACE, [Task(SPAN)])
    wide = get_json(client, "/api/runs?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z")
    assert len(wide["runs"]) == 1
    assert get_json(client, "/api/search?from=99999999999")["tasks"] == []


def test_later_from_than_to_is_an_empty_page_not_an_error(client, db):
    insert_run(db, TRACE, [Task(SPAN)])
    assert get_json(client, "/api/runs?from=2000000000&to=1000000000") == {
        "runs": [], "next_cursor": None}


# ---------------------------------------------------------------------------------------------
# Authentication and outage


@pytest.fixture
def locked_client(db, api_pool):
    return create_test_app(Settings(auth_token="s3cret-token"), api_pool).test_client()


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
    {"Authorization": "Basic s3cret-token"},
])
def test_with_a_token_configured_requests_without_it_are_401(locked_client, headers):
    response = locked_client.get("/api/runs", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tasktree"'
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_with_a_token_configured_the_right_bearer_token_passes(locked_client):
    response = locked_client.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"})
    assert response.status_code == 200


def test_openapi_document_needs_no_token(locked_client):
    assert locked_client.get("/api/openapi.json").status_code == 200


def test_database_down_is_503_with_retry_after():
    pool = open_pool("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", max_size=1,
                     timeout=0.2)
    try:
        response = create_test_app(Settings(), pool).test_client().get("/api/runs")
    finally:
        pool.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["code"] == "store_unavailable"


# ---------------------------------------------------------------------------------------------
# The OpenAPI document matches the routes and the shapes


def test_openapi_document_lists_exactly_the_blueprints_routes(client):
    doc = get_json(client, "/api/openapi.json")
    assert doc["openapi"].startswith("3.1")
    rules = {r.rule.replace("<", "{").replace(">", "}")
             for r in client.application.url_map.iter_rules() if r.endpoint.startswith("api.")}
    assert set(doc["paths"]) == rules


def schema_fields(doc: dict, name: str) -> set[str]:
    """Every property a component schema names, through allOf."""
    schema = doc["components"]["schemas"][name]
    parts = schema.get("allOf", [schema])
    fields = set()
    for part in parts:
        if "$ref" in part:
            fields |= schema_fields(doc, part["$ref"].rsplit("/", 1)[1])
        else:
            fields |= set(part["properties"])
            assert set(part.get("required", [])) == set(part["properties"]), name
    return fields


def test_openapi_shapes_name_exactly_the_fields_the_api_returns(client, db):
    insert_run(db, TRACE, [Task(SPAN, name="main"), Task("00000000000000b2", SPAN)])
    doc = get_json(client, "/api/openapi.json")
    run = get_json(client, f"/api/runs/{TRACE}")
    task = get_json(client, TASK)
    assert set(run) == schema_fields(doc, "RunDetail")
    assert set(run["roots"][0]) == schema_fields(doc, "Node")
    assert set(task) == schema_fields(doc, "TaskDetail")
    assert set(get_json(client, "/api/runs")["runs"][0]) == schema_fields(doc, "Run")
    hit = get_json(client, "/api/search?q=main")["tasks"][0]
    assert set(hit) == schema_fields(doc, "FoundTask")
    assert set(get_json(client, f"{TASK}/children")) == schema_fields(doc, "ChildrenPage")
