# Starting and stopping the `parley` under test, for the bench scripts
# (sourced, not run). Runs $PARLEY (default: this checkout's
# target/release/parley); loopback ports 5443, 8443 and 9090; every wait
# bounded.

PID=""
start_server() { # DATA_DIR [extra parley flags...]
    local data=$1
    shift
    # The generator's senders run at up to ~100 messages/s each, far above
    # a person's; the per-session limits (20 messages/s, 100 frames/s by
    # default) are raised so they measure the server, not the limiter.
    "${PARLEY:-target/release/parley}" --data-dir "$data" --gateway-addr 127.0.0.1:5443 \
        --http-addr 127.0.0.1:8443 --admin-addr 127.0.0.1:9090 \
        --messages-per-second 100000 --messages-burst 100000 \
        --frames-per-second 100000 --frames-burst 100000 "$@" >"$data.out" 2>"$data.err" &
    PID=$!
    for _ in $(seq 1 60); do grep -q "parley ready" "$data.out" 2>/dev/null && return 0; sleep 0.5; done
    echo "parley did not start:" >&2; cat "$data.err" >&2; exit 1
}
stop_server() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    PID=""
}
trap stop_server EXIT
