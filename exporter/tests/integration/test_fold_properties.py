"""design.md §3 rule 1: any permutation of the same span records, with duplicates, in any batch
split, folds into the same tree, statuses and rollups as in-order delivery."""

from __future__ import annotations

import itertools
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from tasktree.exporter.tree import status as st

from ..spans import deliver, sid, span
from .fold_support import run, tree, wrong_paths

_traces = itertools.count(1000)


@hs.composite
def run_records(draw):
    """Records of one random tree: finals, running snapshots, and parents that never arrive.
    The records of one task may name different parents (any earlier task, or none), and two of
    them may tie on the lattice (same heartbeat, or same end and status)."""
    size = draw(hs.integers(1, 25))
    lost = draw(hs.sets(hs.integers(0, size - 1), max_size=size // 4))
    now = time.time_ns()
    records = []
    for i in range(size):
        if i in lost:
            continue
        start = 1_000 + i
        mine = [
            dict(status=st.RUNNING, heartbeat=now + draw(hs.integers(0, 1)))
            for _ in range(draw(hs.integers(0, 2)))
        ]
        mine += [
            dict(
                status=draw(hs.sampled_from([st.OK, st.ERROR])),
                end=start + draw(hs.integers(10, 11)),
            )
            for _ in range(draw(hs.integers(0 if mine else 1, 2)))
        ]
        for r in mine:
            parent = draw(hs.none() | hs.integers(0, i - 1)) if i else None
            records.append(
                dict(
                    span_id=sid(i),
                    parent=sid(parent) if parent is not None else None,
                    start=start,
                    **r,
                )
            )
    return records


@pytest.fixture(scope="module")
def conn(store_database_url):
    with psycopg.connect(store_database_url, autocommit=True) as conn:
        yield conn


def _rows(trace, records):
    out = []
    for r in records:
        r = dict(r)
        out.append(span(trace, r.pop("span_id"), r.pop("parent"), **r))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=run_records(), data=hs.data())
def test_permuted_duplicated_split_delivery_gives_the_in_order_tree(conn, records, data):
    in_order, shuffled = next(_traces).to_bytes(16, "big"), next(_traces).to_bytes(16, "big")
    deliver(conn, _rows(in_order, records))

    delivered = data.draw(hs.permutations(records))
    delivered += data.draw(hs.lists(hs.sampled_from(records), max_size=len(records)))
    cuts = sorted(data.draw(hs.lists(hs.integers(0, len(delivered)), max_size=4)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    limit = data.draw(hs.integers(1, 12))
    deliver(
        conn,
        *[_rows(shuffled, b) for b in batches],
        fold_limit=limit,
        fold_between=data.draw(hs.booleans()),
    )

    assert tree(conn, in_order) == expected_tree(records)
    assert tree(conn, shuffled) == tree(conn, in_order)
    assert run(conn, shuffled) == run(conn, in_order)
    # The run counts its live tasks: the stall sweep finds the days to read by them.
    statuses = [row[2] for row in tree(conn, in_order).values()]
    assert run(conn, shuffled)[7:9] == (statuses.count(st.RUNNING), statuses.count(st.STALLED))
    # Subtree lists by status read paths: right after any order of folds.
    assert wrong_paths(conn, in_order) == {}
    assert wrong_paths(conn, shuffled) == {}


def expected_tree(records):
    """The tree by definition: each task's state and parent come from its winning record (a
    final beats running, then the later end or heartbeat, an error beats ok, then the larger
    parent id); placeholders for parents never sent; counts over all descendants; child_count
    over direct children."""
    winner = {}
    for r in records:
        if r["span_id"] not in winner or _lattice(r) > _lattice(winner[r["span_id"]]):
            winner[r["span_id"]] = r
    status = {s: r["status"] for s, r in winner.items()}
    parent = {s: r["parent"] for s, r in winner.items()}
    nodes = {s: [parent[s], False, status[s], 0, 0, 0, 0, 0] for s in status}
    for p in parent.values():
        if p is not None and p not in nodes:
            nodes[p] = [None, True, st.NONE, 0, 0, 0, 0, 0]
    for s, own in status.items():
        if parent[s] is not None:
            nodes[parent[s]][3] += 1
        ancestor = parent[s]
        while ancestor is not None:
            nodes[ancestor][4 + st.COUNT_INDEX[own]] += 1
            ancestor = nodes[ancestor][0]
    return {s: tuple(v) for s, v in nodes.items()}


def _lattice(record):
    final = record["status"] in (st.OK, st.ERROR)
    time_ns = record["end"] if final else record["heartbeat"]
    return (final, time_ns, record["status"] if final else 0, record["parent"] or b"")
