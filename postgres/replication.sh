#!/bin/sh
# Run once by the postgres image on a new data volume (docker-entrypoint-initdb.d): lets the
# standby of the `standby` profile (postgres/standby.sh) stream from this server as the
# database owner, with its password (scram-sha-256).  Without that profile nothing connects so.
set -eu
echo "host replication $POSTGRES_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"
