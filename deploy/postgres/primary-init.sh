#!/bin/sh
# Run once by the postgres image's entrypoint on a new primary: let the replica stream.
set -eu
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
