#!/usr/bin/env bash
# One Redis against a Redis Cluster of three masters, side by side: three wirechat nodes
# on PostgreSQL, the same load through each, alternating, fresh nodes every run. Prints
# for each run the generator's figures and the Redis CPU each published message cost,
# per Redis process, then the medians.
#
#   loadtest/capacity.sh [--runs N] -- <wirechat-load arguments>
#
# The cluster is this script's own (three masters on 127.0.0.1:7101-7103, no replicas,
# nothing kept on disk), stopped at the end; the single Redis is the one on port 6379.
# Example (docs/capacity.md):
#   loadtest/capacity.sh -- --scenario rooms --clients 3000 --room-size 10 --users 3000 \
#       --procs 3 --rate 1000 --duration 10 --drain 10
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
runs=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="$2"; shift ;;
        --) shift; break ;;
        *) echo "capacity.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -x "$bin/wirechat" && -x "$bin/wirechat-load" ]] || {
    echo "capacity.sh: cargo build --release -p wirechat -p wirechat-load" >&2; exit 2;
}

work=$(mktemp -d /tmp/wirechat-capacity.XXXXXX)
ports=(7101 7102 7103)
cluster_pids=()
cleanup() {
    for pid in "${cluster_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

for port in "${ports[@]}"; do
    mkdir -p "$work/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file "$work/$port/nodes.conf" --dir "$work/$port" \
        --save '' --appendonly no --logfile "$work/$port/log" &
    cluster_pids+=($!)
done
for port in "${ports[@]}"; do
    until redis-cli -p "$port" ping > /dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes > "$work/create.log"
until redis-cli -p 7101 cluster info | grep -q cluster_state:ok; do sleep 0.1; done
cluster=$(IFS=,; echo "${ports[*]/#/127.0.0.1:}")
single_pid=$(pgrep -f 'redis-server .*:6379' | head -1)
[[ -n "$single_pid" ]] || { echo "capacity.sh: no Redis on port 6379" >&2; exit 1; }

# CPU seconds a process has used, from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }

printf '%-8s %4s %12s %14s %8s %8s %s\n' redis run sent deliveries/s p99_ms missing \
    "redis_cpu_us_per_message (per process)"
for round in $(seq 1 "$runs"); do
    order=(single cluster)
    if (( round % 2 == 0 )); then order=(cluster single); fi
    for mode in "${order[@]}"; do
        if [[ "$mode" == single ]]; then pids=("$single_pid"); extra=(); else pids=("${cluster_pids[@]}"); extra=(--redis-cluster "$cluster"); fi
        before=(); for pid in "${pids[@]}"; do before+=("$(cpu "$pid")"); done
        report="$work/$mode-$round.json"
        "$root/loadtest/bench.sh" --nodes 3 "${extra[@]}" --report "$report" -- "$@" --json 2> "$work/$mode-$round.log" || {
            echo "capacity.sh: $mode run $round failed:" >&2; tail -5 "$work/$mode-$round.log" >&2; continue;
        }
        after=(); for pid in "${pids[@]}"; do after+=("$(cpu "$pid")"); done
        python3 - "$report" "$mode" "$round" "${before[*]}" "${after[*]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mode, rnd = sys.argv[2], sys.argv[3]
before = [float(x) for x in sys.argv[4].split()]
after = [float(x) for x in sys.argv[5].split()]
sent = max(r["messages"]["sent"], 1)
per = " ".join(f"{(a - b) * 1e6 / sent:.1f}" for a, b in zip(after, before))
print(f'{mode:<8} {rnd:>4} {r["messages"]["sent"]:>12} {r["messages"]["deliveries_per_s"]:>14.0f} '
      f'{r["latency_ms"]["p99"]:>8.1f} {r["messages"]["missing"]:>8} {per}')
PY
    done
done
