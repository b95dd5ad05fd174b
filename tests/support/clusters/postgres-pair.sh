#!/bin/sh
# postgres-pair.sh start|stop|wipe|status|promote - a PostgreSQL primary and streaming replica, no Docker.
# primary 127.0.0.1:5433 (data $BASE/primary), hot standby 127.0.0.1:5434 ($BASE/replica), trust auth.
set -eu
BASE=${PG_BASE:-${TMPDIR:-/tmp}/krolik-cluster/pg}; P1=${PG_PRIMARY_PORT:-5433}; P2=${PG_REPLICA_PORT:-5434}
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }  # initdb refuses root
running() { as_pg "$BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }
sql() { as_pg "$BIN/psql" -X -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc "$2"; }
start() {
  mkdir -p "$BASE"; [ "$(id -u)" = 0 ] && chown postgres: "$BASE"
  if [ ! -f "$BASE/primary/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$BASE/primary" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$BASE/initdb.log"
    as_pg sh -c "cat >> '$BASE/primary/postgresql.conf'" <<CONF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = '$BASE'
wal_level = replica
max_wal_senders = 5
wal_keep_size = 128MB
hot_standby = on
shared_buffers = 32MB
max_connections = 40
CONF
  fi  # initdb's pg_hba already has "host replication all 127.0.0.1/32 trust"
  running "$BASE/primary" || as_pg "$BIN/pg_ctl" -D "$BASE/primary" -l "$BASE/primary.log" -w -t 60 start >/dev/null
  if [ ! -f "$BASE/replica/PG_VERSION" ]; then
    as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$BASE/replica" -R -X stream -c fast
    echo "port = $P2" | as_pg sh -c "cat >> '$BASE/replica/postgresql.conf'"
  fi
  running "$BASE/replica" || as_pg "$BIN/pg_ctl" -D "$BASE/replica" -l "$BASE/replica.log" -w -t 60 start >/dev/null
  [ -f "$BASE/replica/standby.signal" ] || return 0   # replica was promoted: nothing to wait for
  for _ in $(seq 1 100); do   # wait until the primary reports the standby as streaming
    [ "$(sql "$P1" "select count(*) from pg_stat_replication where state='streaming'" 2>/dev/null)" -ge 1 ] 2>/dev/null && return 0
    sleep 0.2
  done; echo "replica not streaming" >&2; return 1
}
stop() {
  for d in replica primary; do
    running "$BASE/$d" && as_pg "$BIN/pg_ctl" -D "$BASE/$d" -m fast -w stop >/dev/null
  done; return 0
}
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  wipe) stop; rm -rf "$BASE" ;;
  promote) as_pg "$BIN/pg_ctl" -D "$BASE/replica" -w promote ;;
  status) for d in primary replica; do printf '%s: ' $d; as_pg "$BIN/pg_ctl" -D "$BASE/$d" status | head -1; done
          sql "$P1" "select application_name, state, sync_state, replay_lag from pg_stat_replication" || true ;;
  *) echo "usage: $0 start|stop|wipe|status|promote" >&2; exit 2 ;;
esac
