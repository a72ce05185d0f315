"""The audit log of docker actions in PostgreSQL (table ``docker_audit``, migration 0003).

Callers pass requests that are already redacted (``public()`` of the specs): environment values
never reach this module.  Writes block for one short statement on a pooled connection and raise
``StoreUnavailable`` when PostgreSQL is unreachable: an action that cannot be audited is not done.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg_pool
from psycopg.types.json import Jsonb

from tasktree.exporter.store.pool import connection, scalar

_COLUMNS = (
    "id, at, finished_at, actor, role, action, hosts, target, request, dry_run, status, result,"
    " operation_id, trace_id"
)
_INSERT = """
INSERT INTO docker_audit (actor, role, action, hosts, target, request, dry_run, status, result,
                          operation_id, trace_id, finished_at)
VALUES (%(actor)s, %(role)s, %(action)s, %(hosts)s, %(target)s, %(request)s, %(dry_run)s,
        %(status)s, %(result)s, %(operation_id)s, %(trace_id)s,
        CASE WHEN %(status)s = 'running' THEN NULL ELSE now() END)
RETURNING id
"""
_FINISH = "UPDATE docker_audit SET status = %s, result = %s, finished_at = now() WHERE id = %s"
_LIST = f"""
SELECT {_COLUMNS}
FROM docker_audit
WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
  AND (%(host)s::text IS NULL OR hosts @> ARRAY[%(host)s::text])
ORDER BY id DESC
LIMIT %(limit)s
"""  # noqa: S608 (a constant list of columns)


class AuditLog:
    def __init__(self, pool: psycopg_pool.ConnectionPool):
        self._pool = pool

    def start(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        hosts: list[str],
        target: str | None,
        request: dict,
        dry_run: bool = False,
        operation_id: str | None = None,
        trace_id: str | None = None,
        status: str = "running",
        result: dict | None = None,
    ) -> int:
        """Insert one row; returns its id."""
        with connection(self._pool) as conn:
            return scalar(
                conn,
                _INSERT,
                {
                    "actor": actor,
                    "role": role,
                    "action": action,
                    "hosts": hosts,
                    "target": target,
                    "request": Jsonb(request),
                    "dry_run": dry_run,
                    "status": status,
                    "result": Jsonb(result) if result is not None else None,
                    "operation_id": operation_id,
                    "trace_id": trace_id,
                },
            )

    def finish(self, audit_id: int, status: str, result: dict) -> None:
        with connection(self._pool) as conn:
            conn.execute(_FINISH, (status, Jsonb(result), audit_id))

    def list(self, *, limit: int = 50, before: int | None = None, host: str | None = None) -> dict:
        """Newest first: ``{"entries": [...], "next_cursor": id or None}``."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                _LIST, {"before": before, "host": host, "limit": limit + 1}
            ).fetchall()
        entries = [_entry(r) for r in rows[:limit]]
        return {
            "entries": entries,
            "next_cursor": str(entries[-1]["id"]) if len(rows) > limit else None,
        }


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(row) -> dict:
    keys = [c.strip() for c in _COLUMNS.split(",")]
    entry = dict(zip(keys, row, strict=True))
    entry["at"], entry["finished_at"] = _time(entry["at"]), _time(entry["finished_at"])
    return entry
