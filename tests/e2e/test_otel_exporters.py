"""Real OTel SDK exporters (HTTP protobuf, gRPC) and a hand-made OTLP JSON request, through a real
``tasktree serve``, give exactly the tree, times, statuses and counts in the JSON API."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

T0 = 1_764_000_000_000_000_000  # fixed start times make the expected JSON exact


def _rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _job(exporter, job: str) -> tuple[str, dict[str, str]]:
    """A root with two children, one of which has a failing grandchild; returns ids by name."""
    provider = TracerProvider(resource=Resource.create({"service.name": job}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e")
    ids = {}
    root = tracer.start_span("root", start_time=T0)
    ctx = otel_trace.set_span_in_context(root)
    a = tracer.start_span("a", context=ctx, start_time=T0 + 1_000)
    b = tracer.start_span("b", context=ctx, start_time=T0 + 2_000)
    bctx = otel_trace.set_span_in_context(b)
    c = tracer.start_span("c", context=bctx, start_time=T0 + 3_000, attributes={"rows": 7})
    c.set_status(Status(StatusCode.ERROR, "disk full"))
    for span, end in (
        (c, T0 + 4_000),
        (a, T0 + 5_000),
        (b, T0 + 6_000),
        (root, T0 + 2_000_000_000),
    ):
        span.end(end_time=end)
    for name, span in (("root", root), ("a", a), ("b", b), ("c", c)):
        ids[name] = format(span.get_span_context().span_id, "016x")
    provider.shutdown()
    return format(root.get_span_context().trace_id, "032x"), ids


def _counts(ok=0, error=0, running=0, stalled=0):
    return {"ok": ok, "error": error, "running": running, "stalled": stalled}


def _assert_tree(server, trace_id: str, ids: dict[str, str], job: str) -> None:
    server.wait_folded()
    run = server.get(f"/api/runs/{trace_id}")
    assert {
        k: run[k]
        for k in (
            "trace_id",
            "job",
            "name",
            "status",
            "start",
            "end",
            "duration",
            "counts",
            "task_count",
        )
    } == {
        "trace_id": trace_id,
        "job": job,
        "name": "root",
        "status": "ok",
        "start": _rfc3339(T0),
        "end": _rfc3339(T0 + 2_000_000_000),
        "duration": 2.0,
        "counts": _counts(ok=3, error=1),
        "task_count": 4,
    }
    [root] = run["roots"]
    assert root == {
        "span_id": ids["root"],
        "parent_span_id": None,
        "name": "root",
        "status": "ok",
        "start": _rfc3339(T0),
        "end": _rfc3339(T0 + 2_000_000_000),
        "duration": 2.0,
        "child_count": 2,
        "counts": _counts(ok=2, error=1),
        "missing": False,
        "last_heartbeat": None,
        "refused_parent": None,
        "status_message": None,
    }
    children = server.get(f"/api/runs/{trace_id}/tasks/{ids['root']}/children")["children"]
    assert [(c["name"], c["status"], c["counts"], c["child_count"]) for c in children] == [
        ("a", "ok", _counts(), 0),
        ("b", "ok", _counts(error=1), 1),
    ]
    c = server.get(f"/api/runs/{trace_id}/tasks/{ids['c']}")
    assert (c["status"], c["status_message"], c["parent_span_id"], c["duration"]) == (
        "error",
        "disk full",
        ids["b"],
        1e-06,
    )
    assert c["attributes"]["rows"] == 7 and c["resource"]["service.name"] == job


def test_sdk_http_protobuf_exporter_gives_the_exact_tree(tasktree_server):
    trace_id, ids = _job(
        HttpExporter(endpoint=tasktree_server.otlp_http + "/v1/traces"), "e2e-http"
    )
    _assert_tree(tasktree_server, trace_id, ids, "e2e-http")


def test_sdk_grpc_exporter_gives_the_exact_tree(tasktree_server):
    exporter = GrpcExporter(endpoint=tasktree_server.otlp_grpc, insecure=True)
    trace_id, ids = _job(exporter, "e2e-grpc")
    _assert_tree(tasktree_server, trace_id, ids, "e2e-grpc")


def _json_span(trace_id, span_id, parent, name, start, end, status=None, attrs=()):
    span = {
        "traceId": trace_id.upper(),
        "spanId": span_id,
        "parentSpanId": parent or "",
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": end,
        "attributes": list(attrs),
        "unknownField": {"x": 1},
    }
    if status:
        span["status"] = status
    return span


def test_hand_made_otlp_json_request_gives_the_exact_tree(tasktree_server):
    trace_id = os.urandom(16).hex()
    ids = {n: os.urandom(8).hex() for n in ("root", "a", "b", "c")}
    spans = [  # children first, ints as strings and numbers, enums as names and numbers
        _json_span(
            trace_id,
            ids["c"],
            ids["b"],
            "c",
            T0 + 3_000,
            T0 + 4_000,
            {"code": 2, "message": "disk full"},
            [{"key": "rows", "value": {"intValue": "7"}}],
        ),
        _json_span(trace_id, ids["a"], ids["root"], "a", T0 + 1_000, T0 + 5_000),
        _json_span(
            trace_id,
            ids["b"],
            ids["root"],
            "b",
            T0 + 2_000,
            str(T0 + 6_000),
            {"code": "STATUS_CODE_UNSET"},
        ),
        _json_span(trace_id, ids["root"], None, "root", T0, T0 + 2_000_000_000),
    ]
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "e2e-json"}}]
                },
                "scopeSpans": [{"scope": {"name": "hand"}, "spans": spans}],
            }
        ]
    }
    request = urllib.request.Request(
        tasktree_server.otlp_http + "/v1/traces",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        assert "rejectedSpans" not in resp.read().decode()
    _assert_tree(tasktree_server, trace_id, ids, "e2e-json")


@pytest.mark.parametrize("order", ["parents first", "children first"])
def test_running_snapshot_then_final_record_ends_ok_in_any_order(tasktree_server, order):
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    now = time.time_ns()
    snapshot = _json_span(
        trace_id,
        span_id,
        None,
        "job",
        now,
        str(now + 10),
        attrs=[{"key": "tasktree.state", "value": {"stringValue": "running"}}],
    )
    final = _json_span(trace_id, span_id, None, "job", now, str(now + 5))
    records = [snapshot, final] if order == "parents first" else [final, snapshot]
    for record in records:
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [record]}]}]}
        urllib.request.urlopen(
            urllib.request.Request(
                tasktree_server.otlp_http + "/v1/traces",
                json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            ),
            timeout=30,
        ).close()
        tasktree_server.wait_folded()
    run = tasktree_server.get(f"/api/runs/{trace_id}")
    assert (run["status"], run["roots"][0]["status"]) == ("ok", "ok")


@pytest.mark.parametrize(
    "bad_span, reason",
    [
        ({"spanId": "00" * 8}, "span_id"),
        ({"spanId": "abcd"}, "span_id"),
        ({"traceId": "00" * 16}, "trace_id"),
        ({"parentSpanId": "12345"}, "parentSpanId"),
        ({"parentSpanId": "1234"}, "parent"),
        ({"startTimeUnixNano": "0"}, "start"),
    ],
)
def test_a_bad_span_is_refused_alone_and_the_rest_of_its_batch_is_stored(
    tasktree_server, bad_span, reason
):
    trace_id = os.urandom(16).hex()
    good = [
        _json_span(trace_id, os.urandom(8).hex(), None, f"good-{i}", T0, str(T0 + 10))
        for i in range(2)
    ]
    bad = {**_json_span(trace_id, os.urandom(8).hex(), None, "bad", T0, str(T0 + 10)), **bad_span}
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [good[0], bad, good[1]]}]}]}
    request = urllib.request.Request(
        tasktree_server.otlp_http + "/v1/traces",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert resp.status == 200
    assert int(answer["partialSuccess"]["rejectedSpans"]) == 1
    assert reason in answer["partialSuccess"]["errorMessage"]
    tasktree_server.wait_folded()
    run = tasktree_server.get(f"/api/runs/{trace_id}")
    assert sorted(r["name"] for r in run["roots"]) == ["good-0", "good-1"]
