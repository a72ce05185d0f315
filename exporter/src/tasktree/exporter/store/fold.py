"""The folder: moves landed span records into the task tree in large, set-based batches.

One fold is one transaction:

1. claim up to N landed records (``FOR UPDATE SKIP LOCKED``, so several folders never share one);
2. hold the lock of each affected run's lane (``store/locks.py``): a lane folder holds its one
   lane already; a fold of every lane, and the stall sweeper, take theirs in sorted order (no
   deadlocks between processes).  At most ``LANES`` locks, however many runs a batch touches;
3. store the *leaves* set-based: a new task's one record (most records are), no other record
   of the batch naming it as parent.  Their rows are written here in one statement, and the
   tree rules only get their counts by parent and status (``RunFold.add_stored_leaves``, which
   makes a placeholder for a parent without a row);
4. load the other records' nodes, the leaves' parents and their ancestor chains, fold in memory
   (``tree.fold.RunFold``);
   no stored chain is longer than the depth limit (``TASKTREE_MAX_DEPTH``: the fold refuses links
   that would pass it), so neither the recursive load nor the walks in memory grow with the run;
5. write new and changed tasks, the run summaries, and delete the claimed records.

Payload columns (attributes, events, …) go from ``span_landing`` to ``tasks`` inside PostgreSQL;
only ids, statuses and times travel to Python.  The stall sweeper reuses steps 2, 4 and 5.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg

from tasktree.exporter.store import locks, partitions, quarantine, subtree_paths
from tasktree.exporter.store._copy import fast_binary_dumpers
from tasktree.exporter.store.locks import LANES
from tasktree.exporter.store.pool import scalar
from tasktree.exporter.tree.fold import (
    DEFAULT_MAX_DEPTH,
    REFUSED_CYCLE,
    REFUSED_REASONS,
    Node,
    Record,
    RunFold,
    record_rank,
)
from tasktree.exporter.tree.status import (
    COUNTED,
    ERROR,
    FINAL,
    LIVE,
    OK,
    RUNNING,
    STALLED,
    WORST_FIRST,
    sql_list,
)

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]  # rows as tuples (the pool's default)

# fmt: off
DURATION_BUCKETS = (
    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 86400.0,
)
"""Upper bounds (seconds) of the task and run duration histograms (the ``metrics`` package), up
to a day (then +Inf).  Stored per bucket in ``metric_totals``: changing them needs a migration
that empties that table."""
# fmt: on

# Claimed ids are staged in a temporary table so that every later statement joins on it
# instead of shipping large arrays back and forth.  With them the landed rows' physical
# addresses (ctid): the fold holds their row locks, so the rows stay where they are, and reading
# or deleting them by address skips a primary-key lookup per record.

_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"

_CLAIM = """
WITH c AS (
    SELECT id, trace_id, span_id, parent_span_id, status, heartbeat_ns, start_ns, end_ns, name,
           resource_id, ctid
    FROM span_landing {lane} ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), staged AS (INSERT INTO fold_claim SELECT * FROM c)
SELECT trace_id, count(*) FROM c GROUP BY trace_id
"""
_CLAIM_ANY = _CLAIM.replace("{lane}", "")
# A landed record's lane (locks.lane_of), written as in the index span_landing_lane (migration
# 0007), constant included, so that the planner matches the two.
_LANE_OF = f"get_byte(trace_id, 0) % {LANES}"
# One index probe per lane: far cheaper than opening a fold of an empty lane (about 2 ms).
_LANES_WITH_RECORDS = f"""
SELECT lane FROM generate_series(0, {LANES} - 1) AS lane
WHERE EXISTS (SELECT 1 FROM span_landing WHERE {_LANE_OF} = lane)
"""  # noqa: S608 (a constant)
_CLAIM_LANE = _CLAIM.replace("{lane}", f"WHERE {_LANE_OF.replace('%', '%%')} = %(lane)s")


# The seeds and their ancestor chains.  A task at the top whose link closed a loop (reason 1,
# tree.fold.REFUSED_CYCLE; a refused link has no parent) brings the chain of its declared parent
# too: if a task in that loop moves, the tree rules try the link again, and need that chain to
# see whether the loop is gone.
_LOAD = f"""
WITH RECURSIVE chain AS (
    SELECT t.trace_id, t.span_id, t.parent_span_id, t.missing, t.status, t.end_ns,
           t.heartbeat_ns, t.child_count, t.n_ok, t.n_error, t.n_running, t.n_stalled, t.run_day,
           t.height, t.refused_parent_span_id, t.refused_reason
    FROM fold_seeds s JOIN {partitions.TASKS_OF_DAY} t
         ON t.span_id = s.span_id AND t.trace_id = s.trace_id AND t.run_day = s.run_day
    UNION
    SELECT t.trace_id, t.span_id, t.parent_span_id, t.missing, t.status, t.end_ns,
           t.heartbeat_ns, t.child_count, t.n_ok, t.n_error, t.n_running, t.n_stalled, t.run_day,
           t.height, t.refused_parent_span_id, t.refused_reason
    FROM chain c JOIN {partitions.TASKS_OF_DAY} t
         ON t.span_id = coalesce(
             c.parent_span_id,
             CASE WHEN c.refused_reason = {REFUSED_CYCLE:d} THEN c.refused_parent_span_id END)
         AND t.trace_id = c.trace_id AND t.run_day = c.run_day
)
SELECT * FROM chain
"""  # noqa: S608 (a constant)

# A batch touches a few thousand rows of tables that may hold millions: probing the indexes row
# by row is always right, but the planner knows nothing about the unanalysed temporary tables,
# nor about a day partition that filled since it was last analysed, and would otherwise pick hash
# joins or repeated scans that read a whole table.  The claim, too, must walk its lane's index in
# id order and stop at the limit; a bitmap scan read the lane's whole backlog and sorted it on
# disk, at every claim.
#
# A fold need not wait for its commit to reach disk: if it is lost in a crash, so is its DELETE
# of the landed records, and they are simply folded again.
_PLAN_FOR_BATCHES = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;"
    " SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off;"
    " SET LOCAL synchronous_commit = off"
)

_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS fold_claim (
    id bigint, trace_id bytea, span_id bytea, parent_span_id bytea, status smallint,
    heartbeat_ns bigint, start_ns bigint, end_ns bigint, name text, resource_id bigint,
    landing_row tid
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_seeds (trace_id bytea, span_id bytea, run_day integer)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_out (
    trace_id bytea, span_id bytea, landing_id bigint, is_new boolean, parent_span_id bytea,
    missing boolean, status smallint, heartbeat_ns bigint, child_count integer,
    n_ok integer, n_error integer, n_running integer, n_stalled integer, run_day integer,
    height integer, refused_parent_span_id bytea, refused_reason smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_leaves (
    id bigint, trace_id bytea, span_id bytea, parent_span_id bytea, status smallint,
    heartbeat_ns bigint, start_ns bigint, end_ns bigint, name text, resource_id bigint,
    landing_row tid, run_day integer
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_runs (
    trace_id bytea, d_ok integer, d_error integer, d_running integer, d_stalled integer,
    d_tasks integer, min_start_ns bigint, any_landing_id bigint, run_day integer,
    root_count integer, open_roots integer, root_end bigint, worst integer, root_name text,
    root_resource bigint
) ON COMMIT DELETE ROWS;
"""

