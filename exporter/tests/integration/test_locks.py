"""Advisory lock keys: one home (``store/locks.py``), no two jobs sharing a key (issue 18)."""

from __future__ import annotations

import re
from importlib import resources

import psycopg

from tasktree.exporter.store import locks
from tasktree.exporter.store.fold import fold_batch
from tasktree.exporter.store.landing import ResourceIds, land

from ..spans import sid, span


def _migration(name: str) -> str:
    return (resources.files("tasktree.exporter.store") / "migrations" / name).read_text()


def test_every_lock_key_is_distinct_and_sql_agrees_with_the_constants():
    service = [locks.MIGRATIONS, locks.METRICS, locks.PARTITIONS, locks.RETENTION]
    lanes = [locks.lane(n) for n in range(locks.LANES)]
    assert len(set(service + lanes)) == len(service) + len(lanes)
    klass, number = locks.PARTITIONS
    assert f"pg_advisory_xact_lock({klass}, {number})" in _migration("0005_partitions.sql")
    index = re.search(r"span_landing_lane ON span_landing \(\(get_byte\(trace_id, 0\) % (\d+)\)",
                      _migration("0007_fold_lanes.sql"))
    assert index and int(index.group(1)) == locks.LANES
    assert all(locks.lane_of(bytes([n]) + bytes(15)) == n % locks.LANES for n in range(256))


def test_service_locks_never_keep_a_lane_from_folding(clean_store_db):
    """Retention, a metrics write or a migration in progress elsewhere: every lane still folds
    (retention's key was lane 7's, the metrics writer's lane 2's).  (Partition creation is left
    out: a fold that must create today's partition rightly waits for another one creating it.)"""
    runs = [bytes([lane]) + bytes(15) for lane in range(locks.LANES)]
    with psycopg.connect(clean_store_db, autocommit=True) as holder, \
            psycopg.connect(clean_store_db, autocommit=True) as conn:
        land(conn, [span(t, sid(0)) for t in runs], ResourceIds(), 1)
        for key in (locks.MIGRATIONS, locks.METRICS, locks.RETENTION):
            holder.execute("SELECT pg_advisory_lock(%s, %s)", key)
        folded = [fold_batch(conn, limit=100, stall_after_s=30, lane=lane).trace_ids
                  for lane in range(locks.LANES)]
    assert folded == [(t,) for t in runs]
