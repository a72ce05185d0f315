-- tasktree schema, version 2: what the JSON API's search needs beyond version 1.
--
-- task_search_query(words) turns a search box's text into a prefix tsquery that is safe for
-- any input: the words are split and normalised by the same parser and configuration as
-- task_search_document (so "disk_full" or "foo-bar" match the document's own lexemes), then
-- each lexeme is quoted and escaped before the cast.  No lexemes (punctuation only): NULL, which
-- matches nothing.  It is IMMUTABLE so that, called on a bound parameter, the planner folds it
-- into a constant and estimates the match with the GIN index's statistics.
CREATE FUNCTION task_search_query(words text)
RETURNS tsquery LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''':*', ' & '
                      ORDER BY lexeme)::tsquery
    FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, words))) AS lexeme
);

-- Search filtered by job ("tasks of job X, newest first") reads the job's resource ids first;
-- resources grows by one row per job process (a resource carries process.pid), so without this
-- index that lookup is a sequential scan of every resource ever seen.
CREATE INDEX resources_job ON resources (job, id);
