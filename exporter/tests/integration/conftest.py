"""Fixtures of the integration tests beyond the root conftest.py's database ones: a pool on the
emptied store database, a private PostgreSQL to stop (``faults_support``), the docker lab and apps
on it (``docker_support``), and the UI tests' browser (for the Containers page and the abused
tree's page)."""

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tasktree.exporter.store.pool import open_pool

from ..ui.browser import browser, browser_context, page_errors  # noqa: F401  (fixtures)
from .docker_support import docker_lab_session, docker_pool, emptied_lab, make_app  # noqa: F401
from .faults_support import embedded_pg  # noqa: F401  (fixture: a private PostgreSQL to stop)


@pytest.fixture
def pool(clean_store_db):
    """A small connection pool on the emptied store database, as a server's."""
    pool = open_pool(clean_store_db, max_size=4, timeout=2)
    pool.wait(5)
    yield pool
    pool.close()


@pytest.fixture
def empty_database(database_url):
    """A database no tasktree has migrated (dropped after the test)."""
    admin = make_conninfo(database_url, dbname="postgres")
    name = f"tasktree_test_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(admin, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
