#!/usr/bin/env bash
# The same benchmark runs against two builds in one sitting, old then new
# for each scenario, each on a fresh server and data directory, so that the
# figures compare (this machine's speed changes from day to day: compare
# only figures measured together).
#
#   bench/compare.sh OLD_RELEASE_DIR NEW_RELEASE_DIR OUT_DIR [SCENARIO...]
#
# A release dir holds `parley` (e.g. target/release of a checkout at the old
# commit); the new dir's `parley-bench` measures both (the protocol is the
# same; each server is provisioned by its own `parley`). Scenarios (default:
# all):
#   chat1    chat, 1 device per user: the highest rate that keeps up
#            (--find-max; with MAX_P99=MS, the highest whose receipt p99
#            stays within MS), then REPEATS rounds of 30 s at a fixed RATE,
#            old and new in turn, for latency and CPU per message
#   chat3    the same with 3 devices per user (new build only: the old one
#            has one device per user)
#   idle     server memory per idle session, 19,000 sessions
# Everything is loopback; every run is bounded (--duration, --max-steps).
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
OUT=$(mkdir -p "$3" && cd "$3" && pwd)
shift 3
SCENARIOS=${*:-chat1 chat3 idle}
RATE=${RATE:-10000}
START_RATE=${START_RATE:-20000}
REPEATS=${REPEATS:-3}
BOUND=()
[ -n "${MAX_P99:-}" ] && BOUND=(--max-p99-ms "$MAX_P99")
WORK=$(mktemp -d /tmp/parley-compare.XXXXXX)
PID=""

start() { # BIN_DIR NAME [extra flags]
    local bin=$1 name=$2
    shift 2
    local data=$WORK/$name
    rm -rf "$data"
    "$bin/parley" --data-dir "$data" --gateway-addr 127.0.0.1:5443 \
        --http-addr 127.0.0.1:8443 --admin-addr 127.0.0.1:9090 \
        --messages-per-second 100000 --messages-burst 100000 \
        --frames-per-second 100000 --frames-burst 100000 "$@" >"$data.out" 2>"$data.err" &
    PID=$!
    for _ in $(seq 1 120); do grep -q "parley ready" "$data.out" 2>/dev/null && return 0; sleep 0.5; done
    echo "parley ($bin) did not start:" >&2
    cat "$data.err" >&2
    exit 1
}
stop() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT

# The server's CPU time so far (utime + stime, in ticks of 1/100 s: fields
# 14 and 15 of /proc/PID/stat, counted after the command name's ")").
cpu_ticks() {
    sed 's/.*) //' "/proc/$PID/stat" | awk '{ print $12 + $13 }'
}

bench() { # BIN_DIR NAME SCENARIO [args]
    local bin=$1 name=$2 scenario=$3
    shift 3
    echo "== $name: $scenario $*"
    local before after
    before=$(cpu_ticks)
    "$NEW/parley-bench" "$scenario" --data-dir "$WORK/$name" --server-pid "$PID" \
        --parley-bin "$bin/parley" --out "$OUT/$name" "$@" | tail -30
    after=$(cpu_ticks)
    # Includes connecting the sessions: compare like with like.
    echo "server CPU over the whole command: $(( (after - before) * 10 )) ms" | tee -a "$OUT/$name.cpu"
}

for scenario in $SCENARIOS; do
    case $scenario in
    chat1)
        for build in old new; do
            bin=$OLD
            [ $build = new ] && bin=$NEW
            start "$bin" "$build-chat1-max"
            bench "$bin" "$build-chat1-max" chat --pairs 1000 --rate "$START_RATE" \
                --duration 10 --find-max --step-factor 1.25 --max-steps 8 "${BOUND[@]}"
            stop
        done
        for round in $(seq 1 "$REPEATS"); do
            for build in old new; do
                bin=$OLD
                [ $build = new ] && bin=$NEW
                start "$bin" "$build-chat1-fixed-$round"
                bench "$bin" "$build-chat1-fixed-$round" chat --pairs 1000 --rate "$RATE" --duration 30
                stop
            done
        done
        ;;
    chat3)
        start "$NEW" "new-chat3-max"
        bench "$NEW" "new-chat3-max" chat --pairs 1000 --devices 3 --rate "$((START_RATE / 3))" \
            --duration 10 --find-max --step-factor 1.25 --max-steps 8 "${BOUND[@]}"
        stop
        start "$NEW" "new-chat3-fixed"
        bench "$NEW" "new-chat3-fixed" chat --pairs 1000 --devices 3 --rate "$((RATE / 3))" --duration 30
        stop
        ;;
    idle)
        for build in old new; do
            bin=$OLD
            [ $build = new ] && bin=$NEW
            start "$bin" "$build-idle"
            bench "$bin" "$build-idle" idle --sessions 19000 --hold 30
            stop
        done
        ;;
    *)
        echo "unknown scenario $scenario" >&2
        exit 2
        ;;
    esac
done
echo "results in $OUT"
