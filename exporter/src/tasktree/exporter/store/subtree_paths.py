"""The paths behind a subtree's task lists (migration 0012), kept by the fold.

A task's path is its run's trace id, then the span ids from its top-level task down to itself.
The index ``tasks_flagged_path`` holds the paths of tasks in the statuses of
``tree.status.FLAGGED`` (running, stalled, error), so "the tasks of X's subtree in those
statuses" is one index lookup of X (``queries.subtree_tasks``), whatever the subtree's size.

The invariant: every row in one of those statuses has its right path after each fold; other
rows' paths are not read.  The fold knows each touched task's ancestors (it loads the chains),
so after it has written the tree (``write``, in the fold's transaction, under its lane locks):

* a task that is now in one of those statuses and was not (a new task, a filled placeholder) or
  whose parent changed gets its path from the chain in memory;
* a stored leaf of the batch in one of those statuses gets its parent's path and its own id
  (at the top of its run: as its row is written, ``TOP_LEAF_PATH``);
* a task whose parent changed (mostly: a missing parent's placeholder whose parent arrived) with
  flagged tasks below it (its rollup says so) has their stored paths rewritten from its new
  one, found by the index itself: the cost follows the flagged tasks moved, never the subtree.

Ok tasks, most of them, cost nothing here: a fold of a batch that holds no running, stalled or
failed task and moves no subtree holding one runs none of these statements.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tasktree.exporter.store import partitions
from tasktree.exporter.store._copy import fast_binary_dumpers
from tasktree.exporter.tree.fold import Node, RunFold
from tasktree.exporter.tree.status import COUNT_INDEX, FLAGGED, OK, sql_list

Connection = psycopg.Connection[Any]
Path = list[bytes]

_FLAGGED_SQL = sql_list(FLAGGED)

_TEMP_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS fold_paths (
    trace_id bytea, span_id bytea, run_day integer, path bytea[], moved boolean, own boolean
) ON COMMIT DELETE ROWS
"""
_COPY = "COPY fold_paths FROM STDIN (FORMAT BINARY)"
_TYPES = ["bytea", "bytea", "int4", "bytea[]", "bool", "bool"]

# GIN indexes are read by bitmap scans only, which the fold turns off for its own statements
# (store/fold.py: _PLAN_FOR_BATCHES); on for this one.
_BITMAP_ON = "SET LOCAL enable_bitmapscan = on"
_BITMAP_OFF = "SET LOCAL enable_bitmapscan = off"

# The flagged rows below each moved task take its new path, then their own tail below it.  A row
# below several moved tasks follows the lowest (its tail from there did not change); the status
# list, spelled as the index predicate, lets the planner use the partial index.
_REWRITE_MOVED = f"""
UPDATE {partitions.TASKS_OF_DAY} t
SET path = m.path || t.path[array_position(t.path, m.span_id) + 1:]
FROM fold_paths m
WHERE m.moved AND t.path @> ARRAY[m.span_id] AND t.status IN {_FLAGGED_SQL}
  AND t.trace_id = m.trace_id AND t.run_day = m.run_day
  AND NOT EXISTS (
      SELECT FROM fold_paths n
      WHERE n.moved AND n.trace_id = m.trace_id
        AND array_position(t.path, n.span_id) > array_position(t.path, m.span_id))
"""  # noqa: S608 (a constant)

_WRITE_OWN = f"""
UPDATE {partitions.TASKS_OF_DAY} t SET path = p.path
FROM fold_paths p
WHERE p.own AND t.span_id = p.span_id AND t.trace_id = p.trace_id AND t.run_day = p.run_day
"""  # noqa: S608 (a constant)

# A stored leaf at the top of its run (store/fold.py: the leaves' INSERT, alias f) gets its path
# as it is written: nothing above it can change in this fold.
TOP_LEAF_PATH = (
    f"CASE WHEN f.parent_span_id IS NULL AND f.status IN {_FLAGGED_SQL}"
    " THEN ARRAY[f.trace_id, f.span_id] END"
)

# The other stored leaves (store/fold.py: fold_leaves) in a flagged status: their paths are
# their parents' (from the fold's final tree) and their own id, written as ``own`` rows.  (Joined
# in SQL to a table of parents' paths, the planner, allowed hash joins, read every task row.)
_FLAGGED_LEAVES = f"""
SELECT trace_id, span_id, parent_span_id FROM fold_leaves
WHERE parent_span_id IS NOT NULL AND status IN {_FLAGGED_SQL}
"""  # noqa: S608 (a constant)

Known = dict[bytes, dict[bytes, Path | None]]  # per run: the paths worked out so far

