"""Task status codes and their names, as stored in PostgreSQL and shown in the API."""

from __future__ import annotations

NONE = 0  # a missing-parent placeholder has no status of its own
RUNNING = 1
STALLED = 2
OK = 3
ERROR = 4

NAMES = {NONE: "missing", RUNNING: "running", STALLED: "stalled", OK: "ok", ERROR: "error"}
CODES = {name: code for code, name in NAMES.items() if code != NONE}

# The rollup columns, in the order counts are kept in memory: (ok, error, running, stalled).
COUNTED = (OK, ERROR, RUNNING, STALLED)
COUNT_INDEX = {code: i for i, code in enumerate(COUNTED)}

# "Worst" first, for a run with several roots: a failure beats a stall beats work in progress.
SEVERITY = {ERROR: 4, STALLED: 3, RUNNING: 2, OK: 1, NONE: 0}


def name(code: int) -> str:
    return NAMES[code]
