"""The JSON API against its own OpenAPI document, with schemathesis, on a real ``tasktree serve``
holding abusive data (``abuse_data``: loops, a chain past the depth limit, extreme times, hostile
strings, a wide node, placeholders).

Every generated request (valid ones, invalid ones, and requests aimed at the stored runs and
tasks) must get an answer within the request timeout that is not a 5xx, has the documented
status, content type and headers, and a body matching the schema.  Excluded: the
``positive_data_acceptance`` check, because a cursor is opaque: one that matches the documented
pattern but was not issued by the server is rightly refused with 400.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .abuse_data import DEPTH_LIMIT, seed

TIMEOUT = 30
"""Seconds a request may take before it counts as a hang (answers take milliseconds)."""


@pytest.fixture
def seeded(start_tasktree, private_db):
    # Its own database: only a server with this depth limit may fold these runs.
    server = start_tasktree(env={"TASKTREE_MAX_DEPTH": str(DEPTH_LIMIT)}, database=private_db)
    data = seed(server.otlp_http)
    server.wait_folded(timeout=120)
    return server, data


def stored_tasks(server, data) -> list[tuple[str, str]]:
    """(trace id, span id) of the top-level tasks of every seeded run and their first children."""
    found = []
    for trace in data.traces.values():
        for root in server.get(f"/api/runs/{trace}")["roots"][:20]:
            found.append((trace, root["span_id"]))
            children = server.get(f"/api/runs/{trace}/tasks/{root['span_id']}/children?limit=5")
            found += [(trace, child["span_id"]) for child in children["children"]]
    return found


def _cases(schema, pairs):
    """Any request to any operation, valid or not, plus valid ones about the stored tasks."""
    aimed = [
        schema[path]["GET"].as_strategy(path_parameters=params)
        for trace, span in pairs
        for path, params in (
            ("/api/runs/{trace_id}", {"trace_id": trace}),
            ("/api/runs/{trace_id}/tasks/{span_id}", {"trace_id": trace, "span_id": span}),
            ("/api/runs/{trace_id}/tasks/{span_id}/children", {"trace_id": trace, "span_id": span}),
            ("/api/runs/{trace_id}/tasks/{span_id}/subtree", {"trace_id": trace, "span_id": span}),
            ("/api/runs/{trace_id}/tasks", {"trace_id": trace}),
        )
    ]
    lists = [schema[path]["GET"].as_strategy() for path in ("/api/runs", "/api/search")]
    valid = hs.one_of(schema.as_strategy(), *lists, hs.one_of(*aimed)).map(_without_cursor)
    return valid | schema.as_strategy(GenerationMode.NEGATIVE)


def _without_cursor(case):
    """Mostly no cursor: a made-up one is refused (400) before anything else is looked at."""
    if case.query and "cursor" in case.query and hash(case.query["cursor"]) % 4:
        del case.query["cursor"]
    return case


def test_every_answer_of_the_api_matches_its_openapi_document(seeded):
    server, data = seeded
    schema = schemathesis.openapi.from_url(server.web + "/api/openapi.json", timeout=TIMEOUT)

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=_cases(schema, stored_tasks(server, data)))
    def check(case):
        case.call_and_validate(base_url=server.web, timeout=TIMEOUT,
                               excluded_checks=[positive_data_acceptance])

    check()


def test_following_the_documented_links_from_runs_to_tasks_to_children(seeded):
    server, _ = seeded
    schema = schemathesis.openapi.from_url(server.web + "/api/openapi.json", timeout=TIMEOUT)
    schema.config.update(base_url=server.web)
    machine = schema.as_state_machine()

    class Links(machine):
        def get_call_kwargs(self, case):
            return {"timeout": TIMEOUT}

        def validate_response(self, response, case, **kwargs):
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

    Links.run(settings=settings(max_examples=25, stateful_step_count=6, deadline=None,
                                database=None, suppress_health_check=list(HealthCheck)))


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/api/nothing-here", 404, "not_found"),
    ("GET", "/api/runs/0123/steps", 404, "not_found"),
    ("GET", "/api", 404, "not_found"),
    ("POST", "/api/runs", 405, "method_not_allowed"),
    ("DELETE", "/api/runs/" + "ab" * 16, 405, "method_not_allowed"),
])
def test_unknown_api_paths_and_wrong_methods_answer_json_errors(tasktree_server, method, path,
                                                                status, code):
    request = urllib.request.Request(tasktree_server.web + path, method=method)
    try:
        urllib.request.urlopen(request, timeout=TIMEOUT)
        raise AssertionError("expected an error")
    except urllib.error.HTTPError as exc:
        assert exc.code == status
        assert exc.headers["Content-Type"] == "application/json"
        body = json.loads(exc.read())
        assert body["error"]["code"] == code and body["error"]["message"]
        if status == 404:  # where to look instead
            assert body["error"]["message"] == (
                f"no API route {method} {path}: the routes are listed in /api/openapi.json")
        if status == 405:
            assert "GET" in exc.headers["Allow"]


def test_unknown_pages_outside_the_api_stay_html(tasktree_server):
    try:
        urllib.request.urlopen(tasktree_server.web + "/no-such-page", timeout=TIMEOUT)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404 and exc.headers["Content-Type"].startswith("text/html")