_OUT_TYPES = [
    "bytea",
    "bytea",
    "int8",
    "bool",
    "bytea",
    "bool",
    "int2",
    "int8",
    "int4",
    "int4",
    "int4",
    "int4",
    "int4",
    "int4",
    "int4",
    "bytea",
    "int2",
]
_COPY_OUT = "COPY fold_out FROM STDIN (FORMAT BINARY)"
_RUN_TYPES = ["bytea", "int4", "int4", "int4", "int4", "int4", "int8", "int8", "int4"]
_COPY_RUNS = (
    "COPY fold_runs (trace_id, d_ok, d_error, d_running, d_stalled, d_tasks, min_start_ns,"
    " any_landing_id, run_day) FROM STDIN (FORMAT BINARY)"
)

_SEED_TYPES = ["bytea", "bytea", "int4"]
_COPY_SEEDS = "COPY fold_seeds (span_id, trace_id, run_day) FROM STDIN (FORMAT BINARY)"

_PAYLOAD = (
    "name, kind, start_ns, end_ns, status_message, resource_id, scope, attributes, "
    "events, links, truncated, received_ns, search"
)

# _PAYLOAD is a constant list of columns, not data.
_INSERT_NEW = f"""
INSERT INTO tasks (trace_id, span_id, parent_span_id, missing, status, heartbeat_ns, child_count,
                   n_ok, n_error, n_running, n_stalled, run_day, height, refused_parent_span_id,
                   refused_reason, {_PAYLOAD})
SELECT o.trace_id, o.span_id, o.parent_span_id, o.missing, o.status, o.heartbeat_ns, o.child_count,
       o.n_ok, o.n_error, o.n_running, o.n_stalled, o.run_day, o.height, o.refused_parent_span_id,
       o.refused_reason,
       l.name, l.kind, l.start_ns, l.end_ns, l.status_message, l.resource_id, l.scope,
       l.attributes, l.events, l.links, coalesce(l.truncated, false), l.received_ns,
       l.search
FROM fold_out o LEFT JOIN span_landing l ON l.id = o.landing_id
WHERE o.is_new
"""  # noqa: S608

# Whether the task of claimed record ``c`` has a row, probed by its primary key for each record.
# The planner cannot be trusted here: the day partition's statistics may be far behind its size
# (it fills during the day), and it would scan it whole, or walk the run's children index.  So
# the probe is a subquery with LIMIT, which must run once per row, and offers the indexes only the
# span id (IS TRUE hides the trace id), which leads the primary key alone.  It names the day's
# partition (partitions.TASKS_OF_DAY): through ``tasks`` each fold locked every day's partition.
_NO_ROW = f"""
NOT EXISTS (SELECT FROM (SELECT 1 FROM {partitions.TASKS_OF_DAY} t
                         WHERE t.span_id = c.span_id AND (t.trace_id = c.trace_id) IS TRUE
                           AND t.run_day = %(day)s LIMIT 1) AS r)
"""  # noqa: S608 (the partition's name: see partitions.of_day)

# The claimed records of the runs of one day: all of them when the batch's runs share one day
# (``traces`` NULL: no list of every trace id to send), else those of the runs in ``traces``.
_OF_DAY = "(%(traces)s::bytea[] IS NULL OR c.trace_id = ANY(%(traces)s))"

