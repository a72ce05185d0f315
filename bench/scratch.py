"""What the benchmarks share: a scratch database, and a ``tasktree serve`` on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from tasktree.exporter.store.migrate import migrate
from tasktree.exporter.store.partitions import ensure_day, today

ADMIN = os.environ.get("TASKTREE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def scratch_database(prefix: str, admin: str = ADMIN) -> Iterator[str]:
    """A new, empty database on the server of ``admin`` (a URL that may create databases) for
    the block; yields its URL and drops it afterwards, whatever happened."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def add_past_days(url: str, days: int) -> None:
    """Migrate ``url`` and give it the partitions of ``days`` earlier days, as in a database kept
    that long (the default retention keeps everything)."""
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for day in range(today() - days, today()):
            ensure_day(conn, day)


def start_server(url: str, *args: str, stderr=subprocess.DEVNULL, cwd: str | None = None
                 ) -> tuple[subprocess.Popen, dict]:
    """``tasktree serve`` on ``url`` with every port free (plus ``args``); returns the process
    and the URLs it printed when ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasktree.exporter", "serve", "--database-url", url, "--port", "0",
         "--otlp-http-port", "0", "--otlp-grpc-port", "0", *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd)
    for line in proc.stdout:
        if line.startswith("TASKTREE_READY "):
            return proc, json.loads(line.split(" ", 1)[1])
    raise SystemExit("tasktree serve did not start" + (f"; see {cwd}" if cwd else ""))
