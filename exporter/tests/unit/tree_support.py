"""Folding records in the pure tree code (``tree.fold``) as the store would, checking the tree's
invariants after every fold, and the graphs of declared parents hypothesis draws."""

from __future__ import annotations

from hypothesis import strategies as hs

from tasktree.exporter.tree import status as st
from tasktree.exporter.tree.fold import Record, RunFold

from ..spans import sid


def record(n: int, parent: int | None, status: int = st.OK, landing: int = 0) -> Record:
    return Record(
        landing,
        sid(n),
        sid(parent) if parent is not None else None,
        status,
        1_000 + n,
        2_000 + n if status != st.RUNNING else None,
        1_500 if status == st.RUNNING else None,
    )


def fold(records: list[Record], max_depth: int = 1000, batches: int = 1) -> dict:
    """Apply ``records`` in order, in ``batches`` folds sharing the node table (as the store
    would reload it), and return the nodes after checking the tree's invariants."""
    nodes: dict = {}
    size = max(1, -(-len(records) // batches))
    for i in range(0, len(records), size):
        run = RunFold(nodes, stall_cutoff_ns=0, max_depth=max_depth)
        for r in records[i : i + size]:
            run.apply(r)
    check_tree(nodes, max_depth)
    return nodes


def check_tree(nodes: dict, max_depth: int) -> None:
    """Forest, depth within the limit, rollups and child counts as the structure says."""
    children: dict = {s: [] for s in nodes}
    for s, n in nodes.items():
        if n.parent_span_id is not None:
            children[n.parent_span_id].append(s)

    def walk(s: bytes, level: int, seen: set) -> list[int]:
        assert s not in seen, "a task is its own ancestor"
        seen.add(s)
        assert level <= max_depth, f"tree deeper than {max_depth}"
        total = [0, 0, 0, 0]
        for c in children[s]:
            sub = walk(c, level + 1, seen)
            total = [a + b for a, b in zip(total, sub, strict=True)]
            total[st.COUNT_INDEX[nodes[c].status]] += 1
        n = nodes[s]
        assert n.counts == total, (s.hex(), n.counts, total)
        assert n.child_count == len(children[s]), (s.hex(), n.child_count)
        return total

    seen: set = set()
    for s, n in nodes.items():
        if n.parent_span_id is None:
            walk(s, 1, seen)
    assert seen == set(nodes), "some tasks hang under nothing reachable"


def structure(nodes: dict) -> dict:
    return {
        s: (
            n.parent_span_id,
            n.refused_parent,
            n.refused_reason,
            n.missing,
            n.status,
            n.child_count,
            tuple(n.counts),
        )
        for s, n in nodes.items()
    }


@hs.composite
def declared_graphs(draw):
    """Tasks 0..n-1 each declaring a parent among 0..n+1 (n, n+1: never sent) or none; loops,
    self-parents and chains past a small depth limit all come up."""
    n = draw(hs.integers(1, 12))
    parents = [draw(hs.none() | hs.integers(0, n + 1)) for _ in range(n)]
    statuses = [draw(hs.sampled_from([st.OK, st.ERROR, st.RUNNING])) for _ in range(n)]
    return parents, statuses
