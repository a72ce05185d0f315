-- tasktree schema, version 14: the tasks a run's cap refused, each counted once.
--
-- runs.dropped_spans counted refused records: a client's resend of a refused request, and every
-- later record of a refused task (snapshots, heartbeats, its final record), counted again, so the
-- number grew with the heartbeats instead of with the tasks lost (design.md §3 rules 1 and 7).
-- Each refused task is kept here once; dropped_spans grows by the tasks new to this table
-- (ingest.py, _COUNT_DROPPED).  Rows go with their run (store/partitions.py, retention).
CREATE TABLE refused_over_cap (
    trace_id bytea NOT NULL,
    span_id bytea NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
