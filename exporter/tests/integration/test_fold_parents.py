"""A task whose records name different parents, through a real ``tasktree serve``: the parent
comes from the record that wins the status lattice (design.md §3 rules 1–3), whichever record
is folded first, in one request or in two folded apart, with a duplicate on top; and through the
store alone, a loop that only a losing record closed."""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.request

import psycopg
import pytest

from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span, tid
from .fold_support import tree

NOW = time.time_ns()


def _otlp_span(trace, span_id, parent, name, *, running=False, error=False):
    """One OTLP JSON span: a running snapshot (heartbeat now) or a final record."""
    record = {
        "traceId": trace,
        "spanId": span_id,
        "parentSpanId": parent or "",
        "name": name,
        "startTimeUnixNano": str(NOW),
        "endTimeUnixNano": str(NOW + 1_000),
    }
    if running:
        record["attributes"] = [{"key": "tasktree.state", "value": {"stringValue": "running"}}]
    if error:
        record["status"] = {"code": 2, "message": "failed"}
    return record


def _send(server, spans) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "parents"}}]
                },
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }
    request = urllib.request.Request(
        server.otlp_http + "/v1/traces",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()


def _counts(ok=0, error=0, running=0, stalled=0):
    return {"ok": ok, "error": error, "running": running, "stalled": stalled}


@pytest.mark.parametrize("child", ["child first", "child last"])
@pytest.mark.parametrize("a_stored", [True, False], ids=["A stored", "A missing"])
@pytest.mark.parametrize("delivery", ["one request", "two requests"])
@pytest.mark.parametrize("order", ["snapshot first", "final first"])
def test_the_final_records_parent_wins_in_any_order(
    tasktree_server, order, delivery, a_stored, child
):
    """X's running snapshot names A, its final record B: X (and its child Y) end under B, A's
    and B's rollups say so, and no empty placeholder for A is left at the top of the run."""
    server = tasktree_server
    trace = os.urandom(16).hex()
    r, a, b, x, y = (os.urandom(8).hex() for _ in range(5))
    snapshot = _otlp_span(trace, x, a, "x-snapshot", running=True)
    final = _otlp_span(trace, x, b, "x-final", error=True)
    base = [_otlp_span(trace, r, None, "root"), _otlp_span(trace, b, r, "b")]
    base += [_otlp_span(trace, a, r, "a")] if a_stored else []
    child_span = _otlp_span(trace, y, x, "y")
    x_records = [snapshot, final] if order == "snapshot first" else [final, snapshot]
    requests = [base + ([child_span] if child == "child first" else [])]
    requests += [x_records] if delivery == "one request" else [[s] for s in x_records]
    requests += [[x_records[0]] + ([child_span] if child == "child last" else [])]  # a duplicate
    for spans in requests:
        _send(server, spans)
        server.wait_folded()

    run = server.get(f"/api/runs/{trace}")
    assert [root["span_id"] for root in run["roots"]] == [r]  # no placeholder for A
    assert (run["counts"], run["task_count"]) == (_counts(ok=3 + a_stored, error=1), 4 + a_stored)
    task = server.get(f"/api/runs/{trace}/tasks/{x}")
    assert (task["parent_span_id"], task["name"], task["status"]) == (b, "x-final", "error")
    assert (task["child_count"], task["counts"]) == (1, _counts(ok=1))
    b_task = server.get(f"/api/runs/{trace}/tasks/{b}")
    assert (b_task["child_count"], b_task["counts"]) == (1, _counts(ok=1, error=1))
    assert run["roots"][0]["child_count"] == 1 + a_stored
    assert run["roots"][0]["counts"] == _counts(ok=2 + a_stored, error=1)
    if a_stored:
        a_task = server.get(f"/api/runs/{trace}/tasks/{a}")
        assert (a_task["child_count"], a_task["counts"]) == (0, _counts())
    else:
        server.get(f"/api/runs/{trace}/tasks/{a}", expect=404)


@pytest.fixture
def conn(clean_store_db):
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        yield conn


def test_a_loop_closed_by_a_losing_record_is_undone_when_the_winner_folds_later(conn):
    """3's running snapshot names 1, closing the loop 1 → 2 → 3 → 1, cut at 1 (the smallest id);
    3's final names no parent.  Folded one record at a time, in every order, the cut must go
    when the final comes; the store has to load the chain the cut link names to see that."""

    def records(trace):
        return [
            span(trace, sid(1), sid(2)),
            span(trace, sid(2), sid(3)),
            span(trace, sid(3), sid(1), status=st.RUNNING, heartbeat=NOW),
            span(trace, sid(3), None),
        ]

    expected = {
        sid(1): (sid(2), False, st.OK, 0, 0, 0, 0, 0),
        sid(2): (sid(3), False, st.OK, 1, 1, 0, 0, 0),
        sid(3): (None, False, st.OK, 1, 2, 0, 0, 0),
    }
    for n, order in enumerate(itertools.permutations(range(4))):
        trace = tid(100 + n)
        deliver(conn, *[[records(trace)[i]] for i in order], fold_between=True)
        assert tree(conn, trace) == expected, order
