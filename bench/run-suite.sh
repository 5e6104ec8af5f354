#!/usr/bin/env bash
# Runs Parley's benchmark suite on this machine, led by the real workload
# (many sessions, few messages each: `parley-bench phones`), and writes
# every result (JSON, summary, SVG plot) to $OUT (default
# bench-results/<UTC date>), with OUT/summary.md: one table of the key
# figures beside the floor, and old against new as ratios.
#
#   bench/run-suite.sh                       # this checkout's build, ~12 minutes
#   OLD=/tmp/old/target/release bench/run-suite.sh   # and an older build, ~25 minutes
#
# OLD is a release dir holding an older `parley` (a `git worktree` of the
# last release, built with `cargo build --release -p parley`); this
# checkout's parley-bench measures both builds, one after the other, each
# scenario on a fresh server. This machine's speed changes from day to
# day: compare figures from one run of this script, as ratios. CHAT=1 adds
# the 1,000-pair throughput scenarios (dozens of frames per wake-up; not
# what phones do). Where ejabberd is installed (`apt-get install
# ejabberd`; EJABBERD=0 skips it), the same phones shape runs against it
# too (`parley-bench xmpp`, bench/ejabberd.sh: plain TCP, anonymous
# logins; with XEP-0184 receipts, then without), ~8 more minutes, and the
# summary gains an ejabberd column.
#
# Loopback only; every run is bounded by its own flags and every wait here
# by a timeout. Server and generator share the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --quiet -p parley -p parley-bench
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BENCH=$ROOT/target/release/parley-bench
WS=wss://127.0.0.1:5443/v1/ws
NEW=$ROOT/target/release
BUILDS="new"
[ -n "${OLD:-}" ] && BUILDS="old new" && OLD=$(cd "$OLD" && pwd)

# shellcheck source=server.sh
. "$ROOT/bench/server.sh"
fresh() { local d; d=$(mktemp -d)/data; mkdir -p "$(dirname "$d")"; echo "$d"; }
latest() { ls -t "$1"/"$2"-*.json | head -1; }

echo "== floor: the same loads against a bare TLS + WebSocket echo server"
$BENCH floor --sessions 19000 --hold 20 --login-duration 20 --echo-sessions 10000 \
    --rate 3000 --duration 30 --body 64 --out "$OUT/floor"
FLOOR=$(latest "$OUT/floor" floor)

for build in $BUILDS; do
    bin=$NEW
    [ "$build" = old ] && bin=$OLD
    export PARLEY=$bin/parley
    out=$OUT/$build
    # SCENARIO [flags]: against the server started last, results in $out.
    run() {
        local scenario=$1
        shift
        $BENCH "$scenario" --data-dir "$D" --server-pid "$PID" --parley-bin "$bin/parley" \
            --ws $WS --floor "$FLOOR" --out "${RUN_OUT:-$out}" "$@"
    }

    echo "== $build: idle, 19,000 authenticated sessions on a fresh server"
    D=$(fresh); start_server "$D"
    run idle --sessions 19000 --hold 30

    echo "== $build: login"
    run login --concurrency 64 --duration 20 --users 1000
    stop_server

    echo "== $build: phones (10,000 sessions, 64-byte messages) at 3,000 and 5,000 msgs/s, then the maximum"
    D=$(fresh); start_server "$D"
    for rate in 3000 5000; do
        run phones --rate $rate --duration 30
    done
    run phones --rate 5000 --duration 20 \
        --find-max --step-factor 1.25 --max-steps 8
    stop_server

    echo "== $build: phones at 3,000 msgs/s without the journal (--durability memory)"
    D=$(fresh); start_server "$D" --durability memory
    RUN_OUT=$out/memory run phones --rate 3000 --duration 30
    stop_server

    if [ -n "${CHAT:-}" ]; then
        echo "== $build: chat, 1,000 pairs: the highest rate that keeps up"
        D=$(fresh); start_server "$D"
        run chat --pairs 1000 --rate 20000 \
            --duration 10 --find-max --step-factor 1.25 --max-steps 8
        stop_server
    fi

    echo "== $build: offline, 1,000,000 messages for offline devices, on a fresh server"
    D=$(fresh); start_server "$D"
    run offline --recipients 1000 --senders 4 \
        --messages 1000000 --max-secs 600
    stop_server
done
unset PARLEY

if [ "${EJABBERD:-1}" != 0 ] && command -v ejabberdctl >/dev/null; then
    echo "== ejabberd: the phones shape over XMPP (10,000 sessions, 64-byte bodies)"
    trap 'stop_server; "$ROOT/bench/ejabberd.sh" stop >/dev/null 2>&1' EXIT
    "$ROOT/bench/ejabberd.sh" stop >/dev/null 2>&1 || true
    EJ=$("$ROOT/bench/ejabberd.sh" start)
    xmpp() { $BENCH xmpp --server-pid "$EJ" --floor "$FLOOR" --out "$OUT/ejabberd" "$@"; }
    # In the order the summary reads them: receipts at 3,000/s, 5,000/s,
    # the maximum; then without receipts (ejabberd's own shape).
    xmpp --receipts --rate 3000 --duration 30
    xmpp --receipts --rate 5000 --duration 30
    xmpp --receipts --rate 2000 --duration 20 --find-max --step-factor 1.25 --max-steps 8
    xmpp --rate 3000 --duration 30
    xmpp --rate 2000 --duration 20 --find-max --step-factor 1.25 --max-steps 8
    "$ROOT/bench/ejabberd.sh" stop >/dev/null 2>&1 || true
