-- tasktree read queries, behind the JSON API.
--
-- store/queries.py loads this file once and runs each block by name.  Every value is a bound
-- %(param)s.  Blocks with {slots} are templates: queries.py fills {run_columns}/{node_columns}
-- with the blocks of those names and {where} with a conjunction of the filter blocks below it
-- ("AND ..." lines) chosen by which request parameters are present, so each combination is a
-- plain static statement with its own plan (no "param IS NULL OR ..." that defeats indexes).
-- Literal braces would need doubling; there are none.
--
-- Keyset pagination everywhere: a page is the rows strictly after the last key of the previous
-- page in the route's order, read from the index that provides that order; queries.py asks for
-- one row more than the page to know whether there is a next page.
--
-- Times are Unix nanoseconds; ids are bytea (trace 16 bytes, span 8 bytes).  Id prefixes are
-- bounds on those fixed-length keys: "abc" is BETWEEN '\xabc000..' AND '\xabcfff..'.
-- Only missing-parent placeholders have no start time; they are roots (parent NULL) and sort
-- where the indexes put NULLs: first newest-first (DESC), last in start order (ASC).


-- name: run_columns
r.trace_id, r.job, r.name, r.status, r.start_ns, r.end_ns,
r.n_ok, r.n_error, r.n_running, r.n_stalled, r.task_count, r.root_count, r.dropped_spans, r.run_day

-- name: node_columns
-- status_head: the start of the status message, one character more than a node shows
-- ({message_head}), so that a page of nodes never carries a whole stack trace.
t.trace_id, t.span_id, t.parent_span_id, t.missing, t.name, t.status, t.start_ns, t.end_ns,
t.child_count, t.n_ok, t.n_error, t.n_running, t.n_stalled, t.heartbeat_ns,
t.refused_parent_span_id, t.refused_reason, left(t.status_message, {message_head}) AS status_head


-- ---------------------------------------------------------------------------------------------
-- Runs list, newest first: index runs_start, or runs_job_start / runs_status_start when
-- filtered; an exact trace id is a primary-key lookup.

-- name: list_runs
SELECT {run_columns}
FROM runs r
WHERE true {where}
ORDER BY r.start_ns DESC, r.trace_id DESC
LIMIT %(limit)s

-- name: runs.job
AND r.job = %(job)s

-- name: runs.status
AND r.status = %(status)s

-- name: runs.from
AND r.start_ns >= %(from_ns)s

-- name: runs.to
AND r.start_ns < %(to_ns)s

-- name: runs.trace_id
AND r.trace_id = %(trace_lo)s

-- name: runs.trace_prefix
AND r.trace_id BETWEEN %(trace_lo)s AND %(trace_hi)s

-- name: runs.words
-- Words of the job or run name, each as a prefix (GIN index runs_search when few runs match,
-- else a filter on the newest-first walk, which stops once the page is full).
AND run_search_document(r.job, r.name) @@ search_query(punctuation_to_spaces(%(words)s))

-- name: runs.after
-- A row comparison is an index condition on (start_ns DESC, trace_id DESC); runs without a
-- start (NULL sorts first) compare as NULL, i.e. are excluded: they all came before.
AND (r.start_ns, r.trace_id) < (%(after_start)s, %(after_trace)s)

-- name: runs.after_unstarted
-- The previous page ended among runs without a start: the rest of those, then every started run.
AND (r.start_ns IS NOT NULL OR r.trace_id < %(after_trace)s)


-- ---------------------------------------------------------------------------------------------
-- The tasks of one run are read in its day's partition: every block below that reads a run's
-- tasks names %(run_day)s, its runs.run_day (block day_of_run), so the planner prunes the other
-- days' partitions.  Without it each read planned and probed every day's partition: with a year of
-- days kept (365 partitions) one run page took 75 ms instead of 3.

-- name: day_of_run
SELECT r.run_day
FROM runs r
WHERE r.trace_id = %(trace_id)s

-- One run: its row (primary key) and a page of its top-level tasks (index tasks_children, parent
-- NULL): the real root(s), then missing-parent placeholders (no start time, so last).  The ORDER BY
-- spells out the whole index key: the planner does not treat "IS NULL" as a constant, so with
-- "ORDER BY start_ns, span_id" it misjudged the sort and walked tasks_start over every task
-- instead (300 ms on a run of 1,000,000 tasks; 0.05 ms this way).

