"""Fixtures shared by every test folder: a fresh PostgreSQL database per test session.

The database server is the one on 127.0.0.1:5432 (``TASKTREE_TEST_PG``, trust auth), as on this
machine and in CI.  When it cannot be reached the suite fails under ``CI=true`` and falls back to
the embedded PostgreSQL otherwise.
"""

from __future__ import annotations

import os
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

ADMIN_URL = os.environ.get("TASKTREE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TABLES = (
    "span_landing", "tasks", "runs", "resources", "jobs", "metric_totals", "refused_over_cap",
    "span_quarantine",
)


def with_database(url: str, name: str) -> str:
    """The same server's URL for database ``name`` (works for host and socket URLs alike)."""
    return make_conninfo(url, dbname=name)


def _admin_url(tmp_path_factory) -> str:
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
        return ADMIN_URL
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {ADMIN_URL} is required under CI=true: {exc}")
        from tasktree.exporter.store.embedded import embedded_database_url

        embedded = embedded_database_url(tmp_path_factory.mktemp("embedded-pg"))
        return with_database(embedded, "postgres")


def _fresh_database(admin: str, purpose: str):
    """Create and migrate a database; yield its URL; drop it afterwards."""
    from tasktree.exporter.store.migrate import migrate

    name = f"tasktree_test_{purpose}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin, name)
    migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        conn.execute(drop)


def _truncate(url: str) -> str:
    """Empty every tasktree table.  A server of the session may be folding or reading at that
    moment and take its locks in another order: PostgreSQL then ends one side with a deadlock
    error, and since that side is us, we simply try again."""
    for attempt in range(5):
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY")
            return url
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.2)
    return url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    """A fresh, migrated database for the session, shared with the ``tasktree serve`` processes
    the tests start (their folders fold whatever lands in it)."""
    yield from _fresh_database(_admin_url(tmp_path_factory), "srv")


@pytest.fixture
def clean_db(database_url) -> str:
    """The session database with every tasktree table emptied before the test."""
    return _truncate(database_url)


@pytest.fixture
def private_db(tmp_path_factory) -> str:
    """A fresh database for one test: for servers whose settings must be the only ones folding."""
    yield from _fresh_database(_admin_url(tmp_path_factory), "own")


@pytest.fixture(scope="session")
def store_database_url(tmp_path_factory) -> str:
    """A database no server ever runs against: tests that fold by hand own every fold in it."""
    yield from _fresh_database(_admin_url(tmp_path_factory), "store")


@pytest.fixture
def clean_store_db(store_database_url) -> str:
    return _truncate(store_database_url)


# -- a real `tasktree serve` -------------------------------------------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402


class TasktreeServer:
    """A ``tasktree serve`` subprocess on free loopback ports, stopped by PID at teardown."""

    def __init__(self, database_url: str, tmp_path, extra_args=(), env=None):
        self.database_url = database_url
        self.log_path = tmp_path / "tasktree-serve.log"
        args = [sys.executable, "-m", "tasktree.exporter", "serve", "--database-url", database_url,
                "--port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", "0", *extra_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, "TASKTREE_DATA_DIR": str(tmp_path / "data"),
                                          **(env or {})})
        urls = self._read_ready_line()
        self.web = urls["ui"].rstrip("/")
        self.otlp_http = urls["otlp_http"].removesuffix("/v1/traces")
        self.otlp_grpc = urls["otlp_grpc"]

    def _read_ready_line(self) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("TASKTREE_READY "):
                return json.loads(line.split(" ", 1)[1])
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tasktree serve did not start:\n{self.log_path.read_text()}")

    def get(self, path: str, expect: int = 200):
        """GET a JSON route; returns the decoded body (asserting the status)."""
        try:
            with urllib.request.urlopen(self.web + path, timeout=30) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        assert status == expect, f"GET {path}: {status} {body[:500]!r}"
        return json.loads(body)

    def wait_folded(self, timeout: float = 30.0) -> None:
        """Block until every received span is in the tree (the landing table is empty)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if not conn.execute("SELECT EXISTS (SELECT 1 FROM span_landing)").fetchone()[0]:
                    return
                time.sleep(0.05)
        raise AssertionError("spans were not folded into the tree in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def start_tasktree(database_url, tmp_path):
    """Factory: ``start_tasktree(extra_args=(), env=None)`` → a running ``TasktreeServer``."""
    servers = []

    def start(extra_args=(), env=None, database=None):
        server = TasktreeServer(database or database_url, tmp_path, extra_args, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def tasktree_server(database_url, tmp_path_factory):
    """One shared ``tasktree serve`` for the session (tests use their own trace ids)."""
    server = TasktreeServer(database_url, tmp_path_factory.mktemp("tasktree-server"))
    yield server
    server.stop()
