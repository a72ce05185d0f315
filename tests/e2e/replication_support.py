"""PostgreSQL clusters with streaming replication, made by the tests (issue 17).

Debian's PostgreSQL binaries (``initdb``, ``pg_basebackup -R``, ``pg_ctl promote``), run as the
``postgres`` user when the tests run as root (initdb refuses root).  Each cluster lives in a
directory of its own under ``/tmp`` (pytest's temporary directories are root-only, and the server
runs as ``postgres``), listens on 127.0.0.1 on a free port, and is stopped by PID: ``kill()`` is a
machine dying (SIGKILL to the postmaster and every one of its processes), ``stop()`` a fast
shutdown at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from exporter.tests.integration.faults_support import free_port

STANDBY_NAME = "tasktree_standby"
"""The standby's ``application_name``: what ``synchronous_standby_names`` names."""
DATABASE = "tasktree"


def _bin_dir() -> Path:
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        pytest.fail("no PostgreSQL server binaries: scripts/test-services installs postgresql")
    return binaries[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Cluster:
    """One PostgreSQL server: ``Cluster.primary(...)`` or ``primary.standby()``."""

    def __init__(self, base: Path, name: str, options: dict[str, str]):
        self.bin = _bin_dir()
        self.dir = base / name
        self.data = self.dir / "data"
        self.port = free_port()
        self.options = options
        self.synchronous = False
        self.pid: int | None = None

    # -- making clusters -------------------------------------------------------------------

    @classmethod
    def primary(cls, base: Path, *, synchronous: bool, fsync: bool = False) -> Cluster:
        """A new primary; ``synchronous``: commits wait for the standby ``STANDBY_NAME``;
        ``fsync``: flush to disk as in production (tests need not: SIGKILL loses no page cache)."""
        cluster = cls(base, "primary", {"fsync": "on" if fsync else "off"})
        cluster.synchronous = synchronous
        cluster._mkdir()
        _run([str(cluster.bin / "initdb"), "-D", str(cluster.data), "-U", "postgres",
              "--auth=trust", "--no-sync"])
        cluster.start()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return cluster

    def standby(self) -> Cluster:
        """A streaming hot standby of this primary (``pg_basebackup -R``), started."""
        standby = Cluster(self.dir.parent, "standby", dict(self.options))
        standby._mkdir()
        _run([str(self.bin / "pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream",
              "-c", "fast", "-d", f"host=127.0.0.1 port={self.port} user=postgres"])
        # The application name is what synchronous_standby_names on the primary matches.
        with (standby.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres "
                f"application_name={STANDBY_NAME}'\n"
            )
        standby.start()
        # Only now: until a standby streams, every commit would wait.
        self.set_synchronous(self.synchronous)
        return standby

    def set_synchronous(self, synchronous: bool) -> None:
        """Make commits wait for the standby (or not), and wait until it streams so."""
        self.synchronous = synchronous
        names = STANDBY_NAME if synchronous else ""
        self.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        self.execute("SELECT pg_reload_conf()")
        self.wait_for_standby(until="sync" if synchronous else "async")

    def _mkdir(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                    "unix_socket_directories": str(self.dir), **self.options}
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        _run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
              "-l", str(self.dir / "log"), "-o", options, "start"])
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def promote(self) -> None:
        """``pg_ctl promote`` and wait until the server accepts writes."""
        _run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def kill(self) -> None:
        """The machine dies: SIGKILL to the postmaster and all its processes at once."""
        assert self.pid is not None
        for pid in [self.pid, *_children(self.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data),
                                         "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
            self.pid = None

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, query: str, params=None) -> list[tuple]:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def wait_for_standby(self, until: str, timeout: float = 30.0) -> None:
        """Wait until a standby streams from this primary with ``sync_state`` ``until``."""
        deadline = time.monotonic() + timeout
        query = "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'"
        while time.monotonic() < deadline:
            if (until,) in self.execute(query):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {until} standby streams from the primary on port {self.port}")


class Replication:
    """A primary and its standby in one temporary directory, removed at ``close()``."""

    def __init__(self, *, synchronous: bool, fsync: bool = False):
        self.base = Path(tempfile.mkdtemp(prefix="tasktree-replication-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self.clusters: list[Cluster] = []
        self.primary = self._keep(Cluster.primary(self.base, synchronous=synchronous, fsync=fsync))
        self.standby = self._keep(self.primary.standby())

    def _keep(self, cluster: Cluster) -> Cluster:
        self.clusters.append(cluster)
        return cluster

    def multi_host_url(self, **params: str) -> str:
        """Both servers in one libpq URL, the primary first."""
        hosts = ",".join(f"127.0.0.1:{c.port}" for c in (self.primary, self.standby))
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{hosts}/{DATABASE}" + (f"?{query}" if query else "")

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.stop()
        shutil.rmtree(self.base, ignore_errors=True)
