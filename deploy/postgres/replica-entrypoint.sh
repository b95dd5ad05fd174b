#!/bin/sh
# The replica of docker-compose.cluster.yml: clone the primary once, then run as its hot
# standby (pg_basebackup -R writes standby.signal and the connection to the primary).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h db-primary -U "$POSTGRES_USER" -d "$POSTGRES_DB"; do sleep 1; done
  export PGPASSWORD="$POSTGRES_PASSWORD"
  pg_basebackup -h db-primary -U "$POSTGRES_USER" -D "$PGDATA" -R -X stream -c fast
  chmod 700 "$PGDATA"
fi
exec postgres -c hot_standby=on
