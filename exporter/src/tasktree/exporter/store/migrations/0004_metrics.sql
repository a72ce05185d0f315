-- Metrics kept in PostgreSQL (issue 5, tasktree.exporter.metrics).
--
-- Each fold adds what it finished here, after its commit, so that every `tasktree serve` process
-- (and every folder-only worker) counts into the same totals: /metrics on any process shows the
-- same values, which survive restarts.  Rows are bounded: per job at most
-- TASKTREE_METRICS_TASK_NAMES task names, the rest are counted under the name '__other__'.

CREATE TABLE metric_totals (
    job           text NOT NULL,              -- service.name ('' when the job sent none)
    run           boolean NOT NULL,           -- true: runs (root tasks) of the job; false: tasks by name
    name          text NOT NULL,              -- the task name, '__other__', or '' for runs
    status        smallint NOT NULL,          -- 3 ok, 4 error
    finished      bigint NOT NULL,
    duration_sum  double precision NOT NULL,  -- seconds
    buckets       bigint[] NOT NULL,          -- per bucket of metrics.DURATION_BUCKETS, then +Inf; not cumulative
    PRIMARY KEY (job, run, name, status)
);

-- Missing-parent placeholders, for the tasktree_tasks_missing_parent gauge without a scan of tasks.
-- (Placeholders are few and short-lived: the index stays tiny.)
CREATE INDEX tasks_missing ON tasks (trace_id) WHERE missing;
