-- tasktree schema, version 8: the keyword-search document is a stored column, made from words
-- found when a span is received.
--
-- Until version 7 the search index was an expression index whose document PostgreSQL's
-- text-search parser made from name, status message and attributes, inside the fold: about 10 µs
-- a span, most of the fold's cost, on the path that one run's records all go through one after
-- another.  Now the receiver finds the words (tasktree/exporter/search.py, under 1 µs in the
-- request), span_landing carries them, and the fold stores them as a tsvector, parsing nothing.
ALTER TABLE span_landing ADD COLUMN search_words text;
ALTER TABLE tasks ADD COLUMN search tsvector;

-- The stored tasks get the same words (placeholders have none and match no search).
UPDATE tasks SET search = (
    SELECT array_to_tsvector(coalesce(array_agg(DISTINCT left(w, 100)), '{}'))
    FROM regexp_split_to_table(
        lower(left(coalesce(name, '') || ' ' || coalesce(status_message, '') || ' '
                   || coalesce(attributes::text, ''), 100000)),
        '[^[:alnum:]]+') AS w
    WHERE w <> ''
) WHERE NOT missing;
DROP INDEX tasks_search;
CREATE INDEX tasks_search ON tasks USING gin (search);
DROP FUNCTION task_search_document(text, text, jsonb);
