#!/bin/sh
# Run once by the postgres image on a new data volume (docker-entrypoint-initdb.d): a read-only
# role for Grafana's PostgreSQL datasource, with SELECT on every table tasktree creates.
# The password and names reach psql as variables (:'var' quotes a literal, :"var" an identifier),
# never pasted into the SQL: the heredoc is quoted, so the shell expands nothing in it.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=reader_password="$GRAFANA_DB_PASSWORD" \
  --set=db="$POSTGRES_DB" \
  --set=owner="$POSTGRES_USER" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"db" TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '30s';
SQL
