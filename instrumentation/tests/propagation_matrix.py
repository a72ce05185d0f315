"""The propagation matrix: the exact expected tree of ``scripts/matrix_job.py``, and its check.

``assert_matrix(spans)`` takes the final records of one run from anywhere (the OTLP test sink, or
a real ``tasktree serve`` through :func:`records_from_api`) as objects or dicts with ``trace_id``,
``span_id``, ``parent`` (or ``parent_span_id``), ``name`` and ``status``, and fails listing every
task that is missing, duplicated, unexpected, orphaned, under the wrong parent or in the wrong
status.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

METHODS = ("fork", "spawn", "forkserver")


def _expected() -> dict[str, str | None]:
    tree: dict[str, str | None] = {"matrix": None}

    def under(parent: str, *children: str) -> None:
        tree[parent] = tree.get(parent, "matrix")
        for child in children:
            tree[child] = parent

    under("nested-outer", "nested-inner")
    under("recursion", "recurse-3")
    tree["recurse-2"], tree["recurse-1"] = "recurse-3", "recurse-2"
    under("thread", "thread-leaf")
    under("thread-subclass", "thread-subclass-leaf")
    under("timer", "timer-leaf")
    under("threadpool", "threadpool-submit", "threadpool-map")
    for m in METHODS:
        under(f"process-{m}", f"process-{m}-leaf")
        under(f"pool-{m}", f"pool-{m}-map", f"pool-{m}-apply", f"pool-{m}-imap")
        under(f"ppe-{m}", f"ppe-{m}-submit", f"ppe-{m}-map")
    for mechanism in ("subprocess-run", "popen"):
        under(mechanism, f"{mechanism}-child")
        tree[f"{mechanism}-child/inner"] = f"{mechanism}-child"
    under("tasktree-run", "runner")
    tree["runner-child"], tree["runner-child/inner"] = "runner", "runner-child"
    under(
        "asyncio",
        "asyncio-task",
        "asyncio-gather-1",
        "asyncio-gather-2",
        "asyncio-taskgroup",
        "asyncio-agen",
    )
    tree["asyncio-agen-item"] = "asyncio-agen"
    under("generator-owner", "generator")
    tree["generator-item-0"] = tree["generator-item-1"] = "generator"
    tree["generator-consumer"] = "matrix"
    under("failing-parent", "failing-leaf")
    return tree


EXPECTED: dict[str, str | None] = _expected()
"""Task name → the name of its parent (None for the root)."""

EXPECTED_ERRORS = {"failing-leaf"}
"""The only tasks that end in error (their parent caught the exception and ended ok)."""


@dataclass(frozen=True)
class Node:
    trace_id: str
    span_id: str
    parent: str | None
    name: str
    status: str


def _node(item) -> Node:
    get = (
        item.get
        if isinstance(item, dict)
        else lambda key, default=None: getattr(item, key, default)
    )
    parent = get("parent", None) or get("parent_span_id", None)
    return Node(get("trace_id"), get("span_id"), parent or None, get("name"), get("status"))


def assert_matrix(
    spans, expected: dict[str, str | None] = EXPECTED, errors=EXPECTED_ERRORS
) -> None:
    """Asserts that ``spans`` are exactly the ``expected`` tree: nothing missing, duplicated,
    unexpected, orphaned or mislinked, and ``error`` exactly for ``errors`` (others ``ok``)."""
    nodes = [_node(item) for item in spans]
    problems = []
    counts = Counter(node.name for node in nodes)
    problems += [f"missing: {name}" for name in expected if counts[name] == 0]
    problems += [f"{counts[name]} times: {name}" for name in expected if counts[name] > 1]
    problems += [f"unexpected: {name}" for name in counts if name not in expected]
    trace_ids = {node.trace_id for node in nodes}
    if len(trace_ids) > 1:
        problems.append(f"{len(trace_ids)} traces instead of one: {sorted(trace_ids)}")
    by_id = {node.span_id: node for node in nodes}
    for node in nodes:
        if node.name not in expected:
            continue
        want = expected[node.name]
        if node.parent is None:
            got = None
        elif node.parent in by_id:
            got = by_id[node.parent].name
        else:
            problems.append(f"orphan: {node.name} (parent {node.parent} never recorded)")
            continue
        if got != want:
            problems.append(f"mislinked: {node.name} under {got!r}, expected {want!r}")
        want_status = "error" if node.name in errors else "ok"
        if node.status != want_status:
            problems.append(f"status: {node.name} is {node.status}, expected {want_status}")
    assert not problems, f"{len(problems)} problems in the propagation matrix:\n" + "\n".join(
        problems
    )


def records_from_sink(records) -> list[Node]:
    """The final records received by the OTLP test sink, as matrix nodes (UNSET counts as ok)."""
    return [
        Node(r.trace_id, r.span_id, r.parent, r.name, "error" if r.status == "error" else "ok")
        for r in records
        if not r.running
    ]


def records_from_api(server, trace_id: str) -> list[Node]:
    """Every task of the run ``trace_id`` read through tasktree's JSON API (``server.get(path)``
    returning decoded JSON), walking the tree from its roots; placeholders are kept as
    ``missing`` nodes so that an orphan shows."""
    run = server.get(f"/api/runs/{trace_id}")
    nodes, pending = [], list(run["roots"])
    while pending:
        item = pending.pop()
        status = "missing" if item.get("missing") else item["status"]
        nodes.append(
            Node(trace_id, item["span_id"], item.get("parent_span_id"), item["name"], status)
        )
        if item.get("child_count"):
            cursor = None
            while True:
                path = f"/api/runs/{trace_id}/tasks/{item['span_id']}/children?limit=500"
                page = server.get(path + (f"&cursor={cursor}" if cursor else ""))
                pending.extend(page["children"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    return nodes
