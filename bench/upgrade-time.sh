#!/usr/bin/env bash
# How long the first start of a new release takes on a journal of
# 1,000,000 queued messages written by an older one (format 1, one device
# per user, upgraded in place to format 2), against plain restarts.
#
#   bench/upgrade-time.sh OLD_RELEASE_DIR NEW_RELEASE_DIR
#
# OLD_RELEASE_DIR holds `parley` and `parley-bench` of the old release (e.g.
# target/release of a checkout at 7b87e11). The old server queues the
# messages for 1,000 offline devices and is killed with kill -9 as soon as
# all are acked; then each server starts on the data directory. Loopback
# ports 5443, 8443, 9090; every wait bounded.
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
W=$(mktemp -d /tmp/parley-upgrade.XXXXXX)
trap 'rm -rf "$W"' EXIT
FLAGS=(--gateway-addr 127.0.0.1:5443 --http-addr 127.0.0.1:8443 --admin-addr 127.0.0.1:9090
  --messages-per-second 100000 --messages-burst 100000 --frames-per-second 100000 --frames-burst 100000)
start() { # BIN DATA NAME
  local t0=$(date +%s.%N)
  "$1/parley" --data-dir "$2" "${FLAGS[@]}" >"$W/$3.out" 2>"$W/$3.err" &
  PID=$!
  for _ in $(seq 1 1200); do grep -q "parley ready" "$W/$3.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "parley ready" "$W/$3.out" || { echo "$3 did not start"; cat "$W/$3.err"; kill $PID; exit 1; }
  echo "$3: ready after $(echo "$(date +%s.%N) - $t0" | bc) s"
}
queued() { local v=""; for _ in $(seq 1 60); do v=$(curl -s http://127.0.0.1:9090/metrics | awk '/^parley_router_queued /{print $2}'); [ -n "$v" ] && [ "$v" != 0 ] && break; sleep 1; done; echo "$v"; }
start $OLD "$W/old" old
$OLD/parley-bench offline --data-dir "$W/old" --server-pid "$PID" --ws wss://127.0.0.1:5443/v1/ws \
  --recipients 1000 --senders 4 --messages 1000000 --max-secs 600 --out "$W/bench" > "$W/offline.log" 2>&1 &
BENCH=$!
# The bench queues 1,000,000 messages for offline recipients, then drains
# them: kill -9 the server as soon as all are acked, before the drain.
metric() { curl -s http://127.0.0.1:9090/metrics | awk -v n="$1" '$1==n {print $2}'; }
for _ in $(seq 1 6000); do
  a=$(metric parley_router_messages_accepted_total); [ "${a:-0}" -ge 1000000 ] && break; sleep 0.1
done
d=$(metric parley_router_messages_delivered_total)
kill -9 $PID; wait $PID 2>/dev/null || true
echo "old: accepted ${a:-?} delivered ${d:-?} when killed (-9)"
kill $BENCH 2>/dev/null; wait $BENCH 2>/dev/null || true
cp -a "$W/old" "$W/old-copy"
ls -la "$W/old" | grep -i journal || true
start $OLD "$W/old-copy" old-restart
echo "old restart: queued $(queued)"; kill $PID; wait $PID 2>/dev/null || true
start $NEW "$W/old" new-upgrade
echo "new after upgrade: queued $(queued)"
grep -h "journal upgraded" "$W/new-upgrade.err" "$W/new-upgrade.out" || true
kill $PID; wait $PID 2>/dev/null || true
start $NEW "$W/old" new-restart
echo "new restart (format 2): queued $(queued)"; kill $PID; wait $PID 2>/dev/null || true
grep -h "journal replayed\|journal upgraded" "$W"/*.err "$W"/*.out || true
