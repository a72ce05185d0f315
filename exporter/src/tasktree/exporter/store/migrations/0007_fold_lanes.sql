-- tasktree schema, version 7: fold lanes.
--
-- Landed records are split into 8 lanes by the first byte of their trace id (so a run's records
-- are all in one lane).  A folder takes a lane with a try-lock and claims only its records, so
-- several folders (``--workers``) fold different runs side by side instead of waiting on each
-- other's run locks.
CREATE INDEX span_landing_lane ON span_landing ((get_byte(trace_id, 0) % 8), id);
