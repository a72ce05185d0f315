-- tasktree schema, version 16: the runs list's search box splits words as task search does.
--
-- run_search_document used PostgreSQL's text-search parser, which keeps "etl.nightly" or
-- "report/generate" whole, as a host or file name: "nightly" found no run of job "etl.nightly",
-- while task search (search.py) splits at every ASCII punctuation character.  Runs' words are
-- now split the same way: punctuation_to_spaces turns ASCII punctuation and control characters
-- (search.py's _ASCII_SEPARATORS; a test holds the two to one rule) into spaces before the
-- parser reads the text, and the runs list's query goes through it too (queries.sql,
-- runs.words).
CREATE FUNCTION punctuation_to_spaces(words text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN translate(words, E'\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x20\x21\x22\x23\x24\x25\x26\x27\x28\x29\x2a\x2b\x2c\x2d\x2e\x2f\x3a\x3b\x3c\x3d\x3e\x3f\x40\x5b\x5c\x5d\x5e\x5f\x60\x7b\x7c\x7d\x7e\x7f', repeat(' ', 65));

DROP INDEX runs_search;

CREATE OR REPLACE FUNCTION run_search_document(job text, name text)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector('simple'::regconfig,
                   punctuation_to_spaces(coalesce(job, '') || ' ' || coalesce(name, '')));

CREATE INDEX runs_search ON runs USING gin (run_search_document(job, name));
