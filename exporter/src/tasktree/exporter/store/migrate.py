"""Versioned schema migrations: ``migrations/NNNN_name.sql`` applied in order at start-up.

Safe to run twice and from several processes at once: a session advisory lock serialises the
runners and ``schema_migrations`` records what is applied, each file in its own transaction.
"""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

from tasktree.exporter.store import locks

logger = logging.getLogger(__name__)

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
"""
_APPLIED_VERSIONS = "SELECT version FROM schema_migrations"
_RECORD_VERSION = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"
CREATED = "SELECT extract(epoch FROM min(applied_at))::float8 FROM schema_migrations"
"""When the database was created (its first migration applied), Unix time."""


def available() -> list[tuple[int, str, str]]:
    """All migration files as (version, name, sql), sorted by version."""
    folder = resources.files("tasktree.exporter.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class NewerSchema(RuntimeError):
    """The database was migrated by a newer tasktree than this one."""


def migrate(conninfo: str, target: int | None = None) -> list[int]:
    """Apply every pending migration (up to ``target``); return the versions this call applied.

    Raises ``NewerSchema`` when the database holds a version this tasktree does not know: a
    newer tasktree upgraded it, and an older one would read and write it wrongly (its search
    index, for one, would no longer match its queries).
    """
    applied_now = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A session lock: each migration commits on its own, and the lock spans them all.
        conn.execute(locks.TAKE_SESSION, locks.MIGRATIONS)
        try:
            conn.execute(_CREATE_MIGRATIONS_TABLE)
            done = {row[0] for row in conn.execute(_APPLIED_VERSIONS)}
            known = available()
            _refuse_newer(done, max(version for version, _, _ in known))
            for version, name, sql in known:
                if version in done or (target is not None and version > target):
                    continue
                logger.info("applying migration %s", name)  # a large store's can take a while
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(_RECORD_VERSION, (version, name))
                logger.info("applied migration %s", name)
                applied_now.append(version)
        finally:
            conn.execute(locks.RELEASE_SESSION, locks.MIGRATIONS)
    return applied_now


def _refuse_newer(done: set[int], newest_known: int) -> None:
    if done and max(done) > newest_known:
        raise NewerSchema(
            f"the database holds tasktree schema version {max(done)}, newer than this"
            f" tasktree's {newest_known}: a newer tasktree upgraded it; run that version (or a"
            " later one) on it, since a schema is never downgraded"
        )
