-- tasktree schema, version 1.
--
-- Spans land in span_landing (append-only, durable when ingest answers 200) and are folded
-- into tasks/runs in large batches by the folder (store/fold.py).  Every tree mutation of a
-- run happens under that run's transaction-level advisory lock, taken in sorted order.
--
-- Status codes (tasks.status, runs.status): 0 none (missing placeholder), 1 running,
-- 2 stalled, 3 ok, 4 error.  Times are Unix nanoseconds.

CREATE TABLE resources (
    id          bigserial PRIMARY KEY,
    digest      bytea NOT NULL UNIQUE,          -- sha256 of the canonical attribute JSON
    job         text,                           -- service.name
    attributes  jsonb NOT NULL
);

CREATE TABLE span_landing (
    id              bigserial PRIMARY KEY,
    received_ns     bigint NOT NULL,
    trace_id        bytea NOT NULL,
    span_id         bytea NOT NULL,
    parent_span_id  bytea,
    name            text NOT NULL,
    kind            smallint NOT NULL,
    start_ns        bigint NOT NULL,
    end_ns          bigint,                     -- NULL for a running snapshot
    heartbeat_ns    bigint,                     -- snapshot time for a running snapshot
    status          smallint NOT NULL,          -- 1 running, 3 ok, 4 error
    status_message  text NOT NULL DEFAULT '',
    resource_id     bigint NOT NULL,
    scope           text NOT NULL DEFAULT '',
    attributes      jsonb NOT NULL,
    events          jsonb NOT NULL,
    links           jsonb NOT NULL,
    truncated       boolean NOT NULL DEFAULT false
);

CREATE TABLE tasks (
    trace_id        bytea NOT NULL,
    span_id         bytea NOT NULL,
    parent_span_id  bytea,
    missing         boolean NOT NULL DEFAULT false,  -- a placeholder for a parent not (yet) received
    name            text,
    kind            smallint,
    status          smallint NOT NULL,
    start_ns        bigint,
    end_ns          bigint,
    heartbeat_ns    bigint,
    status_message  text,
    resource_id     bigint,
    scope           text,
    attributes      jsonb,
    events          jsonb,
    links           jsonb,
    truncated       boolean NOT NULL DEFAULT false,
    received_ns     bigint,
    child_count     integer NOT NULL DEFAULT 0,
    n_ok            integer NOT NULL DEFAULT 0,     -- rollup: descendants by status
    n_error         integer NOT NULL DEFAULT 0,
    n_running       integer NOT NULL DEFAULT 0,
    n_stalled       integer NOT NULL DEFAULT 0,
    -- span_id first: the key also serves id and id-prefix search across runs
    PRIMARY KEY (span_id, trace_id)
) WITH (fillfactor = 80);  -- room on each page for HOT updates of rollup counts

-- children of a node (and roots: parent_span_id IS NULL), in display order
CREATE INDEX tasks_children ON tasks (trace_id, parent_span_id, start_ns, span_id);
-- time-range search, newest first
CREATE INDEX tasks_start ON tasks (start_ns DESC, trace_id, span_id);
-- live tasks only (running, stalled): the stall sweeper by heartbeat age, and the live gauges
CREATE INDEX tasks_live_heartbeat ON tasks (heartbeat_ns) WHERE status IN (1, 2);

-- keyword search over name, status message and attributes (keys and values)
CREATE FUNCTION task_search_document(name text, message text, attributes jsonb)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector('simple'::regconfig,
                   left(coalesce(name, '') || ' ' || coalesce(message, '') || ' '
                        || coalesce(attributes::text, ''), 100000));

CREATE INDEX tasks_search ON tasks
    USING gin (task_search_document(name, status_message, attributes));

CREATE TABLE runs (
    trace_id            bytea PRIMARY KEY,
    job                 text,
    name                text,
    status              smallint NOT NULL DEFAULT 1,
    start_ns            bigint,
    end_ns              bigint,
    n_ok                integer NOT NULL DEFAULT 0,  -- over all tasks of the run
    n_error             integer NOT NULL DEFAULT 0,
    n_running           integer NOT NULL DEFAULT 0,
    n_stalled           integer NOT NULL DEFAULT 0,
    task_count          integer NOT NULL DEFAULT 0,
    root_count          integer NOT NULL DEFAULT 0,
    dropped_spans       bigint NOT NULL DEFAULT 0,   -- refused over the per-run cap
    last_received_ns    bigint
);

CREATE INDEX runs_start ON runs (start_ns DESC, trace_id DESC);
CREATE INDEX runs_job_start ON runs (job, start_ns DESC, trace_id DESC);
CREATE INDEX runs_status_start ON runs (status, start_ns DESC, trace_id DESC);

-- Per job timestamps for alerting ("never ran", "stopped succeeding", "went quiet").
CREATE TABLE jobs (
    job              text PRIMARY KEY,
    last_start_ns    bigint,
    last_success_ns  bigint,
    last_failure_ns  bigint,
    last_seen_ns     bigint   -- the last time any record of the job was folded
);
