"""The tree rules of design.md §3 (rules 1–3) on the pure fold (``tree.fold.RunFold``), without
PostgreSQL: what a user sees of each task (its status, its place, the counts of its run and of
every task above it) whatever the order, duplication and batching of its records.

Times are small numbers: a snapshot's heartbeat is "fresh" when it is at or after the fold's
``stall_cutoff_ns`` (the store's now − ``stall_after``) and stalled otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as hs

from tasktree.exporter.tree import status as st
from tasktree.exporter.tree.fold import Record, RunFold

from ..spans import sid
from .tree_support import check_tree

CUTOFF = 50  # heartbeats from 50 on are fresh, older ones are stalled


def final(n: int, parent: int | None, status: int = st.OK, end: int = 200) -> Record:
    """The final record of task ``n`` (``ok`` or ``error``)."""
    return Record(0, sid(n), _sid(parent), status, 10 + n, end, None, f"task-{n}")


def snapshot(n: int, parent: int | None, heartbeat: int) -> Record:
    """A running snapshot (or heartbeat) of task ``n`` sent at ``heartbeat``."""
    return Record(0, sid(n), _sid(parent), st.RUNNING, 10 + n, None, heartbeat, f"task-{n}")


def _sid(n: int | None) -> bytes | None:
    return None if n is None else sid(n)


@dataclass
class Folded:
    """The nodes after every batch, and what the run's summary adds up to over the batches."""

    nodes: dict
    run_counts: list[int]  # (ok, error, running, stalled), the run page's counts
    run_tasks: int
    finished: list  # the finished-task metrics, one entry per task that ended

    def status(self, n: int) -> int:
        return self.nodes[sid(n)].status

    def counts(self, n: int) -> list[int]:
        return self.nodes[sid(n)].counts


