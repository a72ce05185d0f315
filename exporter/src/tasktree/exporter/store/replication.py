"""What tasktree knows of PostgreSQL replication (issue 17).

* ``check_synchronous_standby``: at start, whether the primary has a synchronous standby, so that
  a commit (and so a 200) means the spans are on two machines; refused or warned about.
* ``ReadRoute``: where reads go: the read pool of hot standbys (``--read-database-url``) while
  one answers, else the primary.  Ingest, folding and the docker audit log never use it.
* ``ReadRoute.lag()``: how far behind the primary what the standby shows is, for ``/metrics`` and
  the notice on the web pages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
import psycopg_pool

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.store.pool import (
    connection,
    names_several_hosts,
    session_synchronous_commit,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

LAG_NOTICE_S = 5.0
"""The web pages say they are behind when the standby they read is behind more than this."""
_LAG_TTL_S = 1.0  # one lag query a second at most, however many pages and scrapes ask
_STANDBY_RETRY_S = 5.0  # after a standby failed to answer, reads go to the primary this long

# pg_stat_replication shows sync_state to superusers and pg_monitor / pg_read_all_stats only:
# for anyone else it is NULL, and so counts as no synchronous standby.
_SYNC_STATE = """
SELECT current_setting('synchronous_standby_names'),
       current_setting('synchronous_commit'),
       (SELECT count(*) FROM pg_stat_replication
        WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))
"""
# A commit waits for the standby to have the WAL (on disk: on, remote_apply; in memory:
# remote_write) only with these.
_WAITING_COMMITS = ("on", "remote_apply", "remote_write")

# Seconds the standby's data is behind: 0 when it has replayed all it received; else the age
# of the last transaction it replayed (its commit time on the primary).
_LAG = """
SELECT CASE WHEN NOT pg_is_in_recovery()
              OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))
       END::float8
"""


@dataclass(frozen=True)
class SyncState:
    standby_names: str
    synchronous_commit: str
    synchronous_standbys: int

    @property
    def protected(self) -> bool:
        """Whether a commit returns only once a synchronous standby has its WAL."""
        return (
            self.standby_names.strip() != ""
            and self.synchronous_commit in _WAITING_COMMITS
            and self.synchronous_standbys > 0
        )


def sync_state(conn: psycopg.Connection) -> SyncState:
    row = conn.execute(_SYNC_STATE).fetchone()
    assert row is not None  # one row, always
    return SyncState(row[0], session_synchronous_commit(row[1]), int(row[2]))


def check_synchronous_standby(url: str, *, required: bool, embedded: bool = False) -> None:
    """Refuse to start (``SystemExit``) when ``required`` and the primary at ``url`` has no
    synchronous standby streaming; otherwise say so in the log (a warning, but for the embedded
    PostgreSQL, which never has one)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            state = sync_state(conn)
            where = f"{conn.info.host}:{conn.info.port}"
    except psycopg.Error as exc:
        if required:
            raise SystemExit(
                f"tasktree: TASKTREE_REQUIRE_SYNC_STANDBY is set, but the primary's synchronous"
                f" standbys could not be read: {exc}"
            ) from exc
        logger.warning("could not read whether the primary has a synchronous standby: %s", exc)
        return
    if state.protected:
        logger.info("the primary %s has synchronous standbys: %s", where, state.standby_names)
        return
    problem = (
        f"the primary PostgreSQL {where} has no synchronous standby "
        f"(synchronous_standby_names={state.standby_names!r}, "
        f"synchronous_commit={state.synchronous_commit!r}, "
        f"{state.synchronous_standbys} synchronous standbys streaming), so a 200 means the spans"
        " are on that one machine only"
    )
    fix = (
        "on the primary set synchronous_standby_names = 'FIRST 1 (<standby application_name>)'"
        " and synchronous_commit = on, and check that pg_stat_replication shows the standby with"
        " sync_state 'sync' (tasktree's role needs pg_monitor to see it); see README, 'Failover"
        " and read replicas'"
    )
    if required:
        raise SystemExit(f"tasktree: TASKTREE_REQUIRE_SYNC_STANDBY is set and {problem}: {fix}")
    # A warning where the setup looks meant to survive losing the primary (several hosts in the
    # URL, or standbys named on the primary); a plain single server, the common case, only hears
    # it once at the info level, not as a warning at every start.
    meant_for_failover = names_several_hosts(url) or state.standby_names.strip() != ""
    level = logging.WARNING if meant_for_failover and not embedded else logging.INFO
    logger.log(level, "%s; for no loss on failover %s", problem, fix)


class ReadRoute:
    """Runs reads on the standby pool while it answers, else on the primary pool.  Thread-safe.
    A read the standby cancels ("conflict with recovery": replay needed what it held) fails as
    ``StoreUnavailable`` too, and is read again from the primary.

    ``run(work)`` may call ``work`` twice (a standby that failed mid-read, then the primary):
    reads only.
    """

    def __init__(
        self, primary: psycopg_pool.ConnectionPool, standby: psycopg_pool.ConnectionPool | None
    ):
        self.primary = primary
        self.standby = standby
        self._skip_standby_until = 0.0
        self._lag: tuple[float, float | None] | None = None  # (measured at, seconds)
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection], T], timeout: float | None = None) -> T:
        """``work(conn)`` on a standby, or on the primary when none answers (StoreUnavailable
        when neither does); ``timeout`` bounds the wait for the primary's connection."""
        if self.standby is not None and time.monotonic() >= self._skip_standby_until:
            try:
                with connection(self.standby) as conn:
                    return work(conn)
            except StoreUnavailable as exc:
                self._skip_standby_until = time.monotonic() + _STANDBY_RETRY_S
                logger.warning("reads: no standby answers (%s); reading from the primary", exc)
        with connection(self.primary, timeout) as conn:
            return work(conn)

    def lag(self) -> float | None:
        """Seconds what reads show is behind the primary: None without a standby, or while no
        standby answers (reads then come from the primary).  Measured once a second at most."""
        if self.standby is None:
            return None
        with self._lock:
            if self._lag is not None and time.monotonic() - self._lag[0] < _LAG_TTL_S:
                return self._lag[1]
            self._lag = (time.monotonic(), self._measure_lag(self.standby))
            return self._lag[1]

    def _measure_lag(self, standby: psycopg_pool.ConnectionPool) -> float | None:
        if time.monotonic() < self._skip_standby_until:
            return None
        try:
            with connection(standby) as conn:
                row = conn.execute(_LAG).fetchone()
        except (StoreUnavailable, psycopg.Error) as exc:
            logger.debug("replica lag not measured: %s", exc)
            return None
        return None if row is None else float(row[0])

    def lag_notice(self) -> float | None:
        """The lag when the pages should say they are behind (over ``LAG_NOTICE_S``), else
        None.  Never raises."""
        lag = self.lag()
        return lag if lag is not None and lag > LAG_NOTICE_S else None
