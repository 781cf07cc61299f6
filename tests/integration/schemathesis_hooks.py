"""schemathesis_hooks.py — lets schemathesis send JSON-lines bodies (POST /v1/datasets) as text.
Loaded through SCHEMATHESIS_HOOKS by service_schemathesis.py."""
import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
