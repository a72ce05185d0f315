"""A bounded, self-healing connection pool (psycopg_pool); driver errors translated in one place.

Connections are checked on borrow, replaced after ``max_lifetime`` (before a server or proxy would
cut them), and re-opened after PostgreSQL restarts (on demand, within seconds).  Waiting longer than
``timeout`` for a connection raises ``StoreUnavailable`` (HTTP 503 with Retry-After), never hangs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg_pool

from tasktree.exporter.errors import StoreUnavailable

logger = logging.getLogger(__name__)


# psycopg_pool waits ever longer between reconnection attempts (1, 2, 4 … s, no ceiling): with an
# unbounded window, after an outage of T seconds the next attempt could come up to T seconds after
# PostgreSQL is back (a 40 s outage was followed by 21 s more of 503s).  A short window instead:
# an attempt gives up after it, and the next borrow (a request, or the folder, which retries
# every few seconds) grows the pool again with a fresh attempt that connects at once.
_RECONNECT_WINDOW_S = 5.0


def _configure(conn: psycopg.Connection) -> None:
    # Statement timeout keeps one pathological query from holding a connection for ever.
    conn.execute("SET statement_timeout = '60s'")
    # Every query here touches few rows through indexes; JIT compilation (hundreds of ms, set
    # off by large row estimates on temporary tables) only ever costs time.
    conn.execute("SET jit = off")


def open_pool(
    conninfo: str,
    *,
    max_size: int = 10,
    max_lifetime: float = 1800.0,
    timeout: float = 5.0,
    name: str = "tasktree",
) -> psycopg_pool.ConnectionPool:
    """Open a pool without waiting for the database: start-up succeeds even while it is down."""
    pool = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=min(2, max_size),
        max_size=max_size,
        max_lifetime=max_lifetime,
        max_idle=min(300.0, max_lifetime),
        timeout=timeout,
        reconnect_timeout=_RECONNECT_WINDOW_S,  # requests get 503 meanwhile; see above
        check=psycopg_pool.ConnectionPool.check_connection,
        configure=_configure,
        kwargs={"autocommit": True},  # every write says where its transaction starts and ends
        name=name,
        open=False,
    )
    pool.open(wait=False)
    return pool


def scalar(
    conn: psycopg.Connection[Any],
    query: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> Any:
    """The first value of the one row ``query`` always returns (an aggregate, a lock function,
    ``INSERT … RETURNING``)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row from: {query}")
    return row[0]


@contextlib.contextmanager
def connection(pool: psycopg_pool.ConnectionPool) -> Iterator[psycopg.Connection]:
    """Borrow a connection; translate "database unreachable" into ``StoreUnavailable``."""
    try:
        with pool.connection() as conn:
            yield conn
    except psycopg_pool.PoolTimeout as exc:
        raise StoreUnavailable(f"no database connection available: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"database unavailable: {exc}".strip()) from exc
