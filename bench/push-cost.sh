#!/usr/bin/env bash
# What push notifications cost the message path: the same chat, half of
# the partners offline (their messages stay queued and wake them), with
# push off and with push through SNS mobile push to a local moto, in
# alternating rounds of one sitting (compare only figures measured
# together: this machine's speed changes from day to day).
#
#   bench/push-cost.sh RELEASE_DIR OUT_DIR
#
# RELEASE_DIR holds `parley` and `parley-bench` (target/release). Each
# round starts a fresh server on a copy of one template data directory
# (2,000 provisioned users, every one with an FCM push token registered
# through SNS), runs `parley-bench chat --pairs 1000 --offline-partners`
# at RATE msgs/s (default 10,000; half to offline partners) for 20 s, and
# prints the figures, the push counters and the CPU moto used (it shares
# this machine's cores with the server and the load generator). The sns
# rounds use --push-window WINDOW (default 60, the server's default: one
# push per offline partner per minute; WINDOW=1 pushes each of the 500
# offline partners up to every second, more than moto can take). MODES
# (default "off sns") may add `outbox`: the pusher's whole path with the
# development sink instead of SNS (the server's own cost, without moto's),
# and `down`: SNS unreachable (every push fails, after the SDK's retries).
# MOTO_NICE=19 runs moto at the lowest CPU priority; PUSH_FLAGS adds server
# flags to the push modes (e.g. PUSH_FLAGS="--push-concurrency 8"). Needs moto_server
# (pip install 'moto[server]') and curl. About 5 minutes.
# Everything is loopback; every run is bounded (--duration).
set -euo pipefail
BIN=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
RATE=${RATE:-10000}
REPEATS=${REPEATS:-2}
WINDOW=${WINDOW:-60}
MODES=${MODES:-off sns}
MOTO_PORT=${MOTO_PORT:-5907}
MOTO=http://127.0.0.1:$MOTO_PORT
WORK=$(mktemp -d /tmp/parley-push-cost.XXXXXX)
MOTO_PID=""
PARLEY=$BIN/parley
# shellcheck source=server.sh
source "$(dirname "$0")/server.sh"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_SNS

cleanup() {
    stop_server
    if [ -n "$MOTO_PID" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# MOTO_NICE=19 runs moto at the lowest priority, so that its CPU (it is
# Python, and shares the two cores) does not pass for the server's cost.
nice -n "${MOTO_NICE:-0}" moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 120); do curl -sf "$MOTO/moto-api/data.json" >/dev/null && break; sleep 0.5; done
# moto checks no signature, but routes by the service the credential
# names: the query API over plain curl is enough.
APP=$(curl -sf "$MOTO/" -H 'Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/sns/aws4_request' \
    -d Action=CreatePlatformApplication -d Name=parley-bench -d Platform=GCM \
    -d Attributes.entry.1.key=PlatformCredential -d Attributes.entry.1.value=bench |
    sed -n 's:.*<PlatformApplicationArn>\(.*\)</PlatformApplicationArn>.*:\1:p')
[ -n "$APP" ] || { echo "moto made no platform application" >&2; exit 1; }

SNS=(--push sns --push-fcm-arn "$APP" --sns-endpoint-url "$MOTO" --push-window "$WINDOW")

# The template: users, and a token for each (an SNS endpoint in moto).
T=$WORK/template
"$BIN/parley" --data-dir "$T" provision --count 2000 --out "$T/bench-users.jsonl" >/dev/null
start_server "$T" "${SNS[@]}"
n=0
while read -r token; do
    n=$((n + 1))
    curl -sf --cacert "$T/tls/cert.pem" -X PUT https://localhost:8443/v1/devices/self/push-token \
        -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"platform\":\"fcm\",\"token\":\"bench-token-$n\"}" || { echo "token $n refused" >&2; exit 1; }
done < <(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$T/bench-users.jsonl")
echo "registered $n push tokens"
stop_server

metric() { curl -s http://127.0.0.1:9090/metrics | awk -v k="$1" '$1 == k { print $2 }'; }
# A process's CPU time so far, in ticks of 1/100 s (utime + stime).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
for round in $(seq 1 "$REPEATS"); do
    for mode in $MODES; do
        name=$mode-$round
        rm -rf "${WORK:?}/$name"
        cp -a "$T" "$WORK/$name"
        case $mode in
        off) flags=(--push off) ;;
        sns) flags=("${SNS[@]}") ;;
        outbox) flags=(--push outbox --push-window "$WINDOW") ;;
        # SNS gone: every push fails fast (connection refused, retried).
        down) flags=(--push sns --push-fcm-arn "$APP" --sns-endpoint-url http://127.0.0.1:9 --push-window "$WINDOW") ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
        # PUSH_FLAGS: more server flags for the push modes (e.g. --push-concurrency 8).
        [ "$mode" != off ] && [ -n "${PUSH_FLAGS:-}" ] && read -ra more <<<"$PUSH_FLAGS" && flags+=("${more[@]}")
        start_server "$WORK/$name" "${flags[@]}"
        echo "== $name: chat --pairs 1000 --offline-partners --rate $RATE (push: ${flags[*]})"
        moto_before=$(cpu_ticks "$MOTO_PID")
        "$BIN/parley-bench" chat --data-dir "$WORK/$name" --server-pid "$PID" --out "$OUT/$name" \
            --pairs 1000 --offline-partners --rate "$RATE" --duration 20 | tail -25
        moto_after=$(cpu_ticks "$MOTO_PID")
        echo "push: wakeups $(metric parley_push_wakeups_total) sent $(metric parley_push_sent_total)" \
            "coalesced $(metric parley_push_coalesced_total) dropped $(metric parley_push_dropped_total)" \
            "pending $(metric parley_push_pending); moto CPU $(( (moto_after - moto_before) * 10 )) ms" |
            tee "$OUT/$name.push"
        stop_server
    done
done
echo "results in $OUT"
