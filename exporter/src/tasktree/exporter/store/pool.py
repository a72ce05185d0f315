"""A bounded, self-healing connection pool (psycopg_pool); driver errors translated in one place.

Connections are checked on borrow, replaced after ``max_lifetime`` (before a server or proxy would
cut them), and re-opened after PostgreSQL restarts (on demand, within seconds).  Waiting longer than
``timeout`` for a connection raises ``StoreUnavailable`` (HTTP 503 with Retry-After), never hangs.

Failover (issue 17): a URL may name several servers (libpq multi-host,
``postgresql://a:5432,b:5432/tasktree?target_session_attrs=read-write``).  The writing pool only
keeps connections to a server that accepts writes: a dead primary's connections fail their check,
new ones go to whichever server is primary now, and a connection that finds itself on a
read-only server (a demoted primary, a URL without ``target_session_attrs``) is dropped and its
write answered 503, never acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import select
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg.types.json import set_json_loads

from tasktree.exporter.errors import StoreUnavailable

logger = logging.getLogger(__name__)


# psycopg_pool waits ever longer between reconnection attempts (1, 2, 4 … s, no ceiling): with an
# unbounded window, after an outage of T seconds the next attempt could come up to T seconds after
# PostgreSQL is back (a 40 s outage was followed by 21 s more of 503s).  A short window instead:
# an attempt gives up after it, and the next borrow (a request, or the folder, which retries
# every few seconds) grows the pool again with a fresh attempt that connects at once.
_RECONNECT_WINDOW_S = 5.0


# Added to a URL that does not say otherwise: libpq waits for ever by default, and a primary whose
# machine died answers nothing (no reset), so without these a failover would hang on it.
_FAILOVER_DEFAULTS = {
    "connect_timeout": "5",  # seconds per server tried
    "keepalives_idle": "10",  # idle connections: probe after 10 s, give up 3 × 5 s later
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",  # ms: a write the dead server never acknowledges fails
}


def primary_conninfo(url: str) -> str:
    """``url`` for the writing pool: with several hosts and no ``target_session_attrs``, only a
    server that accepts writes is chosen (``read-write``); timeouts that end waits on a dead
    server are added where the URL sets none."""
    return _with_failover_defaults(url, "read-write")


def standby_conninfo(url: str) -> str:
    """``url`` for the reading pool: the same, but with several hosts a standby when one
    answers, else the primary (``prefer-standby``)."""
    return _with_failover_defaults(url, "prefer-standby")


def names_several_hosts(url: str) -> bool:
    """Whether ``url`` is a libpq multi-host URL (a primary and its standbys)."""
    return _several_hosts(psycopg.conninfo.conninfo_to_dict(url))


def _several_hosts(params: Mapping[str, Any]) -> bool:
    return "," in str(params.get("host") or params.get("hostaddr") or "")


def _with_failover_defaults(url: str, target_session_attrs: str) -> str:
    params: dict[str, Any] = dict(psycopg.conninfo.conninfo_to_dict(url))
    if _several_hosts(params):
        params.setdefault("target_session_attrs", target_session_attrs)
    if str(params.get("host", "")).startswith("/"):  # a Unix socket: no TCP settings
        params.setdefault("connect_timeout", _FAILOVER_DEFAULTS["connect_timeout"])
    else:
        for key, value in _FAILOVER_DEFAULTS.items():
            params.setdefault(key, value)
    return psycopg.conninfo.make_conninfo("", **params)


# A connection given back to the pool less than this long ago, with nothing from the server
# waiting on its socket, is lent without the liveness round trip: the folder and ingest borrow
# several a second, and each round trip cost about 0.27 ms of the server's CPU (issue 16: a
# trickle of small requests paid it half a dozen times per fold).  A server that ends a session
# (a restart, pg_terminate_backend) says so on the socket first, so those are still caught here;
# one it ends at the very moment of lending fails its first statement instead (a 503 for a
# request, a retry for a fold), as one ended just after a check always could.
_RECENTLY_RETURNED_S = 1.0
_RETURNED_AT: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _note_return(conn: psycopg.Connection) -> None:
    """The pools' ``reset`` callback: when a connection came back, idle."""
    _RETURNED_AT[conn] = time.monotonic()


def _quiet_since_returned(conn: psycopg.Connection) -> bool:
    returned = _RETURNED_AT.get(conn)
    if conn.closed or returned is None or time.monotonic() - returned > _RECENTLY_RETURNED_S:
        return False
    if not hasattr(select, "poll"):  # poll, not select: a busy server's descriptors pass 1024
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)


def _check_alive(conn: psycopg.Connection) -> None:
    """The check on borrow (the reading pool's whole check, the writing pool's first part): a
    round trip, unless the connection is fresh."""
    if not _quiet_since_returned(conn):
        psycopg_pool.ConnectionPool.check_connection(conn)


def _check_writable(conn: psycopg.Connection) -> None:
    """The writing pool's check on borrow: alive, and not on a hot standby.  PostgreSQL 14+
    reports ``in_hot_standby`` with every change (a promotion too), so this costs no round trip
    beyond the liveness check."""
    _check_alive(conn)
    if conn.info.parameter_status("in_hot_standby") == "on":
        raise psycopg.OperationalError(
            f"{conn.info.host}:{conn.info.port} is a read-only standby, not the primary"
        )


