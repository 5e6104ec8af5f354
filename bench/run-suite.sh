#!/usr/bin/env bash
# Runs Parley's whole benchmark suite on this machine and writes every result
# (JSON, summary, SVG plot) to $OUT (default bench-results/<UTC date>).
#
#   bench/run-suite.sh            # about 10 minutes on 2 cores
#
# Memory scenarios (idle, offline) each get a freshly started server: the
# allocator keeps what it freed, so a server that already served other runs
# reads low. Loopback only; every run is bounded by its own flags and every
# wait here by a timeout. Server and generator share the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --quiet -p parley -p parley-bench
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
BENCH=target/release/parley-bench
WS=wss://127.0.0.1:5443/v1/ws

# shellcheck source=server.sh
. "$ROOT/bench/server.sh"
fresh() { local d; d=$(mktemp -d)/data; mkdir -p "$(dirname "$d")"; echo "$d"; }
latest() { ls -t "$OUT"/"$1"-*.json | head -1; }

echo "== floor: the same loads against a bare TLS + WebSocket echo server"
$BENCH floor --sessions 19000 --hold 20 --login-duration 20 --echo-sessions 1000 \
    --rate 30000 --duration 20 --out "$OUT"
FLOOR=$(latest floor)

echo "== idle: 19,000 authenticated sessions on a fresh server"
D=$(fresh); start_server "$D"
$BENCH idle --data-dir "$D" --server-pid "$PID" --ws $WS --sessions 19000 --hold 30 \
    --floor "$FLOOR" --out "$OUT"

echo "== login"
$BENCH login --data-dir "$D" --server-pid "$PID" --ws $WS --concurrency 64 --duration 20 \
    --users 1000 --floor "$FLOOR" --out "$OUT"

echo "== chat: raise the rate until the server falls behind"
$BENCH chat --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate 20000 \
    --duration 10 --find-max --step-factor 1.25 --max-steps 8 --floor "$FLOOR" --out "$OUT"
MAX=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(int(next(f['value'] for f in r['figures'] if f['name']=='max_msgs_per_s')))" "$(latest chat)")

echo "== chat: sustained at the maximum found ($MAX msgs/s), 30 s"
$BENCH chat --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate "$MAX" \
    --duration 30 --floor "$FLOOR" --out "$OUT"

echo "== latency at half the maximum ($((MAX / 2)) msgs/s)"
$BENCH latency --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate $((MAX / 2)) \
    --duration 20 --floor "$FLOOR" --out "$OUT"

# The throughput maximum above is found with deep queues (batching makes it
# high, and its latency is the queue's). The maximum with a latency bound
# says what the node sustains while staying interactive.
echo "== chat: the maximum with receipt p99 <= 20 ms"
$BENCH chat --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate 5000 \
    --duration 10 --find-max --step-factor 1.25 --max-steps 12 --max-p99-ms 20 --floor "$FLOOR" --out "$OUT"
BOUNDED=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(int(next(f['value'] for f in r['figures'] if f['name']=='max_msgs_per_s')))" "$(latest chat)")

for RATE in 1000 $((BOUNDED / 2)); do
    echo "== latency at $RATE msgs/s"
    $BENCH latency --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate "$RATE" \
        --duration 20 --floor "$FLOOR" --out "$OUT"
done
stop_server

echo "== offline: 1,000,000 messages for offline devices, on a fresh server"
D=$(fresh); start_server "$D"
$BENCH offline --data-dir "$D" --server-pid "$PID" --ws $WS --recipients 1000 --senders 4 \
    --messages 1000000 --max-secs 600 --out "$OUT"
stop_server

echo "== results in $OUT"
ls "$OUT"
