-- tasktree schema, version 5: tasks partitioned by day, for retention without long DELETEs.
--
-- Every run has a day (runs.run_day: Unix days of the moment it was first received), and all its
-- tasks live in that day's partition of tasks (tasks_dNNNNN), so dropping a partition removes
-- whole runs: a run is never cut in half.  The service creates partitions ahead of time
-- (tasktree_ensure_day_partition) and drops expired ones (store/retention.py).  A default
-- partition catches rows of a day that has no partition yet, so no write ever fails for lack of one.

ALTER TABLE runs ADD COLUMN run_day integer;
UPDATE runs SET run_day = coalesce(last_received_ns, 0) / 86400000000000;
ALTER TABLE runs
    ALTER COLUMN run_day SET NOT NULL,
    ALTER COLUMN run_day SET DEFAULT (extract(epoch FROM now()) / 86400)::integer;
CREATE INDEX runs_day ON runs (run_day);

ALTER TABLE tasks RENAME TO tasks_v4;
ALTER INDEX tasks_pkey RENAME TO tasks_v4_pkey;
ALTER INDEX tasks_children RENAME TO tasks_v4_children;
ALTER INDEX tasks_start RENAME TO tasks_v4_start;
ALTER INDEX tasks_live_heartbeat RENAME TO tasks_v4_live_heartbeat;
ALTER INDEX tasks_search RENAME TO tasks_v4_search;
ALTER INDEX tasks_missing RENAME TO tasks_v4_missing;

CREATE TABLE tasks (
    LIKE tasks_v4 INCLUDING DEFAULTS,
    run_day integer NOT NULL DEFAULT (extract(epoch FROM now()) / 86400)::integer,
    PRIMARY KEY (span_id, trace_id, run_day)
) PARTITION BY RANGE (run_day);

CREATE TABLE tasks_default PARTITION OF tasks DEFAULT WITH (fillfactor = 80);

CREATE INDEX tasks_children ON tasks (trace_id, parent_span_id, start_ns, span_id);
CREATE INDEX tasks_start ON tasks (start_ns DESC, trace_id, span_id);
CREATE INDEX tasks_live_heartbeat ON tasks (heartbeat_ns) WHERE status IN (1, 2);
CREATE INDEX tasks_search ON tasks USING gin (task_search_document(name, status_message, attributes));
CREATE INDEX tasks_missing ON tasks (trace_id) WHERE missing;

-- Create the partition of one day (if it does not exist yet).  Serialised by an advisory lock so
-- that several processes can call it at once.  Returns false when rows of that day already sit
-- in the default partition (they stay there; retention deletes them with their runs).
CREATE FUNCTION tasktree_ensure_day_partition(day integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('tasks_d%s', day);
BEGIN
    PERFORM pg_advisory_xact_lock(1952543595, 5);  -- "task", migration 5
    IF to_regclass(part) IS NOT NULL THEN
        RETURN true;
    END IF;
    IF EXISTS (SELECT 1 FROM tasks_default WHERE run_day = day) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF tasks FOR VALUES FROM (%s) TO (%s)'
                   ' WITH (fillfactor = 80)', part, day, day + 1);
    RETURN true;
END
$$;

SELECT tasktree_ensure_day_partition(day)
FROM (SELECT DISTINCT run_day AS day FROM runs
      UNION SELECT (extract(epoch FROM now()) / 86400)::integer) AS days;

INSERT INTO tasks SELECT t.*, coalesce(r.run_day, (extract(epoch FROM now()) / 86400)::integer)
FROM tasks_v4 t LEFT JOIN runs r ON r.trace_id = t.trace_id;
DROP TABLE tasks_v4;
