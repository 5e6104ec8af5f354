#!/usr/bin/env bash
# Measures the server's resident memory with N idle authenticated sessions.
set -euo pipefail
# Usage: scripts/measure-idle-sessions.sh [SESSIONS]   (default 1000)
# Starts a release parley on 127.0.0.1:15443/18443 with a fresh data
# directory, registers SESSIONS phones, samples the server's VmRSS before and
# while SESSIONS idle authenticated sessions are held, and prints the cost per
# session. Loopback only; bounded by the session count and a 25 s hold.
# Every phone registers from 127.0.0.1, so the per-address registration
# limits are raised.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p parley --bins --examples
N=${1:-1000}
D=$(mktemp -d)
"$ROOT"/target/release/parley --data-dir $D/data --gateway-addr 127.0.0.1:15443 --http-addr 127.0.0.1:18443 --admin-addr 127.0.0.1:19090 \
    --codes-per-ip-burst 1000000 --verifies-per-ip-burst 1000000 >$D/server.out 2>$D/server.err &
SERVER=$!
# Every wait below is bounded: the script gives up instead of hanging.
wait_for() { # PATTERN FILE SECONDS
    for _ in $(seq 1 $(( $3 * 2 ))); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.5; done
    echo "gave up waiting for '$1' in $2:" >&2; cat "$2" "$D/server.err" >&2; kill $SERVER 2>/dev/null; exit 1
}
wait_for "parley ready" $D/server.out 30
rss() { awk '/VmRSS/ {print $2}' /proc/$SERVER/status; }
echo "server started: VmRSS $(rss) kB"
"$ROOT"/target/release/examples/idle_sessions --data-dir $D/data --http https://127.0.0.1:18443 --ws wss://127.0.0.1:15443/v1/ws --sessions $N --settle 6 --hold 25 >$D/ex.out 2>&1 &
wait_for registered $D/ex.out 120
sleep 4; BEFORE=$(rss); echo "$N accounts registered, no sessions: VmRSS $BEFORE kB"
wait_for holding $D/ex.out 120
sleep 5; AFTER=$(rss); echo "$N idle sessions: VmRSS $AFTER kB (fds: $(ls /proc/$SERVER/fd | wc -l))"
echo "per session: $(( (AFTER - BEFORE) * 1024 / N )) bytes"
wait %2 || true; cat $D/ex.out
sleep 2; echo "after the sessions closed: VmRSS $(rss) kB"
kill $SERVER; wait $SERVER || true
