#!/bin/bash
# Latency over time under the identify load: `palmgate serve` (release) with its files in a
# temp dir, `wrk -t2 -c50` on POST /v1/identify in back-to-back 1-second windows, each window's
# req/s and p99 printed with its start time, then the server's snapshot and stream-heads lines,
# to line up a slow window with what the server did then (BENCHMARKS.md §2, session 17).
#
#   cargo build --release && DUR=20 benches/stall.sh
#
# Needs wrk, curl and python3. Ports 18080 (HTTP) and 18883 (embedded MQTT) must be free.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/palmgate}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
export PALMGATE_STORE_PATH=$D/events.db PALMGATE_SECRETS_KEY_FILE=$D/master.key
export PALMGATE_SECRETS_KEY_STORE=$D/keys.db
export PALMGATE_HTTP_LISTEN=127.0.0.1:18080 PALMGATE_MQTT_EMBEDDED_LISTEN=127.0.0.1:18883
export PALMGATE_RATE_LIMIT_PER_MINUTE=100000000
export PALMGATE_RATE_LIMIT_UNAUTHENTICATED_PER_MINUTE=100000000
export PALMGATE_ADMIN_TOKEN=benchtoken RUST_LOG=info,palmgate::store=debug
"$BIN" serve --config "$ROOT/config/palmgate.toml" > "$D/server.log" 2>&1 &
PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:18080/healthz > /dev/null && break; sleep 0.1; done
key() {
  curl -s -X POST http://127.0.0.1:18080/admin/v1/partners -H 'Authorization: Bearer benchtoken' \
    -H 'content-type: application/json' -d "{\"name\":\"$1\"}" |
    python3 -c 'import sys, json; print(json.load(sys.stdin)["api_key"])'
}
PALMGATE_API_KEYS="$(key bench-a),$(key bench-b)"
export PALMGATE_API_KEYS
for _ in $(seq "${DUR:-20}"); do
  t=$(date +%H:%M:%S.%N | cut -c1-12)
  r=$(wrk -t2 -c50 -d1s --latency -s "$ROOT/benches/identify.lua" http://127.0.0.1:18080/v1/identify 2>&1)
  echo "$t rps=$(echo "$r" | awk '/Requests\/sec/{print $2}') p99=$(echo "$r" | awk '$1=="99%"{print $2}')"
done
kill -TERM $PID
wait $PID
grep -E 'snapshot written|heads saved' "$D/server.log" | cut -c1-200
