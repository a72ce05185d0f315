-- tasktree schema, version 3: the audit log of docker actions (issue 6).
--
-- One row per action (pull, deploy, start, stop, restart, remove, logs): who (the token's name,
-- never the token), what (the request with environment values removed: only their names are kept),
-- on which hosts, when it started and finished, and the outcome per host.  A long action is
-- inserted when it starts (status 'running') and updated once when it ends, so a crash leaves a
-- visible 'running' row rather than nothing.
CREATE TABLE docker_audit (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    actor        text NOT NULL,
    role         text NOT NULL,
    action       text NOT NULL,
    hosts        text[] NOT NULL,
    target       text,
    request      jsonb NOT NULL DEFAULT '{}',
    dry_run      boolean NOT NULL DEFAULT false,
    status       text NOT NULL,
    result       jsonb,
    operation_id text,
    trace_id     text
);

-- The UI and API list the newest first and page by id (the primary key's index); a host's
-- history ("what was done on build-1") uses this one.
CREATE INDEX docker_audit_hosts ON docker_audit USING gin (hosts);
