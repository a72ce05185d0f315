"""Abusive span data for a real ``tasktree serve`` (issue 7): sent as OTLP/JSON or protobuf.

``seed(server)`` sends runs that exercise every refusal and extreme the tree and the pages must
survive: parent loops, a chain past the depth limit, times at the ends of what is stored,
hostile strings, a wide node, placeholders, and spans that are refused (zero ids, wrong lengths,
negative times, year 9999).  It returns the ids, so tests can look at what a user sees.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
T0 = 1_795_714_406_123_456_789
DEPTH_LIMIT = 40
"""What the seeded server runs with (``TASKTREE_MAX_DEPTH``): a small limit, a cheap chain."""


def hex_id(prefix: int, n: int, size: int) -> str:
    return (prefix.to_bytes(2, "big") + n.to_bytes(size - 2, "big")).hex()


def span(trace: str, span_id: str, parent: str | None = None, *, name: str = "t",
         start: int | str = T0, end: int | str | None = None, attributes: dict | None = None,
         events: list | None = None, links: list | None = None, running: bool = False,
         error: str | None = None) -> dict:
    attrs = dict(attributes or {})
    if running:
        attrs["tasktree.state"] = "running"
    body = {"traceId": trace, "spanId": span_id, "parentSpanId": parent or "", "name": name,
            "kind": 1, "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end if end is not None else (int(start) + 1000)),
            "attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in attrs.items()]}
    if events is not None:
        body["events"] = events
    if links is not None:
        body["links"] = links
    if error is not None:
        body["status"] = {"code": 2, "message": error}
    return body


def request_body(spans: list[dict], job: str = "abuse") -> dict:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": job}}]},
        "scopeSpans": [{"scope": {"name": "abuse"}, "spans": spans}]}]}


def post(otlp_http: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(otlp_http + "/v1/traces", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send_json(otlp_http: str, spans: list[dict], job: str = "abuse") -> dict:
    """POST spans as OTLP/JSON; asserts 200; returns the response (``partialSuccess`` if any)."""
    status, body = post(otlp_http, json.dumps(request_body(spans, job)).encode(),
                        "application/json")
    assert status == 200, (status, body[:500])
    return json.loads(body or b"{}")


def send_protobuf(otlp_http: str, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    status, body = post(otlp_http, request.SerializeToString(), "application/x-protobuf")
    assert status == 200, (status, body[:500])
    return ExportTraceServiceResponse.FromString(body)


@dataclass
class Seeded:
    """What ``seed`` sent: trace and span ids by role, and the partial-success messages."""

    traces: dict[str, str] = field(default_factory=dict)
    spans: dict[str, str] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)


def seed(otlp_http: str, depth: int = 3 * DEPTH_LIMIT) -> Seeded:
    out = Seeded()
    t = out.traces
    t.update(loop=hex_id(0xA001, 1, 16), deep=hex_id(0xA002, 1, 16), times=hex_id(0xA003, 1, 16),
             strings=hex_id(0xA004, 1, 16), wide=hex_id(0xA005, 1, 16),
             refused=hex_id(0xA006, 1, 16))

    # Loops: 1 -> 2 -> 1 and 3 -> 4 -> 5 -> 3 (each hanging off a real root), and a self-parent.
    a, b, c, d, e, root, selfish = (hex_id(0xB001, n, 8) for n in (1, 2, 3, 4, 5, 9, 7))
    send_json(otlp_http, [span(t["loop"], a, b, name="loop a"), span(t["loop"], root, name="root"),
                          span(t["loop"], c, e, name="loop c"), span(t["loop"], selfish, selfish,
                                                                     name="self parent")])
    send_json(otlp_http, [span(t["loop"], b, a, name="loop b", error="b failed"),
                          span(t["loop"], d, c, name="loop d"),
                          span(t["loop"], e, d, name="loop e")])
    out.spans.update(loop_a=a, loop_b=b, loop_c=c, loop_d=d, loop_e=e, self_parent=selfish)

    # A chain three times the depth limit, in random order, in several requests.
    chain = [span(t["deep"], hex_id(0xC001, i + 1, 8), hex_id(0xC001, i, 8) if i else None,
                  name=f"level {i}", start=T0 + i, end=T0 + 10 * depth - i) for i in range(depth)]
    random.Random(7).shuffle(chain)
    for i in range(0, depth, 50):
        send_json(otlp_http, chain[i:i + 50])
    out.spans.update(deep_root=hex_id(0xC001, 1, 8), deep_leaf=hex_id(0xC001, depth, 8))

    # Times at the ends of what is stored: 1 ns after 1970, int64 max (2262), events at 0 and
    # uint64 max, a running snapshot heartbeating in 2262; a child that ended before its parent.
    early, late, live, kid = (hex_id(0xD001, n, 8) for n in (1, 2, 3, 4))
    send_json(otlp_http, [
        span(t["times"], early, name="starts 1 ns after 1970", start=1, end=INT64_MAX,
             events=[{"timeUnixNano": "0", "name": "at zero"},
                     {"timeUnixNano": str(UINT64_MAX), "name": "at the end of uint64"}]),
        span(t["times"], late, early, name="starts in 2262", start=INT64_MAX - 10, end=INT64_MAX),
        span(t["times"], live, early, name="running till 2262", start=2, end=INT64_MAX,
             running=True),
        span(t["times"], kid, early, name="took 0 ns", start=5, end=5),
    ])
    out.spans.update(early=early, late=late, live=live, zero_duration=kid)

    # Strings: markup, NUL, right-to-left and astral characters, a value over the size limit,
    # links with ids of every length (links are not validated: they are shown as given).
    hostile = '<script>alert(1)</script>\u202e\x00\U0001f4a5" onload="x'
    s1, s2 = hex_id(0xE001, 1, 8), hex_id(0xE001, 2, 8)
    send_json(otlp_http, [
        span(t["strings"], s1, name=hostile, attributes={hostile: hostile, "big": "x" * 300_000},
             error=hostile, events=[{"name": hostile, "timeUnixNano": "7",
                                     "attributes": [{"key": hostile,
                                                     "value": {"stringValue": hostile}}]}],
             links=[{"traceId": "", "spanId": ""}, {"traceId": "ab", "spanId": "cd" * 20},
                    {"traceId": "00" * 16, "spanId": "00" * 8}]),
        span(t["strings"], s2, s1, name=""),
    ])
    out.spans.update(hostile=s1, unnamed=s2)

    # A node with 250 children (pages of at most 100), one orphan under a missing parent.
    parent, ghost, orphan = (hex_id(0xF001, n, 8) for n in (1, 0xFFFF, 0xFFFE))
    kids = [span(t["wide"], hex_id(0xF002, i + 1, 8), parent, name=f"child {i}", start=T0 + i % 7)
            for i in range(250)]
    send_json(otlp_http, [span(t["wide"], parent, name="wide"), *kids,
                          span(t["wide"], orphan, ghost, name="orphan")])
    out.spans.update(wide=parent, ghost=ghost, orphan=orphan)

    # Spans refused alone, each beside a good one (design.md §3 rule 4).
    good = hex_id(0x1001, 1, 8)
    tr = t["refused"]
    bad = [
        span("00" * 16, hex_id(0x1001, 2, 8)), span(tr[:30], hex_id(0x1001, 3, 8)),
        span(tr, "00" * 8), span(tr, "0102"), span(tr, hex_id(0x1001, 4, 8), "01" * 3),
        span(tr, hex_id(0x1001, 5, 8), start=0), span(tr, hex_id(0x1001, 6, 8), start="-5"),
        span(tr, hex_id(0x1001, 7, 8), start=str(253_402_300_799 * 10**9)),
        span(tr, hex_id(0x1001, 8, 8), start=T0, end=T0 - 1),
        span(tr, hex_id(0x1001, 9, 8), start=str(INT64_MAX + 1), end=str(UINT64_MAX)),
    ]
    zero_parent = span(tr, hex_id(0x1001, 10, 8), "00" * 8, name="all-zero parent: a root")
    response = send_json(otlp_http, [span(tr, good, name="the good one"), *bad, zero_parent])
    out.rejections = [response["partialSuccess"]["errorMessage"],
                      response["partialSuccess"]["rejectedSpans"]]
    out.spans.update(good=good)
    return out
