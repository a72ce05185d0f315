"""Task status codes and their names, as stored in PostgreSQL and shown in the API.

``Status`` is the one home of the codes: SQL that needs one is written from it (``store/fold.py``
formats the codes into its statements' text once, at import time, so that the planner still sees
constants and matches the partial index ``tasks_live_heartbeat``).  The module-level names are the
same members, for the code that reads ``st.OK``.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    NONE = 0  # a missing-parent placeholder has no status of its own
    RUNNING = 1
    STALLED = 2
    OK = 3
    ERROR = 4


NONE = Status.NONE
RUNNING = Status.RUNNING
STALLED = Status.STALLED
OK = Status.OK
ERROR = Status.ERROR

NAMES: dict[int, str] = {
    NONE: "missing",
    RUNNING: "running",
    STALLED: "stalled",
    OK: "ok",
    ERROR: "error",
}
CODES = {label: Status(code) for code, label in NAMES.items() if code != NONE}

# The rollup columns, in the order counts are kept in memory: (ok, error, running, stalled).
COUNTED = (OK, ERROR, RUNNING, STALLED)
COUNT_INDEX: dict[int, int] = {code: i for i, code in enumerate(COUNTED)}

# A task that has not finished: running, or stalled (running with an old heartbeat).
LIVE = (RUNNING, STALLED)
FINAL = (OK, ERROR)
# The statuses a subtree's tasks are listed by (queries.subtree_tasks), from the index over the
# paths of the tasks in these statuses only (migration 0012, store/subtree_paths.py).
FLAGGED = (RUNNING, STALLED, ERROR)

# "Worst" first, for a run with several roots: a failure beats a stall beats work in progress.
WORST_FIRST = (ERROR, STALLED, RUNNING, OK)


def name(code: int) -> str:
    return NAMES[code]


def sql_list(codes: tuple[Status, ...]) -> str:
    """``codes`` as the text of an SQL list, e.g. ``(1, 2)``: constants the planner can see."""
    return "(" + ", ".join(str(int(code)) for code in codes) + ")"
