#!/usr/bin/env bash
# The HTTPS API against its OpenAPI document: checks that docs/openapi.json
# is valid OpenAPI, starts a parley of its own (a temporary data directory,
# ephemeral loopback ports), registers a device through the API (the code
# from the development SMS outbox) and runs schemathesis against the server
# with that device's credential, a bounded number of examples per
# operation. It fails on any 5xx, and on any answer whose status, content
# type, headers or body the document does not describe.
#
#   scripts/api-fuzz.sh            # after cargo build (or cargo test)
#   PARLEY=target/release/parley API_FUZZ_EXAMPLES=1000 scripts/api-fuzz.sh
#
# Installs schemathesis and openapi-spec-validator from PyPI when missing.
# Stops only the server it started. .ci/run runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PARLEY=${PARLEY:-target/debug/parley}
# Examples per operation and phase. 200 takes about 30 s on a 2-core
# machine; raise it for a longer hunt.
EXAMPLES=${API_FUZZ_EXAMPLES:-200}

fail() {
    echo "api-fuzz: $*" >&2
    exit 1
}

[ -x "$PARLEY" ] || fail "no server binary at $PARLEY: build it first (cargo build), or set PARLEY"
command -v python3 >/dev/null ||
    fail "needs Python 3 and pip (for schemathesis and openapi-spec-validator from PyPI)"

# A PyPI package's command: on PATH, else installed (into the Python that
# runs this) and then found on PATH or in that Python's scripts folder.
pypi_command() { # COMMAND PACKAGE
    if ! command -v "$1" >/dev/null; then
        echo "$1 is not installed: installing $2 from PyPI."
        python3 -m pip install --quiet "$2" >&2 || fail "pip install $2 failed (the error is above)"
        hash -r
    fi
    local found
    found=$(command -v "$1" || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/$1")
    [ -x "$found" ] || fail "$2 is installed, but its command $1 is not on PATH ($PATH)"
    echo "$found"
}
VALIDATOR=$(pypi_command openapi-spec-validator openapi-spec-validator | tail -1)
SCHEMATHESIS=$(pypi_command schemathesis schemathesis | tail -1)

echo "-- docs/openapi.json is valid OpenAPI"
"$VALIDATOR" docs/openapi.json

WORK=$(mktemp -d)
PID=""
stop() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap stop EXIT

echo "-- starting $PARLEY on loopback"
"$PARLEY" --data-dir "$WORK/data" --gateway-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 >"$WORK/out" 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 1 120); do
    grep -q '^parley ready' "$WORK/out" && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log" >&2; PID=""; fail "parley exited before it was ready"; }
    sleep 0.5
done
grep -q '^parley ready' "$WORK/out" || { tail -50 "$WORK/server.log" >&2; fail "parley was not ready within 60 s"; }
HTTP=$(sed -n 's/^parley ready .* http=\([^ ]*\) .*/\1/p' "$WORK/out")
BASE="https://$HTTP"
CA="$WORK/data/tls/cert.pem"

# A device registered as a phone would: code by "SMS" (the outbox), verify.
TOKEN=$(python3 - "$BASE" "$CA" "$WORK/data/outbox.jsonl" <<'EOF'
import json, ssl, sys, urllib.request
base, ca, outbox = sys.argv[1:]
tls = ssl.create_default_context(cafile=ca)
tls.check_hostname = False  # the certificate names localhost; we use the address

def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=tls, timeout=30) as response:
        return json.load(response)

phone = "+15550001234"
post("/v1/registration/code", {"phone": phone})
with open(outbox) as f:
    sms = [json.loads(line) for line in f if line.strip()]
body = next(m["body"] for m in reversed(sms) if m.get("kind") == "sms" and m.get("to") == phone)
code = "".join(c for c in body if c.isdigit())[-6:]
print(post("/v1/registration/verify", {"phone": phone, "code": code})["token"])
EOF
) || { tail -50 "$WORK/server.log" >&2; fail "could not register a device through the API"; }

echo "-- schemathesis against $BASE, $EXAMPLES examples per operation"
# Run from the work folder: hypothesis keeps its example database in the
# current directory.
cd "$WORK"
set +e
# The hooks teach schemathesis the tus PATCH body's media type. One worker:
# with two, hypothesis (describing its strategies' lambdas with Python's
# ast module from two threads at once) failed now and then with
# "AST constructor recursion depth mismatch", an error of Python 3.11's
# ast under threads, not of the server.
PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    timeout 300 "$SCHEMATHESIS" run "$ROOT/docs/openapi.json" \
    --url "$BASE" --tls-verify "$CA" \
    -H "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$EXAMPLES" --workers 1
status=$?
set -e
cd "$ROOT"
if [ "$status" != 0 ]; then
    [ "$status" = 124 ] && echo "api-fuzz: schemathesis did not finish within 300 s" >&2
    echo "-- the server's log (last 50 lines)" >&2
    tail -50 "$WORK/server.log" >&2
    fail "schemathesis found answers the document does not describe (above)"
fi
kill -0 "$PID" 2>/dev/null || fail "the server died during the run"
echo "api-fuzz: passed"