# The leaves (see the module docstring), for the claimed records of the runs of one day: a span
# with one record in the batch, no other record naming it as parent, and no row yet.  A leaf has
# no children, so it can close no loop.  Their rows are written at once, in the state the rules
# give a new task without children, and the other records are the statement's result, for the
# rules.  (A span's records and the records naming it as parent are counted in one window.)
_STORE_LEAVES = f"""
WITH named AS (
    SELECT c.*, true AS is_record FROM fold_claim c WHERE {_OF_DAY}
    UNION ALL
    SELECT NULL, c.trace_id, c.parent_span_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           false
    FROM fold_claim c WHERE {_OF_DAY} AND c.parent_span_id IS NOT NULL
), candidates AS (
    SELECT n.*,
           count(*) OVER (PARTITION BY n.trace_id, n.span_id) = 1
           AND n.parent_span_id IS DISTINCT FROM n.span_id AS single
    FROM named n
), classified AS (
    SELECT c.*, c.single AND {_NO_ROW} AS leaf
    FROM candidates c WHERE c.is_record
), leaves AS (
    INSERT INTO fold_leaves
    SELECT c.id, c.trace_id, c.span_id, c.parent_span_id,
           CASE WHEN c.status = {RUNNING:d} AND c.heartbeat_ns < %(cutoff)s THEN {STALLED:d}
                ELSE c.status END,
           c.heartbeat_ns, c.start_ns, c.end_ns, c.name, c.resource_id, c.landing_row, %(day)s
    FROM classified c WHERE c.leaf
    RETURNING trace_id, span_id, parent_span_id, status, landing_row
), stored AS (
    INSERT INTO tasks (trace_id, span_id, parent_span_id, status, heartbeat_ns, run_day,
                       {_PAYLOAD}, path)
    SELECT f.trace_id, f.span_id, f.parent_span_id, f.status, l.heartbeat_ns, %(day)s,
           l.name, l.kind, l.start_ns, l.end_ns, l.status_message, l.resource_id, l.scope,
           l.attributes, l.events, l.links, coalesce(l.truncated, false), l.received_ns,
           l.search, {subtree_paths.TOP_LEAF_PATH}
    FROM leaves f JOIN span_landing l ON l.ctid = f.landing_row
)
SELECT c.id, c.trace_id, c.span_id, c.parent_span_id, c.status, c.start_ns, c.end_ns,
       c.heartbeat_ns, c.name, c.resource_id
FROM classified c WHERE NOT c.leaf
"""  # noqa: S608 (constant column lists)


def _count_by_status(window: str = "") -> str:
    """The SQL of the counts of rows by status, in the order of tree.status.COUNTED."""
    return ", ".join(f"count(*) FILTER (WHERE status = {code:d}){window}" for code in COUNTED)


# Per parent: the leaves by status, in the order of tree.status.COUNTED (ok, error, running,
# stalled), their earliest start and smallest landing id.  Leaves at the top of their run (a root
# alone, as in a run of one task) touch no other task: _RUNS_OF_TOP_LEAVES counts them into their
# runs' summaries in SQL, and a run with no other records needs no tree rules at all.
_LEAF_GROUPS_UNDER_PARENTS = f"""
SELECT trace_id, parent_span_id, {_count_by_status()}, min(start_ns), min(id)
FROM fold_leaves WHERE parent_span_id IS NOT NULL GROUP BY trace_id, parent_span_id
"""  # noqa: S608 (constants)
# A top-level task's severity, for a run's status: the worst of its roots (tree.status.WORST_FIRST:
# error 4 > stalled 3 > running 2 > ok 1), turned back into a status by _STATUS_OF_SEVERITY (an
# array indexed by severity).  Written with the codes as constants, worst first, as before the
# enum: this is evaluated for every top-level task of every run a fold touches.
_SEVERITY = (
    "CASE {status} "
    + " ".join(f"WHEN {code:d} THEN {len(WORST_FIRST) - i}" for i, code in enumerate(WORST_FIRST))
    + " END"
)
_STATUS_OF_SEVERITY = f"(ARRAY[{', '.join(str(int(code)) for code in reversed(WORST_FIRST))}])"

# The top-level leaves' part of their runs' summaries (fold_runs then holds up to two rows a
# run: this one, and the tree rules' delta): their counts, and what they say as _UPSERT_RUNS reads
# a run's top-level tasks, which for a run the batch starts are all there is.
_RUNS_OF_TOP_LEAVES = f"""
INSERT INTO fold_runs
SELECT DISTINCT ON (trace_id) trace_id,
       {_count_by_status(" OVER w")},
       count(*) OVER w, min(start_ns) OVER w, min(id) OVER w, run_day,
       count(*) OVER w, count(*) FILTER (WHERE status IN {sql_list(LIVE)}) OVER w,
       max(end_ns) OVER w,
       max({_SEVERITY.format(status="status")}) OVER w, name, resource_id
FROM fold_leaves WHERE parent_span_id IS NULL
WINDOW w AS (PARTITION BY trace_id)
ORDER BY trace_id, start_ns, span_id  -- DISTINCT ON keeps the first root's name and resource
"""  # noqa: S608 (constant)

_LEAVES_UNDER = """
SELECT span_id, status, heartbeat_ns FROM fold_leaves WHERE trace_id = %s AND parent_span_id = %s
"""

