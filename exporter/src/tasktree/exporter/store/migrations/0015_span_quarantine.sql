-- tasktree schema, version 15: records set aside because folding them failed.
--
-- A landed record that PostgreSQL refuses to fold (a constraint or trigger a site added, a limit
-- of PostgreSQL's) or that tasktree's own rules fail on failed its whole batch, and every batch
-- after it, so its lane stopped for good.  The folder now retries a failing batch in halves down
-- to one record, and moves a record that fails alone here (background.py, fold.py), with why.
-- `tasktree quarantine` lists them, and `--requeue` lands them again once the cause is fixed.
-- The gauge tasktree_quarantined_spans counts them (alert TasktreeSpansQuarantined).
CREATE TABLE span_quarantine (
    landing_id      bigint PRIMARY KEY,         -- its id in span_landing
    quarantined_ns  bigint NOT NULL,
    error           text NOT NULL,              -- why its fold failed (PostgreSQL's message)
    received_ns     bigint NOT NULL,
    trace_id        bytea NOT NULL,
    span_id         bytea NOT NULL,
    parent_span_id  bytea,
    name            text NOT NULL,
    kind            smallint NOT NULL,
    start_ns        bigint NOT NULL,
    end_ns          bigint,
    heartbeat_ns    bigint,
    status          smallint NOT NULL,
    status_message  text NOT NULL,
    resource_id     bigint NOT NULL,
    scope           text NOT NULL,
    attributes      jsonb NOT NULL,
    events          jsonb NOT NULL,
    links           jsonb NOT NULL,
    truncated       boolean NOT NULL,
    search_words    text
);
