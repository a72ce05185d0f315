"""Folding span records into the task tree: the rules of design.md §3 as pure code.

A ``RunFold`` holds the part of one run's tree that a batch touches (the records' own nodes and
their ancestor chains, as loaded from the store) and applies records to it:

* **Status lattice.** Each record has a rank: any final record (``ok``/``error``) outranks every
  running snapshot; among finals the later end wins, among snapshots the later heartbeat.  A record
  replaces a node's state only when it outranks it, so any order and any duplicates give the same
  result, and nothing turns a final status back into a running one.
* **The winning record names the parent.**  A task's parent is the one its winning record names
  (a rank tie goes to the larger parent id, ``None`` smallest).  When it names another parent
  than the node has, the subtree moves; a placeholder left without children goes (``dropped``),
  and a loop cut because it went through the old link is tried again (a depth cut is not:
  heights above a move stay upper bounds, so near the limit the order may still matter).
* **Missing parents.** A record whose parent is unknown hangs under a placeholder (``missing``) for
  that parent; when the parent arrives the placeholder becomes it and its subtree counts move up.
* **Rollups.** Each node keeps ``counts`` = how many of its descendants are in each status, plus its
  ``child_count``.  Every change of a node's own status, and every attachment of a subtree, is
  applied to all its ancestors, so reading a node never has to look at its descendants.
* **Leaves stored by the store.**  Most records are a new task's one record: the store writes
  their rows itself, set-based, and hands them over counted by parent and status
  (``add_stored_leaves``, which makes a placeholder for a parent not stored yet), so that the
  rollups above them are done here once per parent instead of once per record.
* **Refused links** (design.md §3 rule 7: limits are visible).  A task whose declared parent
  cannot be its parent is kept at the top of its run, its declared parent in ``refused_parent``
  with the reason:

  - ``REFUSED_CYCLE``: the declared parents loop (A → B → A, or a span its own parent).  In each
    loop the link of the task with the smallest span id is refused, whichever record closes the
    loop, so any arrival order gives the same tree (when the loop's tree is far enough from the
    depth limit: heights above a cut stay upper bounds, which may refuse a link near the limit).
  - ``REFUSED_DEPTH``: the link would make the tree deeper than ``max_depth`` levels (a root alone
    is one level).  Every node keeps its ``height`` (levels below it), so the check needs only the
    parent's chain.  Trees are never deeper than ``max_depth``, which bounds every ancestor walk
    here and the chains the store loads: each record costs O(``max_depth``), not O(depth of the
    run).  A tree within the limit never has a link refused, in any arrival order (every partial
    tree is part of the final one), so rule 1 holds for it; beyond the limit where the tree is cut
    depends on the arrival order.

The store turns the resulting ``changes()`` into set-based writes (``store/fold.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from tasktree.exporter.tree import status as st

logger = logging.getLogger(__name__)

_COUNT_INDEX = st.COUNT_INDEX

DEFAULT_MAX_DEPTH = 1000
"""Levels a run's tree may have (``TASKTREE_MAX_DEPTH``).  Python's own recursion limit is 1000
frames, so a recursive function decorated with ``@task`` never gets near it."""

Rank = tuple[int, int, int]
"""A record's place in the status lattice (``record_rank``): tuples compare, higher wins."""

REFUSED_CYCLE = 1
REFUSED_DEPTH = 2
REFUSED_REASONS = {REFUSED_CYCLE: "cycle", REFUSED_DEPTH: "depth"}


@dataclass(slots=True)
class Record:
    """The structural part of one received span record (its payload stays in the database)."""

    landing_id: int
    span_id: bytes
    parent_span_id: bytes | None
    status: int  # RUNNING, OK or ERROR as received
    start_ns: int
    end_ns: int | None
    heartbeat_ns: int | None
    name: str = ""
    resource_id: int | None = None


class Finished(NamedTuple):  # a tuple: one is made per finished task, on the fold's hot path
    """A task that reached a final status in this fold (for the finished-task metrics)."""

    resource_id: int | None
    name: str
    status: int
    duration_ns: int
    root: bool = False  # a root task's end is its run's end (the run metrics)


@dataclass(slots=True, eq=False)
class Node:
    """One task as far as the tree is concerned.  ``counts`` is (ok, error, running, stalled)."""

    span_id: bytes
    parent_span_id: bytes | None
    missing: bool
    status: int
    rank: Rank
    heartbeat_ns: int | None = None
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    child_count: int = 0
    is_new: bool = False  # not yet in the database
    landing_id: int | None = None  # the record whose payload must be written
    dirty: bool = False  # structure, status or counts changed
    height: int = 0  # levels below this node (0: no children); an upper bound after a cut or move
    refused_parent: bytes | None = None  # the declared parent, when the link was refused
    refused_reason: int | None = None  # REFUSED_CYCLE or REFUSED_DEPTH