# The leaves that finished, grouped for the duration metrics: a stored batch has thousands, and
# one Python object each was a tenth of a fold's time.  The bucket is bisect_left(DURATION_BUCKETS,
# seconds), as metrics.py counts one task: the bounds at least the duration, counted from the top.
_LEAVES_FINISHED = f"""
SELECT resource_id, name, status, root, sum(seconds), count(*),
       %(buckets)s - width_bucket(-seconds, %(negated_bounds)s::float8[]) AS bucket
FROM (SELECT resource_id, name, status, parent_span_id IS NULL AS root,
             greatest(coalesce(end_ns, start_ns) - start_ns, 0)::float8 / 1e9 AS seconds
      FROM fold_leaves WHERE status IN {sql_list(FINAL)}) AS f
GROUP BY resource_id, name, status, root, bucket
"""  # noqa: S608 (constants)
_NEGATED_BOUNDS = {
    "buckets": len(DURATION_BUCKETS),
    "negated_bounds": sorted(-b for b in DURATION_BUCKETS),
}

_UPDATE_WITH_PAYLOAD = f"""
UPDATE {partitions.TASKS_OF_DAY} t SET
    parent_span_id = o.parent_span_id, missing = o.missing, status = o.status,
    heartbeat_ns = o.heartbeat_ns, child_count = o.child_count,
    n_ok = o.n_ok, n_error = o.n_error, n_running = o.n_running, n_stalled = o.n_stalled,
    height = o.height, refused_parent_span_id = o.refused_parent_span_id,
    refused_reason = o.refused_reason,
    name = l.name, kind = l.kind, start_ns = l.start_ns, end_ns = l.end_ns,
    status_message = l.status_message, resource_id = l.resource_id, scope = l.scope,
    attributes = l.attributes, events = l.events, links = l.links, truncated = l.truncated,
    received_ns = l.received_ns, search = l.search
FROM fold_out o JOIN span_landing l ON l.id = o.landing_id
WHERE NOT o.is_new
  AND t.span_id = o.span_id AND t.trace_id = o.trace_id AND t.run_day = o.run_day
"""  # noqa: S608 (constant fragments)

_UPDATE_STRUCTURE = f"""
UPDATE {partitions.TASKS_OF_DAY} t SET
    parent_span_id = o.parent_span_id, missing = o.missing, status = o.status,
    heartbeat_ns = o.heartbeat_ns, child_count = o.child_count,
    n_ok = o.n_ok, n_error = o.n_error, n_running = o.n_running, n_stalled = o.n_stalled,
    height = o.height, refused_parent_span_id = o.refused_parent_span_id,
    refused_reason = o.refused_reason
FROM fold_out o
WHERE NOT o.is_new AND o.landing_id IS NULL
  AND t.span_id = o.span_id AND t.trace_id = o.trace_id AND t.run_day = o.run_day
"""  # noqa: S608 (a constant)

# The claimed records, folded: by their physical address (see _CLAIM).
_DELETE_CLAIMED = "DELETE FROM span_landing l USING fold_claim c WHERE l.ctid = c.landing_row"

# Stored placeholders whose last child moved to another parent (tree.fold: ``RunFold.dropped``),
# in the run's day partition.
_DELETE_DROPPED = f"""
DELETE FROM {partitions.TASKS_OF_DAY} WHERE trace_id = %s AND span_id = ANY(%s) AND missing
"""  # noqa: S608 (the partition's name: see partitions.of_day)

