-- tasktree schema, version 2: what the JSON API's search box needs beyond version 1.
--
-- search_query(words) turns a search box's text into a prefix tsquery that is safe for any
-- input: the words are split and normalised by the same parser and configuration as the search
-- documents (so "disk_full" or "db-3" become the same lexemes as in the document), then each
-- lexeme is quoted, escaped and marked as a prefix before the cast; the lexemes are ANDed.  No
-- lexemes (punctuation only): NULL, which matches nothing.  IMMUTABLE, so that called on a bound
-- parameter the planner folds it into a constant and estimates the match from the GIN index.
CREATE FUNCTION search_query(words text)
RETURNS tsquery LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''':*', ' & '
                      ORDER BY lexeme)::tsquery
    FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, words))) AS lexeme
);

-- The runs list's search box matches words of the job and run name.  A substring match (ILIKE)
-- has no index without the pg_trgm extension, which not every server lets tasktree create; it
-- read every run whenever few matched (56 ms for 50,000 runs on the development machine).
CREATE FUNCTION run_search_document(job text, name text)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector('simple'::regconfig, coalesce(job, '') || ' ' || coalesce(name, ''));

CREATE INDEX runs_search ON runs USING gin (run_search_document(job, name));

-- Search filtered by job reads the job's resource ids; resources grows by one row per job
-- process (a resource carries process.pid), so without this index that is a sequential scan of
-- every resource ever seen.
CREATE INDEX resources_job ON resources (job, id);
