"""A run's status while its root has not arrived, through a real ``tasktree serve`` (issue 18).

Every SDK but tasktree's sends a root span when it ends, so most runs are seen root-less for as
long as they run.  A failed task then must not make the whole run ``error``: the run is still
going, its counts show the failure, and its page says the root is still to come.
"""

from __future__ import annotations

import os

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.tests.integration.faults_support import otlp_request


def post(server, body: bytes) -> None:
    answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                           headers={"Content-Type": "application/x-protobuf"})
    assert answer.status_code == 200, answer.text


def failed_child(trace: bytes, span_id: bytes, parent: bytes) -> bytes:
    """A request with one child task that ended in error."""
    body = otlp_request(trace, [(span_id, parent, "chunk", False)], "rootless-job")
    request = ExportTraceServiceRequest.FromString(body)
    request.resource_spans[0].scope_spans[0].spans[0].status.code = (
        trace_pb2.Status.STATUS_CODE_ERROR)
    return request.SerializeToString()


def test_a_run_without_its_root_is_running_with_its_errors_counted(start_tasktree, private_db):
    server = start_tasktree(database=private_db)
    trace, root = os.urandom(16), os.urandom(8)
    post(server, failed_child(trace, os.urandom(8), root))
    post(server, otlp_request(trace, [(os.urandom(8), root, "chunk", False)], "rootless-job"))
    server.wait_folded()

    run = server.get(f"/api/runs/{trace.hex()}")
    assert (run["status"], run["root_count"], run["name"]) == ("running", 0, None)
    assert run["counts"] == {"ok": 1, "error": 1, "running": 0, "stalled": 0}
    listed = server.get("/api/runs?job=rootless-job")["runs"]
    assert [(r["trace_id"], r["status"]) for r in listed] == [(trace.hex(), "running")]
    page = requests.get(f"{server.web}/runs/{trace.hex()}", timeout=30).text
    assert '">not received yet: the run counts as running' in page  # the root line, as shown

    post(server, otlp_request(trace, [(root, None, "nightly", False)], "rootless-job"))
    server.wait_folded()
    run = server.get(f"/api/runs/{trace.hex()}")
    assert (run["status"], run["root_count"], run["name"]) == ("ok", 1, "nightly")
    page = requests.get(f"{server.web}/runs/{trace.hex()}", timeout=30).text
    assert '">received</dd>' in page


def test_a_root_that_moves_under_a_parent_takes_the_run_name_with_it(start_tasktree, private_db):
    """A running snapshot sent before its parent link was known, then the final naming the
    parent: the task is no root any more (its final record's parent wins), so the run has no
    root yet and no name, in whichever order the two records are folded."""
    server = start_tasktree(database=private_db)
    for order in ((False, True), (True, False)):
        trace, task, parent = os.urandom(16), os.urandom(8), os.urandom(8)
        records = {False: (task, None, "early-snapshot", True),  # running, no parent yet
                   True: (task, parent, "chunk", False)}  # final, under `parent`
        for final in order:
            post(server, otlp_request(trace, [records[final]], "rootless-job"))
            server.wait_folded()
        run = server.get(f"/api/runs/{trace.hex()}")
        assert (run["root_count"], run["name"], run["status"]) == (0, None, "running"), order
