#!/usr/bin/env bash
# The real workload, side by side in one sitting: many sessions, few
# messages each (`parley-bench phones`: 5,000 pairs = 10,000 sessions,
# 64-byte bodies, DELIVERED receipts), for an old and a new build, in both
# durability modes, beside the bare TLS + WebSocket floor. This machine's
# speed changes from day to day: compare only figures from one run of this
# script, as ratios.
#
#   bench/phones.sh OLD_RELEASE_DIR NEW_RELEASE_DIR OUT_DIR
#
# A release dir holds `parley` (target/release of a checkout at the old
# commit: `git worktree add /tmp/old <commit> && cargo build --release -p
# parley` there); the new dir's `parley-bench` measures every build. Per
# build and mode: a fresh server and data directory, RATES (default "1000
# 3000 5000" msgs/s) for DURATION seconds each (default 60), then the
# highest rate that keeps up (--find-max from START_RATE, steps of
# STEP_SECS). MODES (default "fsync memory"), BUILDS (default "old new").
# OUT_DIR/summary.md gets one table of every run's figures.
# Loopback only; every run is bounded by its flags.
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
OUT=$(mkdir -p "$3" && cd "$3" && pwd)
RATES=${RATES:-1000 3000 5000}
DURATION=${DURATION:-60}
START_RATE=${START_RATE:-5000}
STEP_SECS=${STEP_SECS:-20}
MODES=${MODES:-fsync memory}
BUILDS=${BUILDS:-old new}
FLOOR_RATE=${FLOOR_RATE:-3000}
WORK=$(mktemp -d /tmp/parley-phones.XXXXXX)

# shellcheck source=server.sh
. "$(dirname "$0")/server.sh"
trap 'stop_server; rm -rf "$WORK"' EXIT

phones() { # BIN_DIR NAME [args]
    local bin=$1 name=$2
    shift 2
    echo "== $name: phones $*"
    "$NEW/parley-bench" phones --data-dir "$WORK/$name" --server-pid "$PID" \
        --parley-bin "$bin/parley" --out "$OUT/$name" "$@" | tail -40
}

echo "== floor: bare TLS + WebSocket echo, 10,000 sessions at $FLOOR_RATE msgs/s"
"$NEW/parley-bench" floor --sessions 10000 --hold 10 --login-duration 10 \
    --echo-sessions 10000 --rate "$FLOOR_RATE" --duration "$DURATION" --body 64 \
    --out "$OUT/floor" | tail -30

for build in $BUILDS; do
    bin=$OLD
    [ "$build" = new ] && bin=$NEW
    for mode in $MODES; do
        name=$build-$mode
        PARLEY=$bin/parley start_server "$WORK/$name" --durability "$mode"
        for rate in $RATES; do
            phones "$bin" "$name" --rate "$rate" --duration "$DURATION"
        done
        phones "$bin" "$name" --rate "$START_RATE" --duration "$STEP_SECS" --find-max
        stop_server
    done
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
cols = ["offered_msgs_per_s", "msgs_per_s", "max_msgs_per_s", "server_cpu_us_per_msg",
        "generator_cpu_us_per_msg", "deliver_p50_ms", "p50_ms", "p99_ms", "p999_ms",
        "max_ms", "stall_ms", "lost", "duplicates"]
print("| run | " + " | ".join(cols) + " |")
print("|" + " --- |" * (len(cols) + 1))
for f in sorted(out.glob("*/phones-*.json")) + sorted(out.glob("floor/floor-*.json")):
    r = json.loads(f.read_text())
    figs = {x["name"]: x["value"] for x in r.get("figures", [])}
    cells = [("%.3g" % figs[c]) if isinstance(figs.get(c), (int, float)) else "" for c in cols]
    print(f"| {f.parent.name}/{f.stem} | " + " | ".join(cells) + " |")
EOF
echo "results in $OUT"