# A run's summary, written once per fold: its counts moved by the batch's delta, and what its
# top-level tasks say now, after the fold's task writes.
#
# A run's status is its root's own status (several roots: the worst of them).  Until a root
# arrives (other SDKs send it last) the run is still going: running, or stalled when its tasks
# are stalled and none is running; its counts show any errors meanwhile.  Its name and job are its
# first root's, a true root before a task kept at the top for a refused link (no root yet: the job
# of a task of the batch).
#
# What the top-level tasks say comes from the batch itself for a run it starts with top-level
# leaves only (a run of one task: the batch holds all its top tasks); for any other run, from its
# stored top-level tasks, reached through LATERAL from the batch's runs so that the tasks index is
# always probed by trace id: the cost is the batch's runs' top-level tasks, never the day's.
# (Joined as plain tables, a day partition without statistics led the planner to walk every
# top-level task of the day for each run of the batch: issue 18.)
_BATCH_RUNS = """
g AS (
    SELECT trace_id, sum(d_ok) AS d_ok, sum(d_error) AS d_error, sum(d_running) AS d_running,
           sum(d_stalled) AS d_stalled, sum(d_tasks) AS d_tasks,
           min(min_start_ns) AS min_start_ns, min(any_landing_id) AS any_landing_id,
           min(run_day) AS run_day, count(*) = 1 AND count(root_count) = 1 AS top_leaves_only,
           max(root_count) AS root_count, max(open_roots) AS open_roots,
           max(root_end) AS root_end, max(worst) AS worst, max(root_name) AS root_name,
           max(root_resource) AS root_resource
    FROM fold_runs WHERE run_day = %(day)s GROUP BY trace_id
), f AS (
    SELECT g.*, g.top_leaves_only AND NOT EXISTS (SELECT FROM runs e WHERE e.trace_id = g.trace_id)
               AS tops_in_batch
    FROM g
)
"""
_UPSERT_RUNS = f"""
INSERT INTO runs AS r (trace_id, job, name, status, start_ns, end_ns, n_ok, n_error, n_running,
                       n_stalled, task_count, root_count, last_received_ns, run_day)
SELECT f.trace_id,
       coalesce(x.root_job,  -- else the job of a landed record (asked only when needed)
                (SELECT res.job FROM span_landing l JOIN resources res ON res.id = l.resource_id
                 WHERE l.id = f.any_landing_id)),
       x.root_name,
       CASE WHEN x.root_count > 0 THEN {_STATUS_OF_SEVERITY}[x.worst]
            WHEN f.d_stalled > 0 AND f.d_running = 0 THEN {STALLED:d} ELSE {RUNNING:d} END,
       f.min_start_ns, CASE WHEN x.root_count > 0 AND x.open_roots = 0 THEN x.root_end END,
       f.d_ok, f.d_error, f.d_running, f.d_stalled, f.d_tasks, coalesce(x.root_count, 0),
       %(now)s, f.run_day
FROM f
LEFT JOIN LATERAL (
    SELECT f.root_count, f.open_roots, f.root_end, f.worst, f.root_name, rj.job AS root_job
    FROM (VALUES (1)) AS one (x) LEFT JOIN resources rj ON rj.id = f.root_resource
    WHERE f.tops_in_batch
    UNION ALL
    SELECT count(*) FILTER (WHERE NOT t.missing),
           count(*) FILTER (WHERE NOT t.missing AND t.status IN {sql_list(LIVE)}),
           max(t.end_ns) FILTER (WHERE NOT t.missing),
           max({_SEVERITY.format(status="t.status")}) FILTER (WHERE NOT t.missing),
           (array_agg(t.name ORDER BY t.refused_parent_span_id IS NOT NULL, t.start_ns, t.span_id)
               FILTER (WHERE NOT t.missing))[1],
           (array_agg(tr.job ORDER BY t.refused_parent_span_id IS NOT NULL, t.start_ns, t.span_id)
               FILTER (WHERE NOT t.missing))[1]
    FROM {partitions.TASKS_OF_DAY} t LEFT JOIN resources tr ON tr.id = t.resource_id
    WHERE NOT f.tops_in_batch
      AND t.trace_id = f.trace_id AND t.run_day = f.run_day AND t.parent_span_id IS NULL
    GROUP BY t.trace_id
) x ON true
ON CONFLICT (trace_id) DO UPDATE SET
    job = CASE WHEN EXCLUDED.root_count > 0 THEN coalesce(EXCLUDED.job, r.job)
               ELSE coalesce(r.job, EXCLUDED.job) END,
    name = EXCLUDED.name,  -- none again once its only root has moved under a parent
    status = CASE WHEN EXCLUDED.root_count > 0 THEN EXCLUDED.status
                  WHEN r.n_stalled + EXCLUDED.n_stalled > 0
                       AND r.n_running + EXCLUDED.n_running = 0 THEN {STALLED:d}
                  ELSE {RUNNING:d} END,
    start_ns = least(r.start_ns, EXCLUDED.start_ns),
    end_ns = EXCLUDED.end_ns,
    n_ok = r.n_ok + EXCLUDED.n_ok, n_error = r.n_error + EXCLUDED.n_error,
    n_running = r.n_running + EXCLUDED.n_running, n_stalled = r.n_stalled + EXCLUDED.n_stalled,
    task_count = r.task_count + EXCLUDED.task_count,
    root_count = EXCLUDED.root_count,
    last_received_ns = greatest(r.last_received_ns, EXCLUDED.last_received_ns)
"""  # noqa: S608 (constant fragments)

def _not_ahead(time_ns: str) -> str:
    """SQL: ``time_ns``, or the fold's now if it is later; NULL stays NULL (``least`` alone
    would make it now)."""
    return f"CASE WHEN {time_ns} > %(now)s THEN %(now)s ELSE {time_ns} END"


# Per job: when a run last started, succeeded, failed, and when anything was last heard from it,
# so that "never ran" and "stopped succeeding" are plain PromQL over timestamps.  From the runs
# rows the same statement just wrote.  A time from a clock running ahead of this server's counts
# as now: kept as it is, one run stamped a day ahead would hide every later failure, start and
# hang of its job for that day.
_UPSERT_RUNS_AND_JOBS = f"""
WITH {_BATCH_RUNS}, r AS ({_UPSERT_RUNS} RETURNING job, start_ns, end_ns, status)
INSERT INTO jobs AS j (job, last_start_ns, last_success_ns, last_failure_ns, last_seen_ns)
SELECT r.job, {_not_ahead("max(r.start_ns)")},
       {_not_ahead(f"max(r.end_ns) FILTER (WHERE r.status = {OK:d})")},
       {_not_ahead(f"max(r.end_ns) FILTER (WHERE r.status = {ERROR:d})")}, %(now)s
FROM r WHERE r.job IS NOT NULL
GROUP BY r.job
ON CONFLICT (job) DO UPDATE SET
    last_start_ns = greatest(j.last_start_ns, EXCLUDED.last_start_ns),
    last_success_ns = greatest(j.last_success_ns, EXCLUDED.last_success_ns),
    last_failure_ns = greatest(j.last_failure_ns, EXCLUDED.last_failure_ns),
    last_seen_ns = greatest(j.last_seen_ns, EXCLUDED.last_seen_ns)
"""  # noqa: S608 (constant statements)

