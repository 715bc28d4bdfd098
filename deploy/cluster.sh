#!/usr/bin/env bash
# The scale-out topology as plain processes on one machine: N wirechat nodes on loopback
# ports behind Caddy (Debian's `caddy` package), sharing the local Redis and PostgreSQL.
#
#   deploy/cluster.sh start [N]   start N nodes (default 3) and Caddy, then print the URL
#   deploy/cluster.sh stop        stop Caddy and every node (SIGTERM, then SIGKILL)
#   deploy/cluster.sh status      show what is running
#
# Caddy runs the repository's Caddyfile, with the nodes' loopback addresses as its
# upstreams (WIRECHAT_UPSTREAMS) and CLUSTER_PROXY_PORT as its port.
#
# Settings (environment):
#   DATABASE_URL        default postgres://postgres@127.0.0.1:5432/wirechat (created if missing)
#   REDIS_URL           default redis://127.0.0.1:6379
#   WIRECHAT_REDIS_PREFIX  default wirechat:
#   WIRECHAT_BIN        default target/release/wirechat (built when missing)
#   CLUSTER_BASE_PORT   first node's port, default 8001 (nodes use 8001, 8002, ...)
#   CLUSTER_PROXY_PORT  Caddy's port, default 8080
#   CLUSTER_DIR         pid files and logs; default target/cluster
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CLUSTER_DIR:-$repo/target/cluster}"
bin="${WIRECHAT_BIN:-$repo/target/release/wirechat}"
base_port="${CLUSTER_BASE_PORT:-8001}"
proxy_port="${CLUSTER_PROXY_PORT:-8080}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/wirechat}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export WIRECHAT_REDIS_PREFIX="${WIRECHAT_REDIS_PREFIX:-wirechat:}"

die() { echo "cluster: $*" >&2; exit 1; }

# Waits up to $2 seconds for $1 to answer 200.
wait_http() {
  local url="$1" limit="$2" i
  for ((i = 0; i < limit * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

preflight() {
  command -v caddy >/dev/null || die "caddy is not installed (apt-get install -y caddy)"
  command -v curl >/dev/null || die "curl is not installed"
  redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || die "Redis does not answer at $REDIS_URL"
  if [[ "$DATABASE_URL" == postgres* ]]; then
    local admin="${DATABASE_URL%/*}/postgres" name="${DATABASE_URL##*/}"
    name="${name%%\?*}"
    psql "$admin" -qAtc "SELECT 1" >/dev/null 2>&1 || die "PostgreSQL does not answer at $admin"
    if [[ -z "$(psql "$admin" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]]; then
      psql "$admin" -qc "CREATE DATABASE \"$name\"" >/dev/null
      echo "created database $name"
    fi
  fi
  if [[ ! -x "$bin" ]]; then
    echo "building $bin"
    (cd "$repo" && cargo build --release --bin wirechat)
  fi
}

start() {
  local n="${1:-3}" i port upstreams=""
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number"
  mkdir -p "$dir"
  for pidfile in "$dir"/*.pid; do
    alive "$pidfile" && die "already running (deploy/cluster.sh stop first)"
  done
  preflight
  for ((i = 1; i <= n; i++)); do
    port=$((base_port + i - 1))
    WIRECHAT_ADDR="127.0.0.1:$port" WIRECHAT_NODE_ID="node$i" WIRECHAT_TRUST_PROXY="${WIRECHAT_TRUST_PROXY:-true}" NO_COLOR=1 \
      nohup "$bin" serve >"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    upstreams+="${upstreams:+ }127.0.0.1:$port"
  done
  for ((i = 1; i <= n; i++)); do
    port=$((base_port + i - 1))
    wait_http "http://127.0.0.1:$port/readyz" 30 ||
      die "node$i did not become ready; see $dir/node$i.log"
    echo "node$i ready on http://127.0.0.1:$port"
  done

  WIRECHAT_UPSTREAMS="$upstreams" WIRECHAT_SITE_ADDRESS=":$proxy_port" \
    XDG_DATA_HOME="$dir/caddy" XDG_CONFIG_HOME="$dir/caddy" \
    nohup caddy run --adapter caddyfile --config "$repo/Caddyfile" >"$dir/caddy.log" 2>&1 &
  echo $! >"$dir/caddy.pid"
  wait_http "http://127.0.0.1:$proxy_port/healthz" 15 ||
    die "Caddy did not start; see $dir/caddy.log"
  echo "wirechat: $n nodes behind http://localhost:$proxy_port (logs in $dir)"
}

stop_one() {
  local pidfile="$1" pid i
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # Nodes drain (WIRECHAT_DRAIN_MS, 5 s unless set), close their sockets (1012) and
    # exit within a few seconds more.
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $(basename "$pidfile" .pid)"
  fi
  rm -f "$pidfile"
}

stop() {
  [[ -d "$dir" ]] || return 0
  # Caddy first, so no new connection reaches a node that is going away.
  stop_one "$dir/caddy.pid"
  # All nodes at once: each drains for the same few seconds.
  for pidfile in "$dir"/node*.pid; do
    [[ -e "$pidfile" ]] && stop_one "$pidfile" &
  done
  wait
  return 0
}

status() {
  local any=0
  for pidfile in "$dir"/*.pid; do
    [[ -e "$pidfile" ]] || continue
    any=1
    if alive "$pidfile"; then
      echo "$(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"
    else
      echo "$(basename "$pidfile" .pid): not running"
    fi
  done
  [[ $any == 1 ]] || echo "not running"
}

case "${1:-}" in
  start) start "${2:-3}" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
