-- tasktree schema, version 10: landed records found by their span.
--
-- At the per-run cap (TASKTREE_MAX_SPANS_PER_RUN) ingest still accepts records of the tasks a
-- run keeps: tasks already in the tree (found by tasks' primary key) and tasks whose records have
-- landed but are not folded yet, found here.  Without this index that check would read the whole
-- unfolded backlog for every batch of a run at its cap.  It costs landing about 1-3 µs of
-- PostgreSQL CPU a span.
CREATE INDEX span_landing_span ON span_landing (trace_id, span_id);
