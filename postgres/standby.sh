#!/bin/sh
# The hot standby of docker-compose.yml's `standby` profile.  On a new volume: a copy of the
# primary (pg_basebackup -R: it streams from the primary from then on, under the application
# name that POSTGRES_SYNCHRONOUS_STANDBY_NAMES names); then PostgreSQL serving reads.
# Promote it when the primary is lost:
#   docker compose exec -u postgres postgres-standby pg_ctl promote -D /var/lib/postgresql/data
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h postgres -U "$POSTGRES_USER"; do sleep 1; done
  PGPASSWORD="$POSTGRES_PASSWORD" pg_basebackup -h postgres -U "$POSTGRES_USER" -D "$PGDATA" \
    -R -X stream -c fast -d "application_name=tasktree_standby"
  chmod 0700 "$PGDATA"
fi
exec postgres
