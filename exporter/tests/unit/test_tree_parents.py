"""Records of one task naming different parents, in the pure fold (``tree.fold``): the parent
comes from the record that wins the status lattice, whatever the arrival order and batching."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as hs

from tasktree.exporter.tree import status as st
from tasktree.exporter.tree.fold import REFUSED_CYCLE, REFUSED_DEPTH, Record, RunFold

from ..spans import sid
from .tree_support import declared_graphs, fold, record, structure


def snapshot(n: int, parent: int | None, heartbeat: int = 1_500, landing: int = 0) -> Record:
    """A running snapshot of task ``n``: any final record of it wins over it."""
    return Record(
        landing,
        sid(n),
        sid(parent) if parent is not None else None,
        st.RUNNING,
        1_000 + n,
        None,
        heartbeat,
    )


def every_order(records: list[Record], max_depth: int = 1000) -> dict:
    """The one structure every arrival order and batching gives (asserted), with duplicates."""
    found = {
        str(sorted(structure(fold(order + order[:1], max_depth, batches)).items()))
        for order in map(list, itertools.permutations(records))
        for batches in (1, 2, 3)
    }
    assert len(found) == 1, found
    return fold(records, max_depth)


def test_the_final_records_parent_wins_and_the_subtree_moves_with_it():
    # 5's snapshot names 1, its final 2; 6 hangs under 5.
    nodes = every_order(
        [
            record(0, None),
            record(1, 0),
            record(2, 0),
            snapshot(5, 1),
            record(5, 2, st.ERROR),
            record(6, 5),
        ]
    )
    assert nodes[sid(5)].parent_span_id == sid(2) and nodes[sid(5)].status == st.ERROR
    assert (nodes[sid(1)].child_count, nodes[sid(1)].counts) == (0, [0, 0, 0, 0])
    assert (nodes[sid(2)].child_count, nodes[sid(2)].counts) == (1, [1, 1, 0, 0])
    assert nodes[sid(0)].counts == [3, 1, 0, 0]


def test_the_newest_snapshots_parent_wins_and_a_tie_goes_to_the_larger_parent_id():
    nodes = every_order(
        [
            snapshot(5, 1, heartbeat=9),
            snapshot(5, 2, heartbeat=8),
            snapshot(6, 1),
            snapshot(6, 2),
            snapshot(6, None),
        ]
    )
    assert nodes[sid(5)].parent_span_id == sid(1)
    assert nodes[sid(6)].parent_span_id == sid(2)
    ties = every_order([record(7, 3), record(7, None), record(7, 4)])
    assert ties[sid(7)].parent_span_id == sid(4)


def test_a_placeholder_left_without_children_goes():
    nodes = every_order([snapshot(5, 8), record(5, 9), record(6, 5)])
    assert sid(8) not in nodes and nodes[sid(9)].missing and nodes[sid(9)].counts == [2, 0, 0, 0]


def test_a_stored_placeholder_left_without_children_is_dropped_for_the_store_to_delete():
    stored: dict = {}
    RunFold(stored, stall_cutoff_ns=0).apply(snapshot(5, 8))
    for node in stored.values():  # as the store loads them in the next batch
        node.is_new = node.dirty = False
    second = RunFold(stored, stall_cutoff_ns=0)
    second.apply(record(5, 9))
    assert list(second.dropped) == [sid(8)] and sid(8) not in stored
    second.apply(record(6, 8))  # named again in the same batch: its row is updated, not inserted
    assert not second.dropped and not stored[sid(8)].is_new and stored[sid(8)].child_count == 1


def test_a_refused_link_is_decided_again_against_the_new_parent():
    # (Only orders where the chain comes first: under a placeholder, the snapshot's link can make
    # the chain itself too deep, and depth cuts depend on the arrival order; see tree.fold.)
    deep = [record(0, None), record(1, 0), record(2, 1)]  # three levels: the limit
    for x in ([snapshot(5, 2), record(5, 0)], [record(5, 0), snapshot(5, 2)]):
        nodes = fold([*deep, *x], max_depth=3)
        assert nodes[sid(5)].parent_span_id == sid(0) and nodes[sid(5)].refused_parent is None
    for x in ([snapshot(5, 0), record(5, 2)], [record(5, 2), snapshot(5, 0)]):
        five = fold([*deep, *x], max_depth=3)[sid(5)]
        assert (five.parent_span_id, five.refused_parent, five.refused_reason) == (
            None,
            sid(2),
            REFUSED_DEPTH,
        )


def test_a_loop_through_a_losing_record_leaves_no_cut_behind():
    # 2's snapshot names 3 and 3 names 2: a loop, cut at 2, until 2's final names no parent.
    nodes = every_order([snapshot(2, 3), record(2, None), record(3, 2)])
    assert nodes[sid(3)].parent_span_id == sid(2) and nodes[sid(2)].refused_parent is None
    # The same with the cut elsewhere in the loop: 3's losing snapshot closed it at 1.
    nodes = every_order([record(1, 2), record(2, 3), snapshot(3, 1), record(3, None)])
    assert nodes[sid(1)].parent_span_id == sid(2) and nodes[sid(3)].counts == [2, 0, 0, 0]
    nodes = every_order([record(1, 2), record(2, 3), snapshot(3, None), record(3, 1)])
    assert (nodes[sid(1)].refused_parent, nodes[sid(1)].refused_reason) == (sid(2), REFUSED_CYCLE)
    # 2's final closes the loop 1 ⇄ 2, cut at 1, which also ends the loop 0 → 1 → 2 → 0 that
    # 2's snapshot closed (cut at 0): 0's link is taken again.
    nodes = every_order([record(0, 1), record(1, 2), record(2, 1), snapshot(2, 0)])
    assert (nodes[sid(1)].refused_parent, nodes[sid(0)].parent_span_id) == (sid(2), sid(1))


@settings(max_examples=600, deadline=None)
@given(graph=declared_graphs(), data=hs.data())
def test_losing_records_leave_no_trace_in_any_order(graph, data):
    """Each task's final record declares a parent as in ``declared_graphs`` (loops included); a
    running snapshot of it names another (or the same).  The tree is the one of the finals alone."""
    parents, statuses = graph
    finals = [
        record(i, p, s if s != st.RUNNING else st.OK, landing=i)
        for i, (p, s) in enumerate(zip(parents, statuses, strict=True))
    ]
    decoys = [
        snapshot(i, data.draw(hs.none() | hs.integers(0, len(parents) + 1)), landing=100 + i)
        for i in range(len(parents))
    ]
    delivered = data.draw(hs.permutations(finals + decoys))
    delivered += data.draw(hs.lists(hs.sampled_from(delivered), max_size=4))
    batches = data.draw(hs.integers(1, 3))
    assert structure(fold(delivered, batches=batches)) == structure(fold(finals))
