-- tasktree schema, version 11: a run's day is the day it was first received, floored.
--
-- The column defaults of version 5 cast a numeric to integer, which rounds: a row given its day
-- by the default after 12:00 UTC was filed under the next day (the fold sets run_day itself, so
-- only rows written by hand or by other tools met it).  The backfill of version 5 floored.
ALTER TABLE runs ALTER COLUMN run_day SET DEFAULT floor(extract(epoch FROM now()) / 86400)::integer;
ALTER TABLE tasks ALTER COLUMN run_day SET DEFAULT floor(extract(epoch FROM now()) / 86400)::integer;
