"""Every PostgreSQL advisory lock tasktree takes, in one place, so that no two jobs share a key.

Keys are PostgreSQL's two-int form ``(class, object)``.  The service-wide locks share the class
``TASKTREE``; the fold lanes have a class of their own, so that lane numbers (0 … LANES-1) can
never meet another lock's number (issue 18: retention's key was lane 7's, so retention kept
every folder off lane 7).

The fold lanes are also the unit of the tree's write lock: a run's tree is changed only under the
lock of its lane (``store/fold.py``), so a fold holds at most ``LANES`` locks however many runs
its batch touches, and PostgreSQL's shared lock table (``max_locks_per_transaction``, shared by
every database of the server) never fills because of tasktree.
"""

from __future__ import annotations

TASKTREE = 0x7461736B  # "task"
LANE_CLASS = 0x746C616E  # "tlan"

MIGRATIONS = (TASKTREE, 1)  # one process migrates at a time (session lock)
METRICS = (TASKTREE, 2)  # one metrics write at a time (the task-name cap)
PARTITIONS = (TASKTREE, 5)  # written out in tasktree_ensure_day_partition (migration 0005)
RETENTION = (TASKTREE, 7)  # one process at a time drops expired partitions (session lock)

LANES = 8
"""Fold lanes: a run's lane is the first byte of its trace id modulo ``LANES``.  The same formula
is in SQL (``store/fold.py``) and in the index ``span_landing_lane`` (migration 0007)."""


# The statements that take and release them (parameters: a key above).
TAKE_XACT = "SELECT pg_advisory_xact_lock(%s, %s)"
TRY_XACT = "SELECT pg_try_advisory_xact_lock(%s, %s)"
TAKE_SESSION = "SELECT pg_advisory_lock(%s, %s)"
TRY_SESSION = "SELECT pg_try_advisory_lock(%s, %s)"
RELEASE_SESSION = "SELECT pg_advisory_unlock(%s, %s)"


def lane_of(trace_id: bytes) -> int:
    """The fold lane of a run."""
    return trace_id[0] % LANES


def lane(number: int) -> tuple[int, int]:
    """The advisory lock key of fold lane ``number``."""
    return (LANE_CLASS, number)


__all__ = [
    "LANES",
    "LANE_CLASS",
    "METRICS",
    "MIGRATIONS",
    "PARTITIONS",
    "RELEASE_SESSION",
    "RETENTION",
    "TAKE_SESSION",
    "TAKE_XACT",
    "TASKTREE",
    "TRY_SESSION",
    "TRY_XACT",
    "lane",
    "lane_of",
]
