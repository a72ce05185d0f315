"""Refused parent links in the pure fold (``tree.fold``): loops and the depth limit.

Every test checks what a reader of the tree relies on: the result is a forest (no task is its
own ancestor), no tree is deeper than the limit, every rollup and child count equals what the
stored structure says, every task is there, and a refused link is kept with its reason.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as hs

from tasktree.exporter.tree import status as st
from tasktree.exporter.tree.fold import REFUSED_CYCLE, REFUSED_DEPTH, Record

from ..spans import sid
from .tree_support import declared_graphs, fold, record, structure

# -- loops ------------------------------------------------------------------------------------


def test_two_task_loop_keeps_both_and_refuses_the_smaller_ids_link_in_either_order():
    a_then_b = fold([record(1, 2), record(2, 1)])
    b_then_a = fold([record(2, 1), record(1, 2)])
    assert structure(a_then_b) == structure(b_then_a)
    a, b = a_then_b[sid(1)], a_then_b[sid(2)]
    assert (a.parent_span_id, a.refused_parent, a.refused_reason) == (None, sid(2), REFUSED_CYCLE)
    assert (b.parent_span_id, b.refused_parent) == (sid(1), None)
    assert a.counts == [1, 0, 0, 0] and not a.missing and not b.missing


def test_a_span_naming_itself_as_parent_is_a_root_with_its_link_refused():
    nodes = fold([record(5, 5), record(6, 5)])
    assert (nodes[sid(5)].parent_span_id, nodes[sid(5)].refused_parent) == (None, sid(5))
    assert nodes[sid(5)].child_count == 1 and len(nodes) == 2  # no placeholder left behind


def test_longer_loops_with_hangers_on_give_one_tree_in_every_arrival_order_and_batching():
    # 3 → 1 → 4 → 2 → 3 loops; 7 and 8 hang off it, 9 under 8; one running.
    records = [
        record(3, 2),
        record(1, 3),
        record(4, 1),
        record(2, 4),
        record(7, 4, st.ERROR),
        record(8, 2, st.RUNNING),
        record(9, 8),
    ]
    expected = None
    for order in itertools.permutations(records):
        for batches in (1, 3):
            got = structure(fold(list(order), batches=batches))
            expected = expected or got
            assert got == expected
    assert expected[sid(1)][:3] == (None, sid(3), REFUSED_CYCLE)  # the smallest id in the loop
    assert expected[sid(1)][6] == (4, 1, 1, 0)  # every other task below it


def test_duplicates_of_loop_records_change_nothing():
    records = [record(1, 3), record(2, 1), record(3, 2)]
    once = structure(fold(records))
    assert structure(fold(records * 3)) == once
    assert structure(fold(list(reversed(records)) + records)) == once


# -- the depth limit ---------------------------------------------------------------------------


def chain(levels: int) -> list[Record]:
    return [record(i, i - 1 if i else None) for i in range(levels)]


def depth_of(nodes: dict, s: bytes) -> int:
    level = 1
    while (s := nodes[s].parent_span_id) is not None:
        level += 1
    return level


def test_a_chain_exactly_at_the_limit_is_never_cut_in_any_order():
    rng = random.Random(5)
    for _ in range(30):
        records = chain(12)
        rng.shuffle(records)
        nodes = fold(records, max_depth=12, batches=rng.randint(1, 4))
        assert not any(n.refused_parent for n in nodes.values())
        assert nodes[sid(0)].counts == [11, 0, 0, 0]


def test_a_chain_past_the_limit_is_cut_into_trees_within_it_with_every_cut_visible():
    for order in ("in", "reversed", "shuffled"):
        records = chain(50)
        if order == "reversed":
            records.reverse()
        elif order == "shuffled":
            random.Random(3).shuffle(records)
        nodes = fold(records, max_depth=10)
        tops = [n for n in nodes.values() if n.parent_span_id is None]
        assert len(nodes) == 50 and not any(n.missing for n in nodes.values())
        assert all(n.refused_reason == REFUSED_DEPTH for n in tops if n.span_id != sid(0))
        assert all(
            n.refused_parent == sid(int.from_bytes(n.span_id, "big") - 2)
            for n in tops
            if n.span_id != sid(0)
        )
        assert max(depth_of(nodes, s) for s in nodes) <= 10
        assert len(tops) >= 5  # 50 levels in pieces of at most 10
        if order == "in":  # parents first: cut exactly every 10 levels
            assert [int.from_bytes(n.span_id, "big") - 1 for n in tops] == [0, 10, 20, 30, 40]


def test_a_subtree_joining_too_deep_is_refused_whole_at_the_join_and_stays_intact():
    # 2 → 3 → 4 → 5 → 6 grew under a placeholder for 2; then 0 → 1 arrive, then 2 (child of 1):
    # hanging 2 under 1 would make 7 levels, past the limit of 5.
    records = [
        record(3, 2),
        record(4, 3),
        record(5, 4),
        record(6, 5),
        record(1, 0),
        record(0, None),
        record(2, 1),
    ]
    nodes = fold(records, max_depth=5)
    two = nodes[sid(2)]
    assert (two.parent_span_id, two.refused_parent, two.refused_reason) == (
        None,
        sid(1),
        REFUSED_DEPTH,
    )
    assert not two.missing and two.counts == [4, 0, 0, 0]  # the placeholder became the task
    assert nodes[sid(3)].parent_span_id == sid(2) and nodes[sid(0)].counts == [1, 0, 0, 0]


def test_status_changes_deep_in_a_long_cut_chain_only_walk_up_their_piece():
    records = chain(3000)
    nodes = fold(
        [*records, *[record(i, i - 1 if i else None, st.RUNNING) for i in range(3000)]],
        max_depth=100,
    )
    assert nodes[sid(2999)].status == st.OK  # a final record beats a later running snapshot


# -- any graph of declared parents ---------------------------------------------------------------


def expected_parents(parents: list) -> dict:
    """By definition: the declared parent, except in each loop the smallest id keeps none."""
    cut = set()
    for start in range(len(parents)):
        path, node = [], start
        while node is not None and node < len(parents) and node not in path:
            path.append(node)
            node = parents[node]
        if node is not None and node < len(parents) and node in path:
            cut.add(min(path[path.index(node) :]))
    return {i: (None if i in cut else p) for i, p in enumerate(parents)}


def forest_depth(parent_of: dict) -> int:
    def depth(i):
        level = 1
        while (i := parent_of.get(i)) is not None:
            level += 1
        return level

    return max(depth(i) for i in parent_of)


@settings(max_examples=300, deadline=None)
@given(graph=declared_graphs(), max_depth=hs.integers(2, 12), data=hs.data())
def test_any_declared_parents_fold_into_a_consistent_forest(graph, max_depth, data):
    parents, statuses = graph
    records = [
        record(i, p, s, landing=i) for i, (p, s) in enumerate(zip(parents, statuses, strict=True))
    ]
    delivered = data.draw(hs.permutations(records))
    delivered += data.draw(hs.lists(hs.sampled_from(records), max_size=4))
    nodes = fold(delivered, max_depth=max_depth, batches=data.draw(hs.integers(1, 3)))

    for i, declared in enumerate(parents):
        n = nodes[sid(i)]
        assert not n.missing
        want = sid(declared) if declared is not None else None
        assert n.parent_span_id == want or (n.parent_span_id is None and n.refused_parent == want)

    expected = expected_parents(parents)
    with_placeholders = {**{p: None for p in expected.values() if p is not None}, **expected}
    # Within the limit: one answer in any order.  (After a loop is cut, heights above the cut are
    # upper bounds, so a loop's tree must stay well within the limit for that; see tree.fold.)
    looped = any(expected[i] != p for i, p in enumerate(parents))
    if forest_depth(with_placeholders) * (3 if looped else 1) <= max_depth:
        assert {s: n.parent_span_id for s, n in nodes.items() if not n.missing} == {
            sid(i): (sid(p) if p is not None else None) for i, p in expected.items()
        }
        assert not any(n.refused_reason == REFUSED_DEPTH for n in nodes.values())


def test_the_depth_limit_comes_from_tasktree_max_depth_and_must_allow_children():
    from tasktree.exporter.settings import Settings, SettingsError

    assert Settings.from_env({}).max_depth == 1000
    assert Settings.from_env({"TASKTREE_MAX_DEPTH": "50"}).max_depth == 50
    for bad in ("1", "0", "many"):
        try:
            Settings.from_env({"TASKTREE_MAX_DEPTH": bad})
        except SettingsError as exc:
            assert "TASKTREE_MAX_DEPTH" in str(exc)
        else:
            raise AssertionError(f"TASKTREE_MAX_DEPTH={bad} was accepted")
