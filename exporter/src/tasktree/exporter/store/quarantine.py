"""Records set aside because folding them failed (migration 0015), so that one record can never
stop its fold lane for good.

A fold that fails for a reason its records may cause (``is_record_fault``) is retried with half
as many records, down to one (``background.Folder``); a record whose fold fails alone is moved
here by ``set_aside_claimed``, with PostgreSQL's or tasktree's message.  Nothing else is lost:
the other records of its run fold as usual.  ``tasktree quarantine`` lists what is here, and
``--requeue`` lands it again once the cause is fixed (``--discard`` deletes it).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import psycopg

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.store.landing import LANDED_COLUMNS

# The faults of PostgreSQL's that the data written, not the database's state, causes: data
# exceptions (class 22), constraint violations (23: a site's own CHECK or unique index), limits
# of PostgreSQL's (54) and an exception raised by a site's trigger (P0001).  Anything else from
# PostgreSQL (connection lost, shutdown, disk full, lock or statement timeouts) is an outage:
# the folder waits and retries the same records, and sets none aside.
_RECORD_FAULTS = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
    psycopg.errors.RaiseException,
)

_COLUMNS = ", ".join(LANDED_COLUMNS)

_SET_ASIDE_CLAIMED = f"""
WITH moved AS (
    DELETE FROM span_landing l USING fold_claim c WHERE l.ctid = c.landing_row
    RETURNING l.id, {", ".join(f"l.{c}" for c in LANDED_COLUMNS)}
)
INSERT INTO span_quarantine (landing_id, quarantined_ns, error, {_COLUMNS})
SELECT id, %s, %s, {_COLUMNS} FROM moved
"""  # noqa: S608 (constants: the landing's columns)

_REQUEUE = f"""
WITH moved AS (DELETE FROM span_quarantine RETURNING *)
INSERT INTO span_landing ({_COLUMNS})
SELECT {_COLUMNS} FROM moved ORDER BY landing_id
"""  # noqa: S608 (constants: the landing's columns)

_DISCARD = "DELETE FROM span_quarantine"

_BY_ERROR = """
SELECT error, count(*), count(DISTINCT trace_id), min(quarantined_ns), max(quarantined_ns),
       min(encode(trace_id, 'hex'))
FROM span_quarantine GROUP BY error ORDER BY min(quarantined_ns)
"""

COUNTED_AT_MOST = 100_000
"""``count_at_most`` stops counting there: /metrics must stay cheap whatever is set aside."""
_COUNT_AT_MOST = f"""
SELECT count(*) FROM (SELECT 1 FROM span_quarantine LIMIT {COUNTED_AT_MOST}) q
"""  # noqa: S608 (a constant)


class ErrorGroup(NamedTuple):
    """The records set aside with one error message."""

    error: str
    records: int
    runs: int
    first_ns: int
    last_ns: int
    example_trace_id: str  # hex


def is_record_fault(exc: BaseException) -> bool:
    """Whether a failed fold may be the fault of the records it held, so that folding fewer of
    them may succeed: a fault in ``_RECORD_FAULTS``, or an exception of tasktree's own code (a
    bug its rules met on these records; it must not stop the folder thread either)."""
    if isinstance(exc, (psycopg.Error, StoreUnavailable)):
        return isinstance(exc, _RECORD_FAULTS)
    return isinstance(exc, Exception)


def describe(exc: BaseException) -> str:
    """The message kept with a record set aside: what an operator needs to find the cause, the
    same for every record of one cause (so ``tasktree quarantine`` groups them): PostgreSQL's
    primary message, without its DETAIL (which quotes the row)."""
    if isinstance(exc, psycopg.Error):
        text = exc.diag.message_primary or (str(exc).splitlines() or [type(exc).__name__])[0]
    else:
        text = f"{type(exc).__name__}: {exc} (a fault of tasktree's: please report it)"
    return text[:2000]


def set_aside_claimed(conn: psycopg.Connection[Any], exc: BaseException) -> int:
    """Move the records a fold claimed (``fold_claim``) to ``span_quarantine``, in the fold's
    transaction; returns how many."""
    return conn.execute(_SET_ASIDE_CLAIMED, (time.time_ns(), describe(exc))).rowcount


def by_error(conn: psycopg.Connection[Any]) -> list[ErrorGroup]:
    """What is set aside, grouped by error, oldest first."""
    return [ErrorGroup(*row) for row in conn.execute(_BY_ERROR)]


def requeue(conn: psycopg.Connection[Any]) -> int:
    """Land every record set aside again (new ids, in their old order), to be folded anew."""
    with conn.transaction():
        return conn.execute(_REQUEUE).rowcount


def discard(conn: psycopg.Connection[Any]) -> int:
    """Delete every record set aside."""
    with conn.transaction():
        return conn.execute(_DISCARD).rowcount


def count_at_most(conn: psycopg.Connection[Any]) -> int:
    """The records set aside, counted up to ``COUNTED_AT_MOST``."""
    row = conn.execute(_COUNT_AT_MOST).fetchone()
    return int(row[0]) if row else 0
