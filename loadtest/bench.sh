#!/usr/bin/env bash
# One measured run as RESULTS.md makes them: fresh node(s) on a fresh database, the load
# generator against them, then everything stopped and the database dropped.
#
#   loadtest/bench.sh [options] -- <wirechat-load arguments>
#
#   --pg              a fresh PostgreSQL database (default: a fresh SQLite file)
#   --nodes N         N nodes (N > 1: PostgreSQL and Redis, a fresh key prefix)
#   --redis-cluster NODES  with --nodes N > 1: the nodes share this Redis Cluster
#                     (WIRECHAT_REDIS_CLUSTER) instead of the Redis on 127.0.0.1:6379
#   --port P          the first node's port (default 8201; node i listens on P + i - 1)
#   --pin NODE:LOAD   run the node on CPUs NODE and the generator on CPUs LOAD (taskset)
#   --bin DIR         where wirechat, wirechat-load and wirechat-baseline are
#                     (default: target/release)
#   --env K=V         one more environment variable for the node(s); repeatable
#
# Comparisons (several runs, fresh processes each, alternating, then medians and ratios):
#   --baseline        also run the bare fan-out server (wirechat-baseline) each round; the
#                     ratios are wirechat's figures over the baseline's (--pg: wirechat's
#                     database; the baseline has none)
#   --versus DIR      also run the wirechat in DIR (another build) each round, the same way
#   --versus-nodes N  also run this wirechat on N nodes each round (say one node against the
#                     --nodes 3 of the runs measured)
#   --runs N          rounds (default 5 when comparing, else 1)
#   --out DIR         keep each run's JSON report there (default: a temporary directory)
#   --server baseline run the bare server instead of wirechat (one run)
#
# Examples (the commands in RESULTS.md):
#   loadtest/bench.sh -- --scenario idle --clients 15000 --users 50 --procs 2 --duration 2 --settle 3
#   loadtest/bench.sh --pin 0:1 -- --scenario fanout --clients 1000 --users 100 --procs 1 --rate 500 --duration 10 --drain 20
#   loadtest/bench.sh --nodes 3 -- --scenario idle --clients 51000 --users 300 --procs 3 --duration 10 --settle 3
#   loadtest/bench.sh --baseline -- --scenario fanout --clients 2000 --users 100 --procs 1 --rate 250 --duration 10 --drain 20
#
# The nodes get the limits a load test needs (no sign-in throttle, one account may hold any
# number of sockets, no per-user message rate) and log warnings only; a node that does not
# come up has its log printed. Loopback only.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
node_bin=""
server=wirechat
pg=0
nodes=1
redis_cluster=""
first_port=8201
pin=""
extra_env=()
baseline=0
versus=""
versus_nodes=""
runs=""
out=""
report=""
common=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pg) pg=1; common+=("$1") ;;
        --nodes) nodes="$2"; common+=("$1" "$2"); shift ;;
        --redis-cluster) redis_cluster="$2"; common+=("$1" "$2"); shift ;;
        --port) first_port="$2"; common+=("$1" "$2"); shift ;;
        --pin) pin="$2"; common+=("$1" "$2"); shift ;;
        --bin) bin="$2"; shift ;;
        --env)
            [[ "$2" == *=* ]] || { echo "bench.sh: --env takes NAME=value" >&2; exit 2; }
            extra_env+=("$2"); common+=("$1" "$2"); shift ;;
        --baseline) baseline=1 ;;
        --versus) versus="$2"; shift ;;
        --versus-nodes) versus_nodes="$2"; shift ;;
        --runs) runs="$2"; shift ;;
        --out) out="$2"; shift ;;
        --server) server="$2"; shift ;;
        # Internal, for comparisons: where this run's node is, and where its report goes.
        --node-bin) node_bin="$2"; shift ;;
        --report) report="$2"; shift ;;
        --) shift; break ;;
        *) echo "bench.sh: unknown option $1 (the generator's arguments go after --)" >&2; exit 2 ;;
    esac
    shift
done
node_bin="${node_bin:-$bin}"
[[ -x "$bin/wirechat-load" && ( "$server" == baseline || -x "$node_bin/wirechat" ) ]] || {
    echo "bench.sh: no wirechat and wirechat-load in $bin: cargo build --release -p wirechat -p wirechat-load" >&2
    exit 2
}
[[ "$server" == wirechat || "$server" == baseline ]] || {
    echo "bench.sh: --server takes wirechat or baseline" >&2; exit 2;
}

