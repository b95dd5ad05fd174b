#!/bin/sh
# The user list from the environment, then PgBouncer in the foreground.
set -eu
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" > /tmp/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