-- name: get_run
SELECT {run_columns}
FROM runs r
WHERE r.trace_id = %(trace_id)s

-- name: run_roots
SELECT {node_columns}
FROM tasks t
WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.parent_span_id IS NULL {where}
ORDER BY t.trace_id, t.parent_span_id, t.start_ns, t.span_id
LIMIT %(limit)s

-- name: roots.after_unstarted
-- The previous page ended among placeholders (no start, last in this order): the rest of those.
AND t.start_ns IS NULL AND t.span_id > %(after_span)s

-- name: run_roots_after
-- The previous page ended among tasks with a start: the rest of those, then every placeholder.
-- Two walks of tasks_children, each an index range; one OR filter would walk from the first
-- top-level task at every page.
SELECT found.* FROM (
    (SELECT {node_columns}
     FROM tasks t
     WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.parent_span_id IS NULL
       AND (t.start_ns, t.span_id) > (%(after_start)s, %(after_span)s)
     ORDER BY t.trace_id, t.parent_span_id, t.start_ns, t.span_id
     LIMIT %(limit)s)
    UNION ALL
    (SELECT {node_columns}
     FROM tasks t
     WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.parent_span_id IS NULL
       AND t.start_ns IS NULL
     ORDER BY t.trace_id, t.parent_span_id, t.start_ns, t.span_id
     LIMIT %(limit)s)
) AS found
ORDER BY found.start_ns NULLS LAST, found.span_id
LIMIT %(limit)s


-- ---------------------------------------------------------------------------------------------
-- One task and its children.

-- name: get_task
SELECT {node_columns}, t.kind, t.scope, t.status_message, t.attributes, t.events, t.links,
       t.truncated, t.heartbeat_ns, rs.job, rs.attributes AS resource
FROM tasks t
LEFT JOIN resources rs ON rs.id = t.resource_id
WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.span_id = %(span_id)s

-- name: task_exists
SELECT true AS found
FROM tasks t
WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.span_id = %(span_id)s

-- name: children
-- Index tasks_children in its own order.  Children always have a start time (only placeholders
-- lack one, and placeholders have no parent), so the row comparison sees no NULLs.
SELECT {node_columns}
FROM tasks t
WHERE t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s AND t.parent_span_id = %(span_id)s
  {where}
ORDER BY t.start_ns, t.span_id
LIMIT %(limit)s

-- name: children.after
AND (t.start_ns, t.span_id) > (%(after_start)s, %(after_span)s)


