"""Migrations: versioned files applied once, safe from two processes at once, data carried over."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tasktree.exporter.store import partitions
from tasktree.exporter.store.migrate import NewerSchema, available, migrate

from ..spans import sid, tid


def test_two_processes_migrating_at_once_apply_each_version_exactly_once(empty_database):
    results, errors = [], []

    def run():
        try:
            results.append(migrate(empty_database))
        except Exception as exc:  # noqa: BLE001 (asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    versions = [v for v, _, _ in available()]
    assert not errors and sorted(results, key=len) == [[], versions]
    assert migrate(empty_database) == []  # and a third time: nothing to do
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert [v for (v,) in rows] == versions


def test_tasks_stored_before_partitioning_move_into_their_runs_day(empty_database):
    migrate(empty_database, target=4)
    day_ns = (partitions.today() - 3) * 86_400 * 10**9
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO runs (trace_id, task_count, last_received_ns) VALUES (%s, 2, %s)",
                     (tid(1), day_ns + 5))
        for span_id, parent in ((sid(1), None), (sid(2), sid(1))):
            conn.execute("INSERT INTO tasks (trace_id, span_id, parent_span_id, status, name)"
                         " VALUES (%s, %s, %s, 3, 'kept')", (tid(1), span_id, parent))
    migrate(empty_database)
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM tasks GROUP BY 1").fetchall()
    assert rows == [(f"tasks_d{partitions.today() - 3}", 2)]


def test_the_day_a_row_is_filed_under_by_default_is_floored_not_rounded(clean_store_db):
    """Issue 14: at 12:00:01 UTC the default day was the next one (a numeric cast rounds)."""
    noon = "'2026-12-06 12:00:01+00'::timestamptz"
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        for table in ("runs", "tasks", "tasks_default"):
            default = conn.execute(
                "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d"
                " JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
                " WHERE d.adrelid = %s::regclass AND a.attname = 'run_day'", (table,)).fetchone()[0]
            assert "now()" in default, default
            day = conn.execute(f"SELECT {default.replace('now()', noon)}").fetchone()[0]
            assert day == partitions.today(1_796_558_401 * 10**9) == 20793, (table, default)


def test_a_schema_newer_than_this_tasktree_is_refused_with_what_to_do(empty_database):
    """An older tasktree on a database a newer one migrated started without a word, and its
    search no longer matched the index the newer one had built."""
    migrate(empty_database)
    newest = max(version for version, _, _ in available())
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, 'from-the-future')",
            (newest + 1,),
        )
    with pytest.raises(NewerSchema, match=f"version {newest + 1}, newer than this tasktree's"):
        migrate(empty_database)