@dataclass(slots=True)
class RunDelta:
    """What a batch changes in a run's summary."""

    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    tasks: int = 0
    min_start_ns: int | None = None
    any_landing_id: int | None = None


def record_rank(status: int, end_ns: int | None, heartbeat_ns: int | None) -> Rank:
    """The lattice rank of a record or stored node: higher wins."""
    if status in (st.OK, st.ERROR):
        return (2, end_ns or 0, status)
    if status in (st.RUNNING, st.STALLED):
        return (1, heartbeat_ns or 0, 0)
    return (0, 0, 0)  # a placeholder: anything beats it


def live_status(heartbeat_ns: int | None, stall_cutoff_ns: int) -> int:
    """A running task is stalled when its last heartbeat is older than the cutoff."""
    return st.RUNNING if (heartbeat_ns or 0) >= stall_cutoff_ns else st.STALLED


class RunFold:
    """Applies records of one run to the loaded part of its tree.  Not thread-safe: one a batch."""

    def __init__(
        self, loaded: dict[bytes, Node], stall_cutoff_ns: int, max_depth: int = DEFAULT_MAX_DEPTH
    ):
        self.nodes = loaded
        self.stall_cutoff_ns = stall_cutoff_ns
        self.max_depth = max_depth
        self.delta = RunDelta()
        self.finished: list[Finished] = []
        self.run_day = 0  # the run's partition (set by the store; the tree rules ignore it)
        self.broken_links: list[tuple[bytes, bytes, int]] = []  # (span, declared parent, reason)
        self.dropped: dict[bytes, Node] = {}  # stored placeholders left empty: their rows go
        # Each loaded node's parent and status as loaded: after the fold the store finds in them
        # the subtrees that moved and the tasks whose path it must write (store/subtree_paths.py).
        self.loaded_state = {s: (n.parent_span_id, n.status) for s, n in loaded.items()}

    def apply(self, record: Record) -> None:
        """Fold one record in.  Idempotent: applying the same record again changes nothing."""
        self._note_start(record.start_ns, record.landing_id)
        node = self.nodes.get(record.span_id)
        rank = record_rank(record.status, record.end_ns, record.heartbeat_ns)
        if node is not None and not node.missing:
            # The parent breaks rank ties, so that one record wins in any arrival order.
            if (rank, record.parent_span_id or b"") > (node.rank, _declared_parent(node) or b""):
                self._replace_state(node, record, rank)
            return
        self._fill_placeholder(node or self._new_placeholder(record.span_id), record, rank)

    def add_stored_leaves(
        self,
        parent_id: bytes | None,
        counts: tuple[int, int, int, int],
        min_start_ns: int,
        landing_id: int,
    ) -> bool:
        """Count new leaf tasks whose rows the store wrote under ``parent_id`` (a loaded node, or
        none yet: a placeholder is made; ``None``: roots): ``counts`` by status (ok, error,
        running, stalled).  Returns False, and counts nothing, when they would pass the depth
        limit (see ``add_refused_leaf``)."""
        self._note_start(min_start_ns, landing_id)
        d = self.delta
        if parent_id is not None:
            parent = self.nodes.get(parent_id) or self._new_placeholder(parent_id)
            chain = list(self._chain(parent))
            if len(chain) + 1 > self.max_depth:
                return False
            parent.child_count += sum(counts)
            _add_below(chain, counts, 0)
        d.tasks += sum(counts)
        for i in range(4):
            d.counts[i] += counts[i]
        return True

    def add_refused_leaf(
        self, span_id: bytes, parent_id: bytes, status: int, heartbeat_ns: int | None
    ) -> None:
        """A stored leaf under ``parent_id`` that ``add_stored_leaves`` could not count: kept at
        the top of its run, its link refused for depth (its row is rewritten)."""
        node = self.nodes.get(span_id)
        if node is None:
            rank = record_rank(status, None, heartbeat_ns)
            node = self.nodes[span_id] = Node(span_id, None, False, status, rank, heartbeat_ns)
        node.parent_span_id = None
        self._refuse(node, parent_id, REFUSED_DEPTH)
        self.delta.tasks += 1
        self.delta.counts[_COUNT_INDEX[status]] += 1

    def mark_stalled(self, span_id: bytes) -> bool:
        """Mark a running task stalled if its heartbeat is before the cutoff (compare-and-set)."""
        node = self.nodes.get(span_id)
        if node is None or node.status != st.RUNNING:
            return False
        if live_status(node.heartbeat_ns, self.stall_cutoff_ns) != st.STALLED:
            return False
        self._set_own_status(node, st.STALLED)
        return True

    def changed_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.dirty]

    # -- internals -------------------------------------------------------------------------

    def _note_start(self, start_ns: int, landing_id: int) -> None:
        d = self.delta
        if d.min_start_ns is None or start_ns < d.min_start_ns:
            d.min_start_ns = start_ns
        if d.any_landing_id is None:
            d.any_landing_id = landing_id

    def _status_of(self, record: Record) -> int:
        if record.status == st.RUNNING:
            return live_status(record.heartbeat_ns, self.stall_cutoff_ns)
        return record.status

    def _note_finished(self, was_final: bool, record: Record) -> None:
        if not was_final and record.status in (st.OK, st.ERROR):
            duration = max(0, (record.end_ns or record.start_ns) - record.start_ns)
            self.finished.append(
                Finished(
                    record.resource_id,
                    record.name,
                    record.status,
                    duration,
                    record.parent_span_id is None,
                )
            )

    def _replace_state(self, node: Node, record: Record, rank: Rank) -> None:
        self._note_finished(node.status in (st.OK, st.ERROR), record)
        node.rank = rank
        node.landing_id = record.landing_id
        node.heartbeat_ns = (
            record.heartbeat_ns if record.status == st.RUNNING else node.heartbeat_ns
        )
        node.dirty = True
        self._set_own_status(node, self._status_of(record))
        if record.parent_span_id != _declared_parent(node):
            self._move(node, record.parent_span_id)

    def _move(self, node: Node, parent_id: bytes | None) -> None:
        """Hang ``node`` and its subtree under ``parent_id`` instead, as if the record naming it
        had come first: a refused link of its own is decided again against the new parent."""
        old_top = None
        if node.parent_span_id is not None:
            *_, old_top = self._chain(self.nodes[node.parent_span_id])
            self._detach(node)
        node.refused_parent = node.refused_reason = None
        node.dirty = True
        self._attach(node, parent_id)
        if old_top is not None:
            self._retry_cut(old_top)

    def _retry_cut(self, top: Node) -> None:
        """A task left the tree of ``top``.  If ``top``'s link was refused for a loop, the loop may
        have gone through the moved link (or been cut elsewhere by the move): the link is tried
        again, as the winning records alone would have it (a loop still there is cut again, at
        its smallest id: ``top`` when the loop is unchanged)."""
        if top.refused_reason != REFUSED_CYCLE or top.refused_parent not in self.nodes:
            return  # (the store loads a cut link's chain: see _LOAD in store/fold.py)
        declared = top.refused_parent
        top.refused_parent = top.refused_reason = None
        top.dirty = True
        self._attach(top, declared)

    def _fill_placeholder(self, node: Node, record: Record, rank: Rank) -> None:
        """A new task, or the arrival of a parent that so far was only a placeholder."""
        self._note_finished(False, record)
        node.missing = False
        node.rank = rank
        node.landing_id = record.landing_id
        node.heartbeat_ns = record.heartbeat_ns
        node.status = self._status_of(record)
        node.dirty = True
        self.delta.tasks += 1
        self.delta.counts[_COUNT_INDEX[node.status]] += 1
        self._attach(node, record.parent_span_id)

    def _set_own_status(self, node: Node, new: int) -> None:
        old = node.status
        if old == new:
            return
        node.status = new
        node.dirty = True
        i_old, i_new = _COUNT_INDEX[old], _COUNT_INDEX[new]
        self.delta.counts[i_old] -= 1
        self.delta.counts[i_new] += 1
        for ancestor in self._ancestors(node):
            ancestor.counts[i_old] -= 1
            ancestor.counts[i_new] += 1
            ancestor.dirty = True

    def _attach(self, node: Node, parent_id: bytes | None) -> None:
        """Hang ``node`` (a root, with its whole subtree) under its declared parent, creating a
        placeholder if needed, unless the link would close a loop or pass the depth limit."""
        if parent_id is None:
            return
        parent = self.nodes.get(parent_id)
        chain = [] if parent is None else list(self._chain(parent))
        if node in chain:  # by identity: nodes do not compare by value (eq=False)
            self._break_cycle(node, parent_id, chain)
            return
        # The parent's level is len(chain) (a new placeholder: 1, at the top of the run).
        if max(len(chain), 1) + 1 + node.height > self.max_depth:
            self._refuse(node, parent_id, REFUSED_DEPTH)
            return
        if parent is None:
            parent = self._new_placeholder(parent_id)
            chain = [parent]
        node.parent_span_id = parent_id
        parent.child_count += 1
        ok, error, running, stalled = node.counts
        own = _COUNT_INDEX[node.status]
        subtree = (ok + (own == 0), error + (own == 1), running + (own == 2), stalled + (own == 3))
        _add_below(chain, subtree, node.height)

    def _new_placeholder(self, span_id: bytes) -> Node:
        """A node for a parent named by a child but not received (or stored) yet."""
        node = self.dropped.pop(span_id, None)  # its row is still there: updated, not inserted
        if node is None:
            node = Node(span_id, None, True, st.NONE, (0, 0, 0), is_new=True)
        node.dirty = True
        self.nodes[span_id] = node
        return node

    def _break_cycle(self, node: Node, parent_id: bytes, chain: list[Node]) -> None:
        """``chain`` (the parent up to ``node``) plus the new link is a loop: refuse the link of
        the loop's task with the smallest span id, the same one in any arrival order."""
        loop = chain[: next(i for i, a in enumerate(chain) if a is node) + 1]
        victim = min(loop, key=lambda a: a.span_id)
        if victim is node:
            self._refuse(node, parent_id, REFUSED_CYCLE)
            return
        declared = victim.parent_span_id
        assert declared is not None  # every task of a loop has a parent
        self._detach(victim)
        self._refuse(victim, declared, REFUSED_CYCLE)
        self._attach(node, parent_id)

    def _detach(self, node: Node) -> None:
        """Take ``node`` and its subtree from under its parent (the parent's chain is loaded: it
        is part of a loop, or ``node``'s own chain).  Heights above stay as they were: an upper
        bound."""
        assert node.parent_span_id is not None  # only tasks with a parent are detached
        parent = self.nodes[node.parent_span_id]
        parent.child_count -= 1
        subtree = list(node.counts)
        subtree[_COUNT_INDEX[node.status]] += 1
        for ancestor in self._chain(parent):
            counts = ancestor.counts
            for i in range(4):
                counts[i] -= subtree[i]
            ancestor.dirty = True
        node.parent_span_id = None
        if parent.missing and parent.child_count == 0:
            self._drop_placeholder(parent)

    def _drop_placeholder(self, node: Node) -> None:
        """A placeholder without children goes: kept, an empty "missing" task would show at the
        top of the run in the arrival orders that made it, and in no other."""
        del self.nodes[node.span_id]
        if not node.is_new:
            self.dropped[node.span_id] = node

    def _refuse(self, node: Node, parent_id: bytes, reason: int) -> None:
        """Keep ``node`` at the top of its run, its declared parent shown as refused."""
        node.refused_parent = parent_id
        node.refused_reason = reason
        node.dirty = True
        self.broken_links.append((node.span_id, parent_id, reason))

    def _ancestors(self, node: Node) -> Iterator[Node]:
        if node.parent_span_id is None:
            return
        parent = self.nodes.get(node.parent_span_id)
        if parent is not None:
            yield from self._chain(parent)

    def _chain(self, start: Node) -> Iterator[Node]:
        """``start`` and every ancestor above it that is loaded."""
        node: Node | None = start
        seen = 0
        while node is not None:
            yield node
            seen += 1
            if node.parent_span_id is None or seen > len(self.nodes):
                return
            node = self.nodes.get(node.parent_span_id)


def _declared_parent(node: Node) -> bytes | None:
    """The parent a node's record names, whether its link was taken or refused."""
    return node.refused_parent if node.refused_reason is not None else node.parent_span_id


def _add_below(chain: list[Node], subtree: tuple[int, int, int, int], height: int) -> None:
    """A subtree ``height`` levels high, with ``subtree`` tasks by status, now hangs below the
    first node of ``chain`` (a parent and its ancestors): add it to each.  Unrolled: this runs
    once per record and level."""
    for level, ancestor in enumerate(chain, start=1):
        counts = ancestor.counts
        counts[0] += subtree[0]
        counts[1] += subtree[1]
        counts[2] += subtree[2]
        counts[3] += subtree[3]
        if height + level > ancestor.height:
            ancestor.height = height + level
        ancestor.dirty = True
