#!/usr/bin/env bash
# What the journal costs: the same chat and latency runs against a server
# with `--durability fsync` (the default) and `--durability memory`, each on
# a fresh data directory. Results (JSON, summary, SVG) go to $OUT (default
# bench-results/journal-<UTC date>); a table of the figures is printed.
#
#   bench/journal-cost.sh      # about 6 minutes on 2 cores
#
# Loopback only; every run is bounded by its flags, every wait by a timeout.
# Run it on a quiet machine: another process writing to the same disk makes
# every fsync slower (docs/journal-storage.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --quiet -p parley -p parley-bench
OUT=${OUT:-bench-results/journal-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
BENCH=target/release/parley-bench
WS=wss://127.0.0.1:5443/v1/ws
# Latency is measured at the rates BENCHMARKS.md uses: 1,000 msgs/s and half
# of the latency-bounded maximum (7,625).
LATENCY_RATES=${LATENCY_RATES:-"1000 7625"}

# shellcheck source=server.sh
. "$ROOT/bench/server.sh"

for MODE in memory fsync; do
    D=$(mktemp -d)/data; mkdir -p "$(dirname "$D")"
    start_server "$D" --durability "$MODE"
    echo "== $MODE: chat, raise the rate until the server falls behind"
    $BENCH chat --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate 40000 \
        --duration 10 --find-max --step-factor 1.25 --max-steps 6 --out "$OUT/$MODE"
    for RATE in $LATENCY_RATES; do
        echo "== $MODE: latency at $RATE msgs/s"
        $BENCH latency --data-dir "$D" --server-pid "$PID" --ws $WS --pairs 1000 --rate "$RATE" \
            --duration 20 --out "$OUT/$MODE"
    done
    curl -s http://127.0.0.1:9090/metrics | grep -E '^parley_router_journal_(commits_total|changes_total|batch_ops_(sum|count)|commit_seconds_(sum|count))' \
        > "$OUT/$MODE/journal-metrics.txt" || true
    stop_server
done

python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
print(f"{'mode':8} {'scenario':22} figures")
for mode in ("memory", "fsync"):
    for path in sorted(glob.glob(os.path.join(out, mode, "*.json"))):
        r = json.load(open(path))
        figs = ", ".join(f"{f['name']}={f['value']:.2f}" for f in r.get("figures", [])
                         if any(k in f["name"] for k in ("max_msgs", "msgs_per_s", "p50", "p99", "lost")))
        print(f"{mode:8} {os.path.basename(path)[:22]:22} {figs}")
    metrics = os.path.join(out, mode, "journal-metrics.txt")
    if os.path.exists(metrics) and os.path.getsize(metrics):
        print(f"{mode:8} journal: " + "; ".join(l.strip() for l in open(metrics)))
EOF
