#!/usr/bin/env bash
# What media uploads and downloads cost: one large file up through tus
# and down again over TLS on loopback, against the server on its local
# store, beside a bare copy of the same file on the same disk (the floor).
#
#   bench/media-cost.sh RELEASE_DIR OUT_DIR
#
# RELEASE_DIR holds `parley` and `parley-bench` (target/release). Starts a
# fresh server (media limit raised to 1 GiB) and runs `parley-bench media`
# with SIZE_MIB (default 200) for each CHUNKS value (MiB per PATCH, 0 = the
# whole file in one PATCH; default "0 5"), REPEATS times each (default 3;
# medians reported). Prints MB/s up and down, the floor copy's MB/s, the
# server's peak RSS during the upload (VmHWM, reset before each upload)
# and its CPU per MiB. About 1-2 minutes. Loopback only; every run is
# bounded (sizes and repeats are).
set -euo pipefail
BIN=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
SIZE_MIB=${SIZE_MIB:-200}
CHUNKS=${CHUNKS:-0 5}
REPEATS=${REPEATS:-3}
WORK=$(mktemp -d /tmp/parley-media-cost.XXXXXX)
PARLEY=$BIN/parley
# shellcheck source=server.sh
source "$(dirname "$0")/server.sh"
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

start_server "$WORK/data" --media-max-mib 1024 --media-mib-per-day 100000
for chunk in $CHUNKS; do
    "$BIN/parley-bench" media --data-dir "$WORK/data" --server-pid "$PID" \
        --http https://127.0.0.1:8443 --size-mib "$SIZE_MIB" --chunk-mib "$chunk" \
        --repeats "$REPEATS" --out "$OUT/chunk-$chunk"
done
echo "server RSS after the runs: $(awk '/VmRSS/ {print $2, $3}' "/proc/$PID/status")"
