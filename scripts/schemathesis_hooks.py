"""Schemathesis hooks for scripts/api-fuzz.sh (loaded with
SCHEMATHESIS_HOOKS=schemathesis_hooks): a tus PATCH body
(application/offset+octet-stream) is bytes, sent as application/octet-stream
bodies are."""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