_RUN_DAYS = "SELECT trace_id, run_day FROM runs WHERE trace_id = ANY(%s)"
_JOBS_OF_RESOURCES = "SELECT id, job FROM resources WHERE id = ANY(%s)"
_CLAIMED_RUN_DAYS = """
SELECT r.trace_id, r.run_day FROM (SELECT DISTINCT trace_id FROM fold_claim) c
CROSS JOIN LATERAL (SELECT trace_id, run_day FROM runs WHERE runs.trace_id = c.trace_id) r
"""

# Read in the days whose runs have running tasks only (partitions.running_days), planned for its
# values at each run (about 0.3 ms) so that the other days' partitions are pruned while planning:
# through every day, its cached plan locked and probed each partition's index once a second
# (3.6-4.2 ms a run with 365 days).
# The status is a constant, not a parameter: only then can the planner use the partial index
# tasks_live_heartbeat (running and stalled tasks only).
_STALE_CANDIDATES = f"""
SELECT trace_id, span_id FROM tasks
WHERE run_day = ANY(%s::integer[]) AND status = {RUNNING:d} AND heartbeat_ns < %s
ORDER BY heartbeat_ns LIMIT %s
"""  # noqa: S608 (a constant)


class FinishedTask(NamedTuple):
    """``count`` tasks of one job, name and status that reached a final status in a fold."""

    job: str | None
    name: str
    status: int  # OK or ERROR
    duration_s: float  # their durations added up
    root: bool = False  # runs' root tasks: their end is the run's end
    count: int = 1  # type: ignore[assignment]  # shadows tuple.count, which nobody calls
    bucket: int | None = None  # all in this bucket of DURATION_BUCKETS (len: +Inf); None: one task


@dataclass(frozen=True, slots=True)
class FoldResult:
    records: int  # landed records folded
    trace_ids: tuple[bytes, ...] = ()  # the runs whose tree changed
    finished: tuple[FinishedTask, ...] = ()  # tasks that reached a final status in this fold
    set_aside: int = 0  # records moved to span_quarantine instead (fold_batch's set_aside)
    fault: str = ""  # why they were


def fold_batch(
    conn: psycopg.Connection,
    *,
    limit: int,
    stall_after_s: float,
    max_depth: int = DEFAULT_MAX_DEPTH,
    lane: int | None = None,
    timeout_s: float | None = None,
    set_aside: bool = False,
) -> FoldResult:
    """Fold up to ``limit`` landed records in one transaction; return how many were folded.

    ``max_depth``: levels a run's tree may have (``tree.fold``: deeper links are refused).
    ``lane``: claim only that lane's records (0 … LANES-1), if no other folder holds the lane;
    ``None`` claims from every lane.  ``timeout_s``: the fold's statement timeout (default: the
    connection's); a cancelled fold raises ``psycopg.errors.QueryCanceled``, changing nothing.
    ``set_aside``: when the fold fails for a reason the records may cause
    (``quarantine.is_record_fault``), move them to ``span_quarantine`` instead of raising (the
    folder asks for it when one record alone fails).
    """
    partitions.ensure_current(conn)
    with conn.transaction():
        if lane is not None and not scalar(conn, locks.TRY_XACT, locks.lane(lane)):
            return FoldResult(0)  # another folder is on this lane
        conn.execute(_TEMP_TABLES)
        conn.execute(_PLAN_FOR_BATCHES)
        if timeout_s is not None:
            conn.execute(_TIMEOUT, (f"{int(timeout_s * 1000)}ms",))
        claim, params = (
            (_CLAIM_ANY, {"limit": limit})
            if lane is None
            else (_CLAIM_LANE, {"limit": limit, "lane": lane})
        )
        claimed = {bytes(t): n for t, n in conn.execute(claim, params)}
        if not claimed:
            return FoldResult(0)
        trace_ids = list(claimed)
        if lane is None:
            _lock_lanes(conn, trace_ids)
        if not set_aside:
            finished = _fold_claimed(conn, trace_ids, stall_after_s, max_depth)
            return FoldResult(sum(claimed.values()), tuple(trace_ids), finished)
        try:
            with conn.transaction():  # a savepoint: the claim stays, its fold is undone
                finished = _fold_claimed(conn, trace_ids, stall_after_s, max_depth)
        except Exception as exc:
            if not quarantine.is_record_fault(exc):
                raise
            moved = quarantine.set_aside_claimed(conn, exc)
            return FoldResult(0, set_aside=moved, fault=quarantine.describe(exc))
    return FoldResult(sum(claimed.values()), tuple(trace_ids), finished)


def _fold_claimed(
    conn: Connection, trace_ids: list[bytes], stall_after_s: float, max_depth: int
) -> tuple[FinishedTask, ...]:
    """Fold the records of ``fold_claim`` (their lanes locked); returns the tasks finished."""
    days = _run_days(conn, trace_ids, claimed=True)
    cutoff = time.time_ns() - int(stall_after_s * 1e9)
    leaves, by_run = _store_leaves(conn, days, cutoff)
    seeds = {(parent, t) for t, parent in leaves if parent is not None}
    for t, records in by_run.items():
        for r in records:
            seeds.add((r.span_id, t))
            if r.parent_span_id:
                seeds.add((r.parent_span_id, t))
    ruled = {t: days[t] for t in (*by_run, *(t for t, _ in leaves))}
    folds = _fold_runs(conn, by_run, cutoff, ruled, seeds, max_depth, leaves)
    conn.execute(_RUNS_OF_TOP_LEAVES)
    _write(conn, folds, days.values())
    subtree_paths.write(conn, folds, leaves)
    conn.execute(_DELETE_CLAIMED)
    return _finished_tasks(conn, folds, conn.execute(_LEAVES_FINISHED, _NEGATED_BOUNDS).fetchall())