else
    echo "== ejabberd: skipped (not installed: apt-get install ejabberd; or EJABBERD=0)"
fi

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])

def figures(path):
    r = json.loads(path.read_text())
    return {f["name"]: f["value"] for f in r.get("figures", [])}

def runs(build, scenario, sub=""):
    d = out / build / sub if sub else out / build
    return [figures(p) for p in sorted(d.glob(f"{scenario}-*.json"))]

floor = figures(sorted((out / "floor").glob("floor-*.json"))[-1])
rows = []
def row(label, build_runs, name, floor_name=None):
    cells = {}
    for build, fig in build_runs.items():
        if fig is not None and name in fig:
            cells[build] = fig[name]
    f = floor.get(floor_name) if floor_name else None
    rows.append((label, cells, f))

builds = [b for b in ("old", "new") if (out / b).is_dir()]
def pick(scenario, index, sub=""):
    return {b: (runs(b, scenario, sub)[index] if len(runs(b, scenario, sub)) > index else None) for b in builds}

# ejabberd's runs stand beside the phones runs of the same shape (with
# receipts): 3,000/s, 5,000/s, the maximum.
xmpp_runs = runs("ejabberd", "xmpp") if (out / "ejabberd").is_dir() else []
def beside(phones, index):
    if xmpp_runs:
        phones["ejabberd"] = xmpp_runs[index] if len(xmpp_runs) > index else None
    return phones

idle, login = pick("idle", 0), pick("login", 0)
p3000, p5000, pmax = beside(pick("phones", 0), 0), beside(pick("phones", 1), 1), beside(pick("phones", 2), 2)
pmem = pick("phones", 0, "memory")
offline = pick("offline", 0)
row("idle: bytes per session (19,000)", idle, "bytes_per_session", "bytes_per_session")
row("login: logins/s (64 loops)", login, "logins_per_s", "logins_per_s")
for label, runs_ in (("phones 3,000/s", p3000), ("phones 5,000/s", p5000)):
    row(f"{label}: server CPU µs/msg", runs_, "server_cpu_us_per_msg", "server_cpu_us_per_msg")
    row(f"{label}: generator CPU µs/msg", runs_, "generator_cpu_us_per_msg", "generator_cpu_us_per_msg")
    row(f"{label}: deliver p50 ms", runs_, "deliver_p50_ms", "p50_ms")
    row(f"{label}: receipt p50 ms", runs_, "p50_ms")
    row(f"{label}: receipt p99 ms", runs_, "p99_ms", "p99_ms")
    row(f"{label}: max ms", runs_, "max_ms", "max_ms")
    row(f"{label}: stall (max - p99.9) ms", runs_, "stall_ms")
    row(f"{label}: send lag p50 ms (the generator's own)", runs_, "send_lag_p50_ms", "send_lag_p50_ms")
row("phones: highest msgs/s that keeps up", pmax, "max_msgs_per_s")
if xmpp_runs:
    row("ejabberd without receipts, 3,000/s: server CPU µs/msg", {"ejabberd": xmpp_runs[3] if len(xmpp_runs) > 3 else None}, "server_cpu_us_per_msg")
    row("ejabberd without receipts: highest msgs/s that keeps up", {"ejabberd": xmpp_runs[4] if len(xmpp_runs) > 4 else None}, "max_msgs_per_s")
row("phones 3,000/s, --durability memory: server CPU µs/msg", pmem, "server_cpu_us_per_msg")
journal = {
    b: {"x": p3000[b]["server_cpu_us_per_msg"] - pmem[b]["server_cpu_us_per_msg"]}
    if p3000.get(b) and pmem.get(b) and "server_cpu_us_per_msg" in p3000[b] and "server_cpu_us_per_msg" in pmem[b]
    else None
    for b in builds
}
row("phones 3,000/s: the journal's CPU µs/msg (fsync minus memory)", journal, "x")
row("offline: bytes per queued 100-B message", offline, "bytes_per_queued_msg")
row("offline: drain msgs/s", offline, "drain_msgs_per_s")
cols = builds + (["ejabberd"] if xmpp_runs else [])
ratios = (["new/old"] if len(builds) == 2 else []) + (["new/ejabberd"] if xmpp_runs else [])
print("| figure | " + " | ".join(cols + ratios) + " | floor |")
print("| --- |" + " --- |" * (len(cols) + len(ratios) + 1))
fmt = lambda v: "" if v is None else f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
for label, cells, f in rows:
    line = [fmt(cells.get(b)) for b in cols]
    n = cells.get("new")
    for r in ratios:
        o = cells.get(r.split("/")[1])
        line.append(f"{n / o:.2f}" if o and n is not None else "")
    print(f"| {label} | " + " | ".join(line) + f" | {fmt(f)} |")
EOF
echo "== results in $OUT"