# A comparison: this script once per run, the targets alternating (the order turns every
# round, so a machine getting slower or faster does not favour one), then the medians.
if (( baseline )) || [[ -n "$versus" || -n "$versus_nodes" || -n "$runs" ]]; then
    [[ -z "$runs" || "$runs" =~ ^[1-9][0-9]?$ ]] || { echo "bench.sh: --runs takes 1 to 99" >&2; exit 2; }
    if (( baseline + (${#versus} > 0) + (${#versus_nodes} > 0) > 1 )); then
        echo "bench.sh: one of --baseline, --versus and --versus-nodes" >&2; exit 2
    fi
    [[ -z "$versus_nodes" || "$versus_nodes" =~ ^[1-9]$ ]] || { echo "bench.sh: --versus-nodes takes 1 to 9" >&2; exit 2; }
    if (( baseline && nodes > 1 )); then
        echo "bench.sh: the baseline is one node: no --nodes" >&2; exit 2
    fi
    # With --baseline, --pg is wirechat's database; the baseline has none.
    wirechat_args=()
    if (( baseline && pg )); then
        wirechat_args=(--pg)
        kept=()
        for arg in "${common[@]}"; do [[ "$arg" == --pg ]] || kept+=("$arg"); done
        common=("${kept[@]}")
    fi
    targets=(wirechat)
    if [[ "$server" == baseline ]]; then targets=(baseline); fi
    if (( baseline )); then
        [[ -x "$bin/wirechat-baseline" ]] || {
            echo "bench.sh: no wirechat-baseline in $bin: cargo build --release -p wirechat-load" >&2; exit 2;
        }
        targets=(baseline wirechat)
    elif [[ -n "$versus" ]]; then
        [[ -x "$versus/wirechat" ]] || { echo "bench.sh: no wirechat in $versus" >&2; exit 2; }
        versus=$(cd "$versus" && pwd)
        targets=("$(basename "$versus")" wirechat)
        [[ "${targets[0]}" != wirechat ]] || targets[0]=versus
    elif [[ -n "$versus_nodes" ]]; then
        targets=("nodes$versus_nodes" wirechat)
        # Both on PostgreSQL (more than one node needs it), so only the nodes differ.
        common+=(--pg)
    fi
    # Each run's report is JSON whatever the caller asked for.
    load_args=()
    for arg in "$@"; do [[ "$arg" == --json ]] || load_args+=("$arg"); done
    runs="${runs:-5}"
    out="${out:-$(mktemp -d /tmp/wirechat-compare.XXXXXX)}"
    mkdir -p "$out"
    # Stopping the comparison stops the run under way too (it cleans up after itself).
    inner=""
    trap '[[ -n "$inner" ]] && kill "$inner" 2>/dev/null; exit 130' INT TERM
    for round in $(seq 1 "$runs"); do
        order=("${targets[@]}")
        if (( round % 2 == 0 && ${#targets[@]} == 2 )); then order=("${targets[1]}" "${targets[0]}"); fi
        for target in "${order[@]}"; do
            target_args=(--bin "$bin")
            if [[ "$target" == baseline && ( $baseline == 1 || "$server" == baseline ) ]]; then
                target_args+=(--server baseline)
            elif [[ "$target" != wirechat && -n "$versus_nodes" ]]; then
                # After the common options, so this --nodes is the one that counts.
                target_args+=(--nodes "$versus_nodes")
            elif [[ "$target" != wirechat ]]; then
                target_args+=(--node-bin "$versus")
            else
                target_args+=("${wirechat_args[@]}")
            fi
            echo "bench.sh: round $round of $runs: $target" >&2
            # A failed run is left out of the medians, not the end of the comparison.
            "$0" "${common[@]}" "${target_args[@]}" --report "$out/$target-$round.json" \
                -- "${load_args[@]}" --json &
            inner=$!
            if ! wait "$inner"; then
                echo "bench.sh: round $round of $runs: $target failed; left out" >&2
                rm -f "$out/$target-$round.json"
            fi
        done
    done
    echo "Reports in $out; medians of $runs run(s), each target over the first:"
    # Ratios move with the host's CPU (a connect's system calls and wake-ups most), so
    # each table says which it was measured on.
    echo "Host: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores, Linux $(uname -r)"
    files=()
    for target in "${targets[@]}"; do
        for round in $(seq 1 "$runs"); do
            if [[ -s "$out/$target-$round.json" ]]; then files+=("$out/$target-$round.json"); fi
        done
    done
    (( ${#files[@]} > 0 )) || { echo "bench.sh: every run failed" >&2; exit 1; }
    "$bin/wirechat-load" compare "${files[@]}"
    exit 0
fi
[[ "$nodes" =~ ^[1-9]$ ]] || { echo "bench.sh: --nodes takes 1 to 9" >&2; exit 2; }
[[ "$first_port" =~ ^[0-9]+$ ]] || { echo "bench.sh: --port takes a number" >&2; exit 2; }
[[ -z "$pin" || "$pin" == ?*:?* ]] || { echo "bench.sh: --pin takes NODE_CPUS:LOAD_CPUS" >&2; exit 2; }
node_prefix=()
load_prefix=()
if [[ -n "$pin" ]]; then
    node_prefix=(taskset -c "${pin%%:*}")
    load_prefix=(taskset -c "${pin##*:}")
fi
if (( nodes > 1 )); then pg=1; fi
if [[ "$server" == baseline ]] && { (( pg )) || (( nodes > 1 )); }; then
    echo "bench.sh: the baseline is one node with no database: no --pg or --nodes" >&2; exit 2
fi

work=$(mktemp -d /tmp/wirechat-bench.XXXXXX)
run_id="$(date +%s)_$$"
database=""
redis_prefix=""
pids=()
# Alive and not yet a zombie (a child that exited stays one until it is waited for).
running() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}
cleanup() {
    # The generator too, when the run is interrupted; then the nodes, given 10 s to stop.
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do running "$pid" && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$database" ]]; then
        dropdb -h 127.0.0.1 -U postgres --if-exists "$database" || true
    fi
    if [[ -n "$redis_prefix" ]]; then
        redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "${redis_prefix}*" \
            | xargs -r redis-cli -h 127.0.0.1 -p 6379 del > /dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ "$server" == baseline ]]; then
    url=""
elif (( pg )); then
    database="bench_$run_id"
    createdb -h 127.0.0.1 -U postgres "$database"
    url="postgres://postgres@127.0.0.1:5432/$database"
else
    url="sqlite://$work/bench.db?mode=rwc"
fi

if (( nodes > 1 )); then redis_prefix="bench_$run_id:"; fi

load_args=()
program="$node_bin/wirechat"
if [[ "$server" == baseline ]]; then program="$bin/wirechat-baseline"; fi
for i in $(seq 1 "$nodes"); do
    port=$((first_port + i - 1))
    # Another server on the port would answer the health check in the node's place.
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "bench.sh: something already listens on port $port; pick another with --port" >&2
        exit 1
    fi
    node_env=(
        DATABASE_URL="$url" WIRECHAT_ADDR="127.0.0.1:$port" WIRECHAT_NODE_ID="n$i"
        WIRECHAT_AUTH_RATE_LIMIT=off WIRECHAT_MAX_SOCKETS_PER_USER=100000
        WIRECHAT_RATE_PER_SECOND=1000000 WIRECHAT_RATE_BURST=1000000 RUST_LOG=warn
        WIRECHAT_ACTION_BUDGET_PER_SECOND=1000000 WIRECHAT_ACTION_BUDGET_BURST=1000000
        WIRECHAT_NEW_GROUPS_PER_HOUR=1000000 WIRECHAT_NEW_CONVERSATIONS_PER_HOUR=1000000
        WIRECHAT_MAX_ROOMS_PER_USER=1000000 WIRECHAT_MAX_CONNECTIONS_PER_ADDRESS=0
        WIRECHAT_DRAIN_MS=0
    )
    if (( nodes > 1 )) && [[ -n "$redis_cluster" ]]; then
        node_env+=(WIRECHAT_REDIS_CLUSTER="$redis_cluster" WIRECHAT_REDIS_PREFIX="$redis_prefix")
    elif (( nodes > 1 )); then
        node_env+=(REDIS_URL=redis://127.0.0.1:6379 WIRECHAT_REDIS_PREFIX="$redis_prefix")
    fi
    # Nothing from the caller's environment but these (and PATH, HOME for the tools).
    env -i PATH="$PATH" HOME="${HOME:-/root}" "${node_env[@]}" "${extra_env[@]}" \
        "${node_prefix[@]}" "$program" \
        > "$work/bench-$port.log" 2>&1 &
    pids+=($!)
    load_args+=(--url "http://127.0.0.1:$port" --server-pid "$!")
    up=0
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then up=1; break; fi
        running "${pids[-1]}" || break
        sleep 0.1
    done
    if (( ! up )) || ! running "${pids[-1]}"; then
        echo "bench.sh: node $i did not come up; its log:" >&2
        cat "$work/bench-$port.log" >&2
        exit 1
    fi
done

# In the background, so that an interrupted run stops the generator with the nodes.
if [[ -n "$report" ]]; then
    "${load_prefix[@]}" "$bin/wirechat-load" "${load_args[@]}" "$@" > "$report" &
else
    "${load_prefix[@]}" "$bin/wirechat-load" "${load_args[@]}" "$@" &
fi
pids+=($!)
wait "${pids[-1]}"

# How many frames each write carried (write pacing), node by node.
for i in $(seq 1 "$nodes"); do
    curl -s "http://127.0.0.1:$((first_port + i - 1))/metrics" \
        | grep -E '^wirechat_(frames_out|socket_writes)_total' | sed "s/^/node $i: /" >&2 || true
done
