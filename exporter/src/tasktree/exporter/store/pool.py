"""A bounded, self-healing connection pool (psycopg_pool) and the one place driver errors are translated.

Connections are checked on borrow, replaced after ``max_lifetime`` (before a server or proxy would
cut them), and re-opened in the background after PostgreSQL restarts.  Waiting longer than
``timeout`` for a connection raises ``StoreUnavailable`` (HTTP 503 with Retry-After), never hangs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg
import psycopg_pool

from tasktree.exporter.errors import StoreUnavailable

logger = logging.getLogger(__name__)


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
        reconnect_timeout=float("inf"),  # keep trying in the background; requests get 503 meanwhile
        check=psycopg_pool.ConnectionPool.check_connection,
        configure=_configure,
        kwargs={"autocommit": True},  # every write says where its transaction starts and ends
        name=name,
        open=False,
    )
    pool.open(wait=False)
    return pool


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
