"""Two ``tasktree serve`` processes ingesting the same runs at once: no deadlock, no lost rollup."""

from __future__ import annotations

import json
import os
import random
import threading
import urllib.request


def _post(endpoint: str, spans: list[dict]) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "twin"}}]
                },
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }
    req = urllib.request.Request(
        endpoint + "/v1/traces", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


def _run_spans(trace_id: str, branches: int, leaves: int) -> tuple[str, list[dict]]:
    def span(sid, parent, name):
        return {
            "traceId": trace_id,
            "spanId": sid,
            "parentSpanId": parent,
            "name": name,
            "startTimeUnixNano": "1000",
            "endTimeUnixNano": "2000",
        }

    root = os.urandom(8).hex()
    spans = [span(root, "", "root")]
    for b in range(branches):
        branch = os.urandom(8).hex()
        spans.append(span(branch, root, f"branch-{b}"))
        spans += [span(os.urandom(8).hex(), branch, "leaf") for _ in range(leaves)]
    return root, spans


def test_two_servers_on_one_database_fold_the_same_runs_without_losing_updates(start_tasktree):
    servers = [start_tasktree(), start_tasktree()]
    runs = {os.urandom(16).hex(): None for _ in range(3)}
    requests = []
    for trace_id in runs:
        root, spans = _run_spans(trace_id, branches=10, leaves=30)
        runs[trace_id] = root
        random.shuffle(spans)
        requests += [spans[i : i + 25] for i in range(0, len(spans), 25)]
    random.shuffle(requests)

    def send(worker: int):
        for i, chunk in enumerate(requests):
            if i % 4 == worker:
                _post(servers[worker % 2].otlp_http, chunk)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for server in servers:
        server.wait_folded()
    for trace_id, root in runs.items():
        run = servers[0].get(f"/api/runs/{trace_id}")
        assert (run["task_count"], run["counts"]["ok"], run["status"]) == (311, 311, "ok")
        [top] = run["roots"]
        assert (top["span_id"], top["child_count"], top["counts"]["ok"]) == (root, 10, 310)
        branches = servers[1].get(f"/api/runs/{trace_id}/tasks/{root}/children")["children"]
        assert sorted(b["counts"]["ok"] for b in branches) == [30] * 10