def lanes_with_records(conn: psycopg.Connection) -> set[int]:
    """The lanes that hold landed records now (a fold of the others would find nothing)."""
    return {lane for (lane,) in conn.execute(_LANES_WITH_RECORDS)}


def sweep_stalled(
    conn: psycopg.Connection, *, stall_after_s: float, limit: int = 5000
) -> FoldResult:
    """Mark running tasks whose last heartbeat is older than ``stall_after_s`` as stalled.

    ``records`` of the result is the number of tasks that turned stalled.
    """
    cutoff = time.time_ns() - int(stall_after_s * 1e9)
    with conn.transaction():
        running_days = partitions.running_days(conn)
        if not running_days:
            return FoldResult(0)
        found = conn.execute(
            _STALE_CANDIDATES, (running_days, cutoff, limit), prepare=False
        ).fetchall()
        if not found:
            return FoldResult(0)
        by_run: dict[bytes, list[bytes]] = defaultdict(list)
        for trace_id, span_id in found:
            by_run[bytes(trace_id)].append(bytes(span_id))
        conn.execute(_TEMP_TABLES)
        _lock_lanes(conn, list(by_run))
        days = _run_days(conn, list(by_run))
        seeds = {(bytes(s), bytes(t)) for t, s in found}
        folds = _fold_runs(conn, {}, cutoff, days, seeds)
        flipped = sum(folds[t].mark_stalled(s) for t, spans in by_run.items() for s in spans)
        _write(conn, folds, days.values())
        subtree_paths.write(conn, folds)
    return FoldResult(flipped, tuple(by_run))


# (trace id, parent span id or None) -> counts by status (ok, error, running, stalled), the
# earliest start and the smallest landing id of the leaves stored under that parent
_Leaves = dict[tuple[bytes, bytes | None], tuple[tuple[int, int, int, int], int, int]]


def _store_leaves(
    conn: Connection, days: dict[bytes, int], cutoff_ns: int
) -> tuple[_Leaves, dict[bytes, list[Record]]]:
    """Write the rows of the claimed records that are leaves (see the module docstring); return
    them counted by parent, and the other records by run, in landing order, for the rules."""
    ruled = []
    with conn.cursor(binary=True) as cur:
        by_day = set(days.values())
        for day in by_day:
            traces = [t for t, d in days.items() if d == day] if len(by_day) > 1 else None
            params = {"traces": traces, "day": day, "cutoff": cutoff_ns}
            ruled += cur.execute(partitions.of_day(conn, _STORE_LEAVES, day), params).fetchall()
    leaves = {
        (bytes(trace_id), bytes(parent) if parent else None): ((ok, err, run, stall), start, lid)
        for trace_id, parent, ok, err, run, stall, start, lid in conn.execute(
            _LEAF_GROUPS_UNDER_PARENTS
        )
    }
    return leaves, _records_by_run(ruled)


def _records_by_run(rows: list[tuple[Any, ...]]) -> dict[bytes, list[Record]]:
    by_run: dict[bytes, list[Record]] = defaultdict(list)
    for lid, trace_id, span_id, parent, status, start, end, hb, name, resource_id in rows:
        by_run[bytes(trace_id)].append(
            Record(
                lid,
                bytes(span_id),
                bytes(parent) if parent else None,
                status,
                start,
                end,
                hb,
                name,
                resource_id,
            )
        )
    for records in by_run.values():
        records.sort(key=lambda r: r.landing_id)
    return by_run


def _fold_runs(
    conn: Connection,
    by_run: dict[bytes, list[Record]],
    cutoff_ns: int,
    days: dict[bytes, int],
    seeds: set[tuple[bytes, bytes]],
    max_depth: int = DEFAULT_MAX_DEPTH,
    leaves: _Leaves | None = None,
) -> dict[bytes, RunFold]:
    """Load the (span, trace) ``seeds`` with their ancestors, count the stored ``leaves`` (those
    under a parent), apply the records, for each run of ``days`` (whose locks the caller holds)."""
    loaded = _load_nodes(conn, seeds, days)
    folds = {}
    for trace_id, day in days.items():
        fold = folds[trace_id] = RunFold(loaded.get(trace_id, {}), cutoff_ns, max_depth)
        fold.run_day = day
    for (trace_id, parent), (counts, start, landing_id) in (leaves or {}).items():
        fold = folds[trace_id]
        if not fold.add_stored_leaves(parent, counts, start, landing_id) and parent is not None:
            for span_id, status, hb in conn.execute(_LEAVES_UNDER, (trace_id, parent)):
                fold.add_refused_leaf(bytes(span_id), parent, status, hb)
    for trace_id, fold in folds.items():
        for record in by_run.get(trace_id, ()):
            fold.apply(record)
        if fold.broken_links:
            span_id, parent, reason = fold.broken_links[0]
            logger.warning(
                "run %s: %d parent link(s) refused and those tasks kept at the top,"
                " e.g. task %s naming %s (%s)",
                trace_id.hex(),
                len(fold.broken_links),
                span_id.hex(),
                parent.hex(),
                REFUSED_REASONS[reason],
            )
    return folds