# Connections whose last commit PostgreSQL confirmed without its synchronous standby: the wait
# for the standby was cancelled (statement timeout, pg_cancel_backend), so the transaction is
# committed on the primary alone.  Ingest must not answer 200 for it (``connection``).
_UNREPLICATED: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()
_SYNC_WAIT_CANCELLED = "synchronous replication"  # in "canceling wait for synchronous replication"


def _watch_synchronous_commit(conn: psycopg.Connection) -> None:
    def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "WARNING" and _SYNC_WAIT_CANCELLED in (
            diagnostic.message_primary or ""
        ):
            _UNREPLICATED.add(conn)

    conn.add_notice_handler(on_notice)


def _configure(conn: psycopg.Connection) -> None:
    # Statement timeout keeps one pathological query from holding a connection for ever.
    conn.execute("SET statement_timeout = '60s'")
    # Every query here touches few rows through indexes; JIT compilation (hundreds of ms, set
    # off by large row estimates on temporary tables) only ever costs time.
    conn.execute("SET jit = off")
    set_json_loads(_JSON_LOADS, conn)
    _commit_durably(conn)
    _watch_synchronous_commit(conn)


def session_synchronous_commit(configured: str) -> str:
    """The ``synchronous_commit`` tasktree's sessions use where the server, database or role
    says ``configured``: ``off`` acknowledges a commit before its WAL is on disk, and a crash
    then lost spans tasktree had answered 200 for (design.md §3 rule 4), so tasktree's sessions
    use the default ``on`` instead.  Every other choice (local, remote_write, on, remote_apply)
    flushes locally first, and stays."""
    return "on" if configured == "off" else configured


_told_commit_overridden = threading.Event()


def _commit_durably(conn: psycopg.Connection) -> None:
    (configured,) = conn.execute("SHOW synchronous_commit").fetchone() or ("on",)
    wanted = session_synchronous_commit(configured)
    if wanted == configured:
        return
    conn.execute(f"SET synchronous_commit = {wanted}")  # one of a fixed few words
    if not _told_commit_overridden.is_set():
        _told_commit_overridden.set()
        logger.warning(
            "PostgreSQL says synchronous_commit = %s for tasktree's database or role: tasktree's"
            " own sessions use %s, so that a 200 answered to a job still means its spans are on"
            " disk (with 'off' a crash of PostgreSQL loses the last commits)",
            configured,
            wanted,
        )


_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1


def _integer_or_double(text: str) -> int | float:
    """An integer of a stored jsonb document.  OTLP integers fit 64 bits (signed attribute
    values, wider ones being stored as their decimal text; unsigned times, as of events), so a
    wider one was a double, which jsonb's numeric writes out in full: 1e308 came back as an
    integer of 309 digits."""
    number = int(text)
    if _INT64_MIN <= number <= _UINT64_MAX:
        return number
    try:
        return float(number)
    except OverflowError:  # not from a double after all
        return number


_JSON_LOADS = functools.partial(json.loads, parse_int=_integer_or_double)


def open_pool(
    conninfo: str,
    *,
    max_size: int = 10,
    max_lifetime: float = 1800.0,
    timeout: float = 5.0,
    name: str = "tasktree",
    writable: bool = True,
) -> psycopg_pool.ConnectionPool:
    """Open a pool without waiting for the database: start-up succeeds even while it is down.
    ``writable``: lend connections to the primary only (False: the reading pool of standbys)."""
    pool = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=min(2, max_size),
        max_size=max_size,
        max_lifetime=max_lifetime,
        max_idle=min(300.0, max_lifetime),
        timeout=timeout,
        reconnect_timeout=_RECONNECT_WINDOW_S,  # requests get 503 meanwhile; see above
        check=_check_writable if writable else _check_alive,
        configure=_configure,
        reset=_note_return,
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
def connection(
    pool: psycopg_pool.ConnectionPool, timeout: float | None = None
) -> Iterator[psycopg.Connection]:
    """Borrow a connection, waiting at most ``timeout`` (the pool's own when None); translate
    "database unreachable" into ``StoreUnavailable``, and so is a write refused by a server that
    became read-only (its connection is closed, so that the pool replaces it with one to the new
    primary)."""
    try:
        with pool.connection(timeout=timeout) as conn:
            try:
                yield conn
            except psycopg.errors.ReadOnlySqlTransaction:
                conn.close()
                raise
            finally:
                unreplicated = conn in _UNREPLICATED
                _UNREPLICATED.discard(conn)
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise StoreUnavailable(f"the database server is read-only now (failover?): {exc}") from exc
    except psycopg_pool.PoolTimeout as exc:
        raise StoreUnavailable(f"no database connection available: {exc}") from exc
    except psycopg.errors.ProgramLimitExceeded:
        raise  # what was sent exceeds a limit of PostgreSQL's: sending it again cannot help
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"database unavailable: {exc}".strip()) from exc
    if unreplicated:
        raise StoreUnavailable(
            "PostgreSQL committed without its synchronous standby (the wait for it was"
            " cancelled): the data may be on one machine only; send it again"
        )
