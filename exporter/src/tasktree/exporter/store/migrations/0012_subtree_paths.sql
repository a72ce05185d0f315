-- tasktree schema, version 12: a subtree's failures (and running or stalled tasks) by index.
--
-- "The tasks of this subtree that failed" must be read from an index, not by walking the subtree
-- (a node may have a million descendants and ten failures).  Each task row gets its path: the
-- run's trace id, then the span ids from its top-level task down to itself.  A GIN index over the
-- paths of the tasks in those statuses only answers "every task whose path holds X" for any X;
-- filtered by status and sorted by start, that is X's subtree list.
--
-- Why only those statuses (running 1, stalled 2, error 4: tree.status.FLAGGED): most tasks end
-- ok, and an ok task never changes again, so it costs the index nothing and its path need not be
-- kept right.  The fold (store/subtree_paths.py) keeps the path right for every row in those
-- statuses: written from the ancestor chain it loads anyway, and rewritten, for those rows only,
-- under a task that moved (a missing parent's placeholder that got its parent).  Rows in other
-- statuses may hold an old path or none; nothing reads it.
--
-- Why not a materialised path for every task in a btree: paths grow with depth (up to
-- TASKTREE_MAX_DEPTH levels, past a btree entry's size limit), and keeping every row's path right
-- would rewrite whole subtrees whenever a placeholder's parent arrives, which is the usual order
-- for SDKs that send children first.
ALTER TABLE tasks ADD COLUMN path bytea[];

CREATE INDEX tasks_flagged_path ON tasks USING gin (path) WHERE status IN (1, 2, 4);

-- The tasks already stored in those statuses get their paths, walked up from each.
WITH RECURSIVE up AS (
    SELECT t.trace_id, t.span_id, t.run_day, t.parent_span_id AS next, ARRAY[t.span_id] AS path,
           1 AS depth
    FROM tasks t WHERE t.status IN (1, 2, 4)
    UNION ALL
    SELECT u.trace_id, u.span_id, u.run_day, p.parent_span_id, p.span_id || u.path, u.depth + 1
    FROM up u JOIN tasks p
         ON p.span_id = u.next AND p.trace_id = u.trace_id AND p.run_day = u.run_day
    WHERE u.depth < 10000
)
UPDATE tasks t SET path = t.trace_id || u.path
FROM up u
WHERE u.next IS NULL
  AND t.span_id = u.span_id AND t.trace_id = u.trace_id AND t.run_day = u.run_day;