def _finished_tasks(
    conn: Connection, folds: dict[bytes, RunFold], leaf_groups: list[tuple[Any, ...]]
) -> tuple[FinishedTask, ...]:
    """The tasks that reached a final status: one by one by the rules, and the stored leaves in
    groups (rows of ``_LEAVES_FINISHED``)."""
    done = [f for fold in folds.values() for f in fold.finished]
    resource_ids = list(({f.resource_id for f in done} | {g[0] for g in leaf_groups}) - {None})
    jobs = dict(conn.execute(_JOBS_OF_RESOURCES, (resource_ids,)))
    singles = (
        FinishedTask(jobs.get(f.resource_id), f.name, f.status, f.duration_ns / 1e9, f.root)
        for f in done
    )
    groups = (
        FinishedTask(jobs.get(resource_id), name, status, seconds, root, count, bucket)
        for resource_id, name, status, root, seconds, count, bucket in leaf_groups
    )
    return (*singles, *groups)


def _lock_lanes(conn: Connection, trace_ids: Iterable[bytes]) -> None:
    """Take the locks of the runs' lanes, in sorted order so concurrent folders cannot deadlock
    (one statement each: the order of a set-returning statement's calls is not promised)."""
    for number in sorted({locks.lane_of(t) for t in trace_ids}):
        conn.execute(locks.TAKE_XACT, locks.lane(number))


def _run_days(
    conn: Connection, trace_ids: list[bytes], *, claimed: bool = False
) -> dict[bytes, int]:
    """The partition day of each run: kept from its first fold, today for a new run.
    ``claimed``: the runs of ``fold_claim``, found there (no list of ids to send)."""
    known = dict(
        conn.execute(_CLAIMED_RUN_DAYS) if claimed else conn.execute(_RUN_DAYS, (trace_ids,))
    )
    today = partitions.today()
    return {t: known.get(t, today) for t in trace_ids}


def _load_nodes(
    conn: Connection, seeds: set[tuple[bytes, bytes]], days: dict[bytes, int]
) -> dict[bytes, dict[bytes, Node]]:
    if not seeds:  # nothing to load (runs of top-level leaves only)
        return {}
    with fast_binary_dumpers(conn.cursor()).copy(_COPY_SEEDS) as copy:
        copy.set_types(_SEED_TYPES)
        for span_id, trace_id in seeds:
            copy.write_row((span_id, trace_id, days[trace_id]))
    loaded: dict[bytes, dict[bytes, Node]] = defaultdict(dict)
    for day in sorted(set(days.values())):  # a run's tasks all live in its day's partition
        for row in conn.execute(partitions.of_day(conn, _LOAD, day)).fetchall():
            loaded[bytes(row[0])][bytes(row[1])] = _node(row)
    return loaded


def _node(row: tuple[Any, ...]) -> Node:
    (_, span_id, parent, missing, status, end, hb, children, n_ok, n_error, n_running, n_stalled,
     _day, height, refused, reason) = row  # fmt: skip
    return Node(
        bytes(span_id),
        bytes(parent) if parent else None,
        missing,
        status,
        record_rank(status, end, hb),
        hb,
        [n_ok, n_error, n_running, n_stalled],
        children,
        height=height,
        refused_parent=bytes(refused) if refused else None,
        refused_reason=reason,
    )


def _write(conn: Connection, folds: dict[bytes, RunFold], days: Iterable[int]) -> None:
    """Write the folds' changed tasks and the run summaries; ``days``: those of every run of the
    batch (runs of top-level leaves only, which have no fold, included)."""
    days = sorted(set(days))
    with fast_binary_dumpers(conn.cursor()) as cur:
        with cur.copy(_COPY_OUT) as copy:
            copy.set_types(_OUT_TYPES)
            for trace_id, fold in folds.items():
                for n in fold.changed_nodes():
                    copy.write_row(
                        (
                            trace_id,
                            n.span_id,
                            n.landing_id,
                            n.is_new,
                            n.parent_span_id,
                            n.missing,
                            n.status,
                            n.heartbeat_ns,
                            n.child_count,
                            *n.counts,
                            fold.run_day,
                            n.height,
                            n.refused_parent,
                            n.refused_reason,
                        )
                    )
        with cur.copy(_COPY_RUNS) as copy:
            copy.set_types(_RUN_TYPES)
            for trace_id, fold in folds.items():
                d = fold.delta
                copy.write_row(
                    (trace_id, *d.counts, d.tasks, d.min_start_ns, d.any_landing_id, fold.run_day)
                )
        cur.execute(_INSERT_NEW)
        for day in days:
            cur.execute(partitions.of_day(conn, _UPDATE_WITH_PAYLOAD, day))
            cur.execute(partitions.of_day(conn, _UPDATE_STRUCTURE, day))
        for trace_id, fold in folds.items():
            if fold.dropped:
                delete = partitions.of_day(conn, _DELETE_DROPPED, fold.run_day)
                cur.execute(delete, (trace_id, list(fold.dropped)))
        now = time.time_ns()
        for day in days:
            upsert = partitions.of_day(conn, _UPSERT_RUNS_AND_JOBS, day)
            cur.execute(upsert, {"now": now, "day": day})


__all__ = [
    "DURATION_BUCKETS",
    "FinishedTask",
    "FoldResult",
    "fold_batch",
    "lanes_with_records",
    "sweep_stalled",
]
