"""The connection pool: bounded, recycled, checked on borrow (what killed the old system)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tasktree.exporter.errors import StoreUnavailable
from tasktree.exporter.store.pool import connection, open_pool


def _pid(pool) -> int:
    with connection(pool) as conn:
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_a_full_pool_answers_store_unavailable_after_its_timeout_instead_of_growing(database_url):
    pool = open_pool(database_url, max_size=2, timeout=0.5)
    pool.wait(10)
    held, release = [], threading.Event()

    def hold():
        with connection(pool) as conn:
            held.append(conn)
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    while len(held) < 2:
        time.sleep(0.01)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            _pid(pool)
        assert caught.value.status == 503 and caught.value.retry_after
    finally:
        release.set()
        for t in holders:
            t.join()
        pool.close()


def test_connections_are_replaced_after_their_max_lifetime(database_url):
    pool = open_pool(database_url, max_size=1, max_lifetime=1.0)
    try:
        first = _pid(pool)
        deadline = time.monotonic() + 20
        while _pid(pool) == first:
            assert time.monotonic() < deadline, "the connection was never recycled"
            time.sleep(0.2)
    finally:
        pool.close()


def test_a_connection_killed_by_the_server_is_never_handed_out(database_url):
    pool = open_pool(database_url, max_size=1)
    try:
        victim = _pid(pool)
        with psycopg.connect(database_url, autocommit=True) as admin:
            # Waits until the backend is gone (its goodbye is on the socket): one killed while
            # it is lent fails its statement instead (a 503 for a request, a retry for a fold).
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (victim,))
        assert _pid(pool) != victim  # checked on borrow, replaced, no error for the caller
    finally:
        pool.close()


def test_a_database_set_to_commit_asynchronously_still_gets_durable_commits_from_tasktree(
    private_db, caplog
):
    """synchronous_commit = off (a common throughput setting) acknowledges before the WAL is on
    disk: a PostgreSQL crash then lost spans tasktree had answered 200 for."""
    name = psycopg.conninfo.conninfo_to_dict(private_db)["dbname"]
    with psycopg.connect(private_db, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with psycopg.connect(private_db) as plain:  # what the database gives any other session
        assert plain.execute("SHOW synchronous_commit").fetchone() == ("off",)
    pool = open_pool(private_db, max_size=1)
    try:
        with caplog.at_level("WARNING", logger="tasktree.exporter.store.pool"):
            with connection(pool) as conn:
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert "synchronous_commit = off" in caplog.text
    finally:
        pool.close()
