#!/usr/bin/env bash
# Search over a large history: a fresh database holding N messages (default 1,000,000) of
# eight words each in the public group #hi, one node, and k6 searching it one query after
# another (loadtest/search.js); prints the search time's percentiles.
#
#   loadtest/search.sh [--pg] [--messages N] [--searches N] [--bin DIR] [--keep]
#
# --keep leaves the database (its URL is printed) to look at the plans.
# The messages are written straight into the database (the index kept by its triggers or
# its GIN index as for any message), then the node starts on it. Loopback only; the
# database is dropped at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
pg=0
messages=1000000
searches=300
port=8301
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) pg=1 ;;
        --messages) messages="$2"; shift ;;
        --searches) searches="$2"; shift ;;
        --bin) bin="$2"; shift ;;
        --keep) keep=1 ;;
        *) echo "search.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d)
db="wirechat_search_$$"
node=""
cleanup() {
    [ -n "$node" ] && kill "$node" 2>/dev/null && wait "$node" 2>/dev/null || true
    if [ "$keep" = 1 ]; then
        echo "search.sh: kept $url" >&2
        return
    fi
    [ "$pg" = 1 ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ "$pg" = 1 ]; then
    psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$db"
else
    url="sqlite://$work/search.db?mode=rwc"
fi

start_node() {
    WIRECHAT_ADDR="127.0.0.1:$port" DATABASE_URL="$url" WIRECHAT_AUTH_RATE_LIMIT=off \
        WIRECHAT_ACTION_BUDGET_PER_SECOND=100000 WIRECHAT_ACTION_BUDGET_BURST=100000 \
        WIRECHAT_DRAIN_MS=0 RUST_LOG=wirechat=warn "$bin/wirechat" >>"$work/node.log" 2>&1 &
    node=$!
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
        sleep 0.1
    done
    cat "$work/node.log" >&2
    echo "search.sh: the node did not come up" >&2
    exit 1
}
stop_node() {
    kill -TERM "$node"
    wait "$node" 2>/dev/null || true
    node=""
}

# The node makes the schema; then it stops while the history is written.
start_node
stop_node

words="alpha bravo quartz harbor lantern meadow zigzag ember violet xylophone kettle copper
tundra whisper orbit saffron granite pebble willow cinder falcon marble nectar osprey
prism quiver raven sable thistle umber vessel wander yonder zephyr anchor beacon canyon
dune fjord glacier hollow island jasper kelp lagoon mosaic nimbus opal pylon quill ridge
summit timber utopia valley walrus 明天 开会 讨论 我们 早上 晚上 天气 咖啡 音乐"
seeder="00000000-0000-7000-8000-0000000000aa"
room="00000000-0000-7000-8000-000000000001"
echo "search.sh: writing $messages messages…" >&2
start=$(date +%s)
if [ "$pg" = 1 ]; then
    array=$(printf "'%s'," $words)
    psql -q -h 127.0.0.1 -U postgres -d "$db" -v ON_ERROR_STOP=1 <<SQL
INSERT INTO users (id, username, name_key, password_hash, created_at)
    VALUES ('$seeder', 'seeder', 'seeder', 'x', 0);
INSERT INTO messages (id, room_id, seq, rev, author_id, body, created_at)
SELECT '00000000-0000-7000-8000-' || lpad(i::text, 12, '0'), '$room', i, i, '$seeder',
       (SELECT string_agg(w[1 + floor(random() * array_length(w, 1))::int], ' ')
          FROM generate_series(1, 8) k, (SELECT ARRAY[${array%,}] AS w) v WHERE k > 0 * i),
       1700000000000 + i
  FROM generate_series(1, $messages) i;
UPDATE rooms SET last_seq = $messages, posted = $messages WHERE id = '$room';
ANALYZE messages;
SQL
else
    json="[$(printf '"%s",' $words | sed 's/,$//')]"
    count=$(echo $words | wc -w)
    word="json_extract('$json', '\$[' || (abs(random()) % $count) || ']')"
    sqlite3 "$work/search.db" <<SQL
INSERT INTO users (id, username, name_key, password_hash, created_at)
    VALUES ('$seeder', 'seeder', 'seeder', 'x', 0);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $messages)
INSERT INTO messages (id, room_id, seq, rev, author_id, body, created_at)
SELECT printf('00000000-0000-7000-8000-%012d', i), '$room', i, i, '$seeder',
       $word || ' ' || $word || ' ' || $word || ' ' || $word || ' ' ||
       $word || ' ' || $word || ' ' || $word || ' ' || $word,
       1700000000000 + i
  FROM n;
UPDATE rooms SET last_seq = $messages, posted = $messages WHERE id = '$room';
SQL
fi
echo "search.sh: written in $(( $(date +%s) - start )) s; for example:" >&2
sample="SELECT body FROM messages ORDER BY seq DESC LIMIT 3"
if [ "$pg" = 1 ]; then
    psql -At -h 127.0.0.1 -U postgres -d "$db" -c "$sample" >&2
else
    sqlite3 "$work/search.db" "$sample" >&2
fi

start_node
k6 run -q -e BASE_URL="http://127.0.0.1:$port" -e SEARCHES="$searches" "$root/loadtest/search.js"
stop_node