-- ---------------------------------------------------------------------------------------------
-- A subtree's tasks in one status (running, stalled or error: tree.status.FLAGGED), newest first
-- (or oldest first: the run page's "first failure" / "next failure").  The GIN index
-- tasks_flagged_path (migration 0012) finds every task whose path holds %(top)s: a task's span
-- id for its subtree (itself included), the trace id for the whole run; {flagged} repeats the
-- index predicate so the planner may use it.  The cost follows the tasks listed, never the
-- subtree's size: no walk down the tree.

-- name: subtree_tasks
SELECT {node_columns}
FROM tasks t
WHERE t.path @> ARRAY[%(top)s]::bytea[] AND t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s
  AND t.status IN {flagged} AND t.status = %(status)s {where}
ORDER BY t.start_ns DESC, t.span_id DESC
LIMIT %(limit)s

-- name: subtree_tasks_oldest_first
SELECT {node_columns}
FROM tasks t
WHERE t.path @> ARRAY[%(top)s]::bytea[] AND t.run_day = %(run_day)s AND t.trace_id = %(trace_id)s
  AND t.status IN {flagged} AND t.status = %(status)s {where}
ORDER BY t.start_ns, t.span_id
LIMIT %(limit)s

-- name: subtree.after
AND (t.start_ns, t.span_id) < (%(after_start)s, %(after_span)s)

-- name: subtree_oldest.after
AND (t.start_ns, t.span_id) > (%(after_start)s, %(after_span)s)


-- ---------------------------------------------------------------------------------------------
-- Task search, newest first (start_ns DESC, then trace id and span id ascending: index
-- tasks_start walked in order, the few tasks of one nanosecond sorted).  Three sources, each on
-- its own index:
--   search_by_text   no q (index tasks_start) or keywords (GIN index tasks_search);
--   search_by_span   span id prefix (index tasks_span_id);
--   search_by_trace  trace id prefix: the top-level tasks of the matching runs (runs primary
--                    key, then tasks_children), so a trace id leads into its run rather than
--                    listing every one of its tasks.
-- A hex q of up to 16 digits could be either id: search_merge unions the two, each branch
-- already ordered and cut to the page size.

-- name: search_by_text
SELECT {node_columns}, rs.job
FROM tasks t
LEFT JOIN resources rs ON rs.id = t.resource_id
WHERE true {where}
ORDER BY t.start_ns DESC, t.trace_id, t.span_id
LIMIT %(limit)s

-- name: search_by_span
SELECT {node_columns}, rs.job
FROM tasks t
LEFT JOIN resources rs ON rs.id = t.resource_id
WHERE t.span_id BETWEEN %(span_lo)s AND %(span_hi)s {where}
ORDER BY t.start_ns DESC, t.trace_id, t.span_id
LIMIT %(limit)s

-- name: search_by_trace
SELECT {node_columns}, rs.job
FROM runs r
JOIN tasks t ON t.trace_id = r.trace_id AND t.parent_span_id IS NULL
LEFT JOIN resources rs ON rs.id = t.resource_id
WHERE r.trace_id BETWEEN %(trace_lo)s AND %(trace_hi)s {where}
ORDER BY t.start_ns DESC, t.trace_id, t.span_id
LIMIT %(limit)s

-- name: search_merge
-- UNION, not UNION ALL: a root task can match by both its span id and its trace id.
SELECT found.*
FROM (({by_span}) UNION ({by_trace})) AS found
ORDER BY found.start_ns DESC, found.trace_id, found.span_id
LIMIT %(limit)s

-- name: search.words
AND t.search @@ %(words)s::tsquery

-- name: search.recorded
-- The task list without a search: no missing-parent placeholders, which have no start time and
-- would stand above every task, newest or not (a trace id search still finds them).
AND NOT t.missing

-- name: search.job
-- Through the job's resource ids (index resources_job), so the tasks walk needs no join per row.
AND t.resource_id IN (SELECT rj.id FROM resources rj WHERE rj.job = %(job)s)

-- name: search.status
AND t.status = %(status)s

-- name: search.from
AND t.start_ns >= %(from_ns)s

-- name: search.to
AND t.start_ns < %(to_ns)s

-- name: search.after
-- The index order mixes DESC and ASC, which one row comparison cannot express; the redundant
-- "start_ns <= after" is the index condition that starts the walk at the cursor, and the rest
-- only filters the rows that tie on start time.
AND t.start_ns <= %(after_start)s
AND (t.start_ns < %(after_start)s OR (t.trace_id, t.span_id) > (%(after_trace)s, %(after_span)s))

-- name: search.after_unstarted
-- The previous page ended among placeholders (no start, sorted first): the rest of those, then
-- every task with a start.
AND (t.start_ns IS NOT NULL OR (t.trace_id, t.span_id) > (%(after_trace)s, %(after_span)s))

-- ---------------------------------------------------------------------------------------------
-- Jobs (one row per job ever folded; few next to runs, so these read the whole table).

-- name: recent_jobs
-- The runs page's job input offers these: the most recently heard from first.
SELECT j.job
FROM jobs j
ORDER BY j.last_seen_ns DESC NULLS LAST, j.job
LIMIT %(limit)s

-- name: similar_jobs
-- For a job filter that names no job: the job itself (exact), else those whose name contains
-- it ignoring case, the same name in another case first.
SELECT j.job
FROM jobs j
WHERE j.job = %(job)s OR strpos(lower(j.job), lower(%(job)s)) > 0
ORDER BY j.job = %(job)s DESC, lower(j.job) = lower(%(job)s) DESC, j.last_seen_ns DESC NULLS LAST
LIMIT %(limit)s