def fold_in_batches(records: list[Record], batches: int = 1, cutoff: int = CUTOFF) -> Folded:
    """Apply ``records`` in order, split into ``batches`` folds over one node table (as the store
    reloads it), checking the rollups against the structure after the last one."""
    folded = Folded({}, [0, 0, 0, 0], 0, [])
    size = max(1, -(-len(records) // batches))
    for first in range(0, len(records), size):
        run = RunFold(folded.nodes, stall_cutoff_ns=cutoff)
        for record in records[first : first + size]:
            run.apply(record)
        _add_run_summary(folded, run)
    check_tree(folded.nodes, max_depth=1000)
    return folded


def _add_run_summary(folded: Folded, run: RunFold) -> None:
    folded.run_counts = [a + b for a, b in zip(folded.run_counts, run.delta.counts, strict=True)]
    folded.run_tasks += run.delta.tasks
    folded.finished += run.finished


def as_stored(nodes: dict) -> dict:
    """The nodes as the store loads them for the next fold: written, nothing changed yet."""
    for node in nodes.values():
        node.is_new = node.dirty = False
    return nodes


def counts(ok: int = 0, error: int = 0, running: int = 0, stalled: int = 0) -> list[int]:
    return [ok, error, running, stalled]


# -- the status lattice -----------------------------------------------------------------------


def test_a_final_status_beats_a_later_running_snapshot_in_either_order():
    # The snapshot's heartbeat (300) is after the task's end (200): it arrived late, e.g. retried.
    for records in (
        [final(0, None), snapshot(1, 0, 40), final(1, 0, st.ERROR), snapshot(1, 0, 300)],
        [final(0, None), snapshot(1, 0, 300), final(1, 0, st.ERROR), snapshot(1, 0, 40)],
        [snapshot(1, 0, 300), final(1, 0, st.ERROR), final(0, None)],
    ):
        folded = fold_in_batches(records)
        assert folded.status(1) == st.ERROR, records
        assert folded.counts(0) == counts(error=1)
        assert folded.run_counts == counts(ok=1, error=1)


def test_nothing_turns_a_final_task_back_to_running_across_folds():
    nodes: dict = {}
    RunFold(nodes, stall_cutoff_ns=CUTOFF).apply(final(1, None, st.OK, end=100))
    later = RunFold(as_stored(nodes), stall_cutoff_ns=CUTOFF)
    later.apply(snapshot(1, None, heartbeat=500))
    assert nodes[sid(1)].status == st.OK
    assert not later.changed_nodes() and later.delta.counts == counts()


def test_the_newest_heartbeat_wins_whatever_the_order():
    fresh_last = fold_in_batches([snapshot(1, None, 20), snapshot(1, None, 60)])
    fresh_first = fold_in_batches([snapshot(1, None, 60), snapshot(1, None, 20)])
    for folded in (fresh_last, fresh_first):
        assert folded.status(1) == st.RUNNING
        assert folded.nodes[sid(1)].heartbeat_ns == 60
        assert folded.run_counts == counts(running=1)


def test_a_task_whose_newest_heartbeat_is_old_is_stalled_and_a_fresh_one_revives_it():
    nodes: dict = {}
    first = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    for record in (final(0, None), snapshot(1, 0, 30), snapshot(1, 0, 20)):
        first.apply(record)
    assert nodes[sid(1)].status == st.STALLED and nodes[sid(0)].counts == counts(stalled=1)

    revived = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    revived.apply(snapshot(1, 0, 70))
    assert nodes[sid(1)].status == st.RUNNING and nodes[sid(0)].counts == counts(running=1)
    assert revived.delta.counts == counts(running=1, stalled=-1)


def test_the_sweep_stalls_a_silent_running_task_and_never_a_finished_one():
    nodes: dict = {}
    first = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    for record in (final(0, None), snapshot(1, 0, 60), final(2, 0)):
        first.apply(record)
    # Time passes: the cutoff moves past task 1's last heartbeat (60).
    sweep = RunFold(nodes, stall_cutoff_ns=100)
    assert sweep.mark_stalled(sid(1)) and not sweep.mark_stalled(sid(2))
    assert not sweep.mark_stalled(sid(1))  # already stalled: counted once
    assert nodes[sid(1)].status == st.STALLED and nodes[sid(2)].status == st.OK
    assert nodes[sid(0)].counts == counts(ok=1, stalled=1)
    assert sweep.delta.counts == counts(running=-1, stalled=1)


def test_a_task_is_counted_finished_once_however_often_its_final_record_comes():
    folded = fold_in_batches(
        [
            snapshot(1, None, 60),
            final(1, None),
            final(1, None),
            snapshot(1, None, 90),
            final(1, None),
        ],
        batches=3,
    )
    assert [(f.name, f.status, f.root) for f in folded.finished] == [("task-1", st.OK, True)]
    assert folded.finished[0].duration_ns == 200 - 11


# -- missing parents ----------------------------------------------------------------------------


def test_a_task_whose_parent_has_not_arrived_shows_under_a_placeholder_at_the_top():
    folded = fold_in_batches([final(2, 1), snapshot(3, 1, 60), final(4, 2, st.ERROR)])
    placeholder = folded.nodes[sid(1)]
    assert placeholder.missing and placeholder.parent_span_id is None
    assert (placeholder.child_count, placeholder.counts) == (2, counts(ok=1, error=1, running=1))
    assert folded.run_tasks == 3 and folded.run_counts == counts(ok=1, error=1, running=1)


def test_when_the_parent_arrives_the_placeholder_becomes_it_and_the_counts_move_up():
    nodes: dict = {}
    early = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    for record in (final(0, None), final(2, 1), final(3, 2, st.ERROR)):
        early.apply(record)
    assert nodes[sid(0)].counts == counts() and nodes[sid(1)].missing

    arrival = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    arrival.apply(final(1, 0))
    one = nodes[sid(1)]
    assert not one.missing and one.parent_span_id == sid(0) and one.status == st.OK
    assert one.counts == counts(ok=1, error=1)
    assert nodes[sid(0)].counts == counts(ok=2, error=1) and nodes[sid(0)].child_count == 1
    assert arrival.delta.tasks == 1 and arrival.delta.counts == counts(ok=1)


# -- rollups ------------------------------------------------------------------------------------


def test_every_task_counts_its_descendants_by_status_as_they_change():
    nodes: dict = {}
    run = RunFold(nodes, stall_cutoff_ns=CUTOFF)
    for record in (
        snapshot(0, None, 60),
        final(1, 0),
        snapshot(2, 0, 60),
        snapshot(3, 2, 60),
        final(4, 2, st.ERROR),
    ):
        run.apply(record)
    assert nodes[sid(0)].counts == counts(ok=1, error=1, running=2)
    assert nodes[sid(2)].counts == counts(error=1, running=1)
    assert (nodes[sid(0)].child_count, nodes[sid(2)].child_count) == (2, 2)

    run.apply(final(3, 2, st.ERROR))
    assert nodes[sid(0)].counts == counts(ok=1, error=2, running=1)
    assert nodes[sid(2)].counts == counts(error=2)
    assert run.delta.counts == counts(ok=1, error=2, running=2) and run.delta.tasks == 5


# -- any order, any duplicates, any batching ------------------------------------------------------


@hs.composite
def runs(draw):
    """Tasks 0..n-1, each under an earlier task, none, or task n (never sent: a placeholder); each
    has a final record, running snapshots (fresh or old heartbeats), or both."""
    n = draw(hs.integers(1, 8))
    records, expected = [], {}
    for i in range(n):
        earlier = [hs.integers(0, i - 1)] if i else []
        parent = draw(hs.one_of(hs.none(), hs.just(n), *earlier))
        ending = draw(hs.sampled_from([None, st.OK, st.ERROR]))
        beats = draw(hs.lists(hs.integers(1, 99), min_size=0 if ending else 1, max_size=3))
        records += [snapshot(i, parent, beat) for beat in beats]
        if ending:
            records.append(final(i, parent, ending))
        fresh = max(beats, default=0) >= CUTOFF
        expected[i] = ending or (st.RUNNING if fresh else st.STALLED)
    return records, expected


@settings(max_examples=300, deadline=None)
@given(run=runs(), data=hs.data())
def test_any_order_duplicates_and_batching_give_each_task_its_own_status_and_true_counts(run, data):
    records, expected = run
    delivered = data.draw(hs.permutations(records))
    delivered += data.draw(hs.lists(hs.sampled_from(records), max_size=4))
    folded = fold_in_batches(delivered, batches=data.draw(hs.integers(1, 3)))

    assert {i: folded.status(i) for i in expected} == expected
    by_status = Counter(expected.values())
    assert folded.run_counts == [by_status[s] for s in st.COUNTED]
    assert folded.run_tasks == len(expected)
    assert len(folded.finished) == sum(s in st.FINAL for s in expected.values())
    in_order = fold_in_batches(records)
    assert _shape(folded) == _shape(in_order)


def _shape(folded: Folded) -> dict:
    return {
        span: (n.parent_span_id, n.missing, n.status, n.child_count, tuple(n.counts))
        for span, n in folded.nodes.items()
    }
