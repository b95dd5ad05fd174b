#!/bin/sh
# rabbitmq-cluster.sh start|stop|wipe|status - an N-node RabbitMQ cluster on one host, no Docker.
# Nodes so1..soN@localhost; AMQP 5673.., management 15673.., distribution 25673..
# RMQ_NET_TICKTIME: seconds before the nodes count a silent peer as down (Erlang: 60).
set -eu
BASE=${RMQ_BASE:-${TMPDIR:-/tmp}/krolik-cluster/rmq}; N=${RMQ_NODES:-3}; P0=${RMQ_PORT0:-5673}
BIN=/usr/lib/rabbitmq/bin      # NOT /usr/sbin/*: that wrapper su's to user rabbitmq (other HOME/cookie)
export HOME=$BASE/home         # $HOME/.erlang.cookie is shared by our nodes and our CLI calls
node() { echo "so$1@localhost"; }
ctl() { _n=$(node "$1"); shift; "$BIN/rabbitmqctl" -q -n "$_n" "$@"; }
env_for() {
  d=$BASE/n$1; mkdir -p "$d/mnesia" "$d/log"
  export RABBITMQ_NODENAME=$(node "$1") RABBITMQ_NODE_PORT=$((P0+$1-1)) \
    RABBITMQ_DIST_PORT=$((P0+20000+$1-1)) RABBITMQ_CONF_ENV_FILE=$d/env.conf \
    RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config \
    RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins RABBITMQ_MNESIA_BASE=$d/mnesia \
    RABBITMQ_LOG_BASE=$d/log RABBITMQ_PID_FILE=$d/pid ERL_CRASH_DUMP=$d/erl_crash.dump \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 -kernel inet_dist_use_interface {127,0,0,1} -kernel net_ticktime ${RMQ_NET_TICKTIME:-60}"
  : > "$d/env.conf"             # keep /etc/rabbitmq/rabbitmq-env.conf (NODENAME=...) out
  echo '[rabbitmq_management].' > "$d/enabled_plugins"
  cat > "$d/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_NODE_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $((P0+10000+$1-1))
vm_memory_high_watermark.absolute = 1GB
log.console = false
log.file.level = info
cluster_partition_handling = autoheal
CONF
}
alive() { [ -f "$BASE/n$1/pid" ] && kill -0 "$(cat "$BASE/n$1/pid")" 2>/dev/null; }
start() {
  mkdir -p "$HOME"
  [ -s "$HOME/.erlang.cookie" ] || { head -c 30 /dev/urandom | md5sum | cut -c1-20 > "$HOME/.erlang.cookie"; }
  chmod 400 "$HOME/.erlang.cookie"  # erlang refuses a group/world-readable cookie
  for i in $(seq 1 "$N"); do
    alive "$i" || ( env_for "$i"; "$BIN/rabbitmq-server" -detached >"$BASE/n$i/log/start.out" 2>&1 )
  done
  for i in $(seq 1 "$N"); do ctl "$i" wait --timeout 120 "$BASE/n$i/pid"; done
  for i in $(seq 2 "$N"); do
    ctl 1 cluster_status --formatter json | grep -q "\"$(node "$i")\"" && continue
    ctl "$i" stop_app; ctl "$i" reset; ctl "$i" join_cluster "$(node 1)"; ctl "$i" start_app
  done
  ctl 1 await_online_nodes "$N" --timeout 120 2>/dev/null || true
}
stop() {  # graceful, all nodes in parallel (sequential costs ~8 s per node)
  for i in $(seq 1 "$N"); do
    alive "$i" && { ctl "$i" stop "$BASE/n$i/pid" || kill "$(cat "$BASE/n$i/pid")"; } &
  done; wait; rm -f "$BASE"/n*/pid; return 0
}
kill9() {  # beam + its erl_child_setup/inet_gethost helpers, by PID
  for i in $(seq 1 "$N"); do alive "$i" || continue; p=$(cat "$BASE/n$i/pid"); c=$(pgrep -P "$p" || true)
    kill -9 "$p" $c $(for x in $c; do pgrep -P "$x"; done) 2>/dev/null || true; done; return 0; }
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  wipe) kill9; rm -rf "$BASE" ;;   # data is discarded anyway: no graceful stop
  status) ctl 1 cluster_status ;;
  *) echo "usage: $0 start|stop|wipe|status" >&2; exit 2 ;;
esac
