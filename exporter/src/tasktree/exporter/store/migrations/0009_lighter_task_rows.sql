-- tasktree schema, version 9: less work per span on the fold, the one path a run's records all
-- go through one after another (bench/ingest.py).
--
-- The search document is made where a span lands: a stored generated column of span_landing,
-- computed by the request that lands it, side by side with other requests, so the fold only
-- copies it (it was about 1.5 µs of the fold's time a span).
ALTER TABLE span_landing ADD COLUMN search tsvector GENERATED ALWAYS AS
    (array_to_tsvector(array_remove(string_to_array(search_words, ' '), ''))) STORED;

-- The time index holds the start alone: the trace and span ids behind it made each entry three
-- times as wide and cost a new task about 1 µs more.  Searches newest first still walk it in
-- order, sorting only the tasks that start in the same nanosecond (incremental sort).
DROP INDEX tasks_start;
CREATE INDEX tasks_start ON tasks (start_ns DESC);