Leaves = dict[tuple[bytes, bytes | None], tuple[tuple[int, int, int, int], int, int]]
"""store/fold.py's stored leaves by (trace id, parent): (counts by status, start, landing id)."""


def write(conn: Connection, folds: dict[bytes, RunFold], leaves: Leaves | None = None) -> None:
    """Keep the flagged rows' paths right after the fold has written ``folds`` and stored
    ``leaves`` (see the module docstring).  Runs inside the fold's transaction."""
    known: Known = {trace_id: {} for trace_id in folds}
    rows = [row for trace_id, fold in folds.items() for row in _rows(trace_id, fold, known)]
    if _any_flagged_leaf(leaves or {}):
        rows += _leaf_rows(conn, folds, known)
    if not rows:
        return
    conn.execute(_TEMP_TABLE)
    with fast_binary_dumpers(conn.cursor()).copy(_COPY) as copy:
        copy.set_types(_TYPES)
        for row in rows:
            copy.write_row(row)
    for day in sorted({row[2] for row in rows}):  # a run's tasks all live in its day's partition
        if any(row[4] for row in rows if row[2] == day):
            conn.execute(_BITMAP_ON)
            conn.execute(partitions.of_day(conn, _REWRITE_MOVED, day))
            conn.execute(_BITMAP_OFF)
        if any(row[5] for row in rows if row[2] == day):
            conn.execute(partitions.of_day(conn, _WRITE_OWN, day))


def _rows(trace_id: bytes, fold: RunFold, known: Known) -> list[tuple[Any, ...]]:
    """(trace, span, day, path, moved, own) of the fold's tasks whose paths must be written:
    ``moved``, the flagged rows below it (its parent changed); ``own``, its own row."""
    rows = []
    for node in fold.nodes.values():
        before = fold.loaded_state.get(node.span_id)
        relinked = before is not None and before[0] != node.parent_span_id
        moved = relinked and _flagged_below(node)
        own = _flagged(node) and (before is None or before[1] not in FLAGGED or relinked)
        if moved or own:
            path = _path(trace_id, fold, node, known[trace_id])
            if path is not None:
                rows.append((trace_id, node.span_id, fold.run_day, path, moved, own))
    return rows


def _any_flagged_leaf(leaves: Leaves) -> bool:
    """Whether a stored leaf under a parent is running, stalled or failed (by the counts)."""
    return any(
        parent is not None and counts[COUNT_INDEX[OK]] < sum(counts)
        for (_, parent), (counts, _, _) in leaves.items()
    )


def _leaf_rows(
    conn: Connection, folds: dict[bytes, RunFold], known: Known
) -> list[tuple[Any, ...]]:
    """``own`` rows of the flagged stored leaves under a parent: the parent's path and their id.
    A leaf the rules kept at the top (a link refused for depth) is a node: ``_rows`` has it."""
    rows = []
    for trace, span, parent_id in conn.execute(_FLAGGED_LEAVES):
        trace_id, span_id, fold = bytes(trace), bytes(span), folds.get(bytes(trace))
        parent = fold.nodes.get(bytes(parent_id)) if fold is not None else None
        if fold is None or parent is None or span_id in fold.nodes:
            continue  # (no fold or no parent: cannot happen, store/fold.py folds leaves' runs)
        path = _path(trace_id, fold, parent, known[trace_id])
        if path is not None:
            rows.append((trace_id, span_id, fold.run_day, [*path, span_id], False, True))
    return rows


def _flagged(node: Node) -> bool:
    return not node.missing and node.status in FLAGGED


def _flagged_below(node: Node) -> bool:
    """Whether the node's rollup counts a running, stalled or failed descendant."""
    return sum(node.counts) > node.counts[COUNT_INDEX[OK]]


def _path(
    trace_id: bytes, fold: RunFold, node: Node, known: dict[bytes, Path | None]
) -> Path | None:
    """The node's path from the chain in memory (None if a link leaves what the fold loaded,
    which the fold's chain loading rules out); ``known`` memoises the ancestors' paths."""
    chain: list[Node] = []
    current: Node | None = node
    prefix: Path | None = [trace_id]
    while current is not None:
        if current.span_id in known:
            prefix = known[current.span_id]
            break
        chain.append(current)
        if len(chain) > len(fold.nodes):
            return None  # a loop: never in a folded tree
        parent = current.parent_span_id
        current = fold.nodes.get(parent) if parent is not None else None
        if parent is not None and current is None:
            prefix = None
    for link in reversed(chain):
        prefix = None if prefix is None else [*prefix, link.span_id]
        known[link.span_id] = prefix
    return prefix
