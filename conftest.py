"""Fixtures shared by every test folder: a fresh PostgreSQL database per test session.

The database server is the one on 127.0.0.1:5432 (``TASKTREE_TEST_PG``, trust auth), as on this
machine and in CI.  When it cannot be reached the suite fails under ``CI=true`` and falls back to
the embedded PostgreSQL otherwise.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get("TASKTREE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TABLES = ("span_landing", "tasks", "runs", "resources")


def _admin_url(tmp_path_factory) -> str:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
        return ADMIN_URL
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {ADMIN_URL} is required under CI=true: {exc}")
        from tasktree.exporter.store.embedded import embedded_database_url

        return embedded_database_url(tmp_path_factory.mktemp("embedded-pg")).rsplit("/", 1)[0] + "/postgres"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    """URL of a freshly created and migrated database, dropped at the end of the session."""
    from tasktree.exporter.store.migrate import migrate

    admin = _admin_url(tmp_path_factory)
    name = f"tasktree_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin.rsplit("/", 1)[0] + "/" + name
    migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def clean_db(database_url) -> str:
    """The session database with every tasktree table emptied before the test."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY")
    return database_url
