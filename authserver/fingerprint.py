"""The one way the project names a secret in a log line: the first 8 hex digits of its sha256."""

from __future__ import annotations

import hashlib


def fingerprint(secret_value: str) -> str:
    """First 8 hex digits of sha256: safe to log, enough to correlate two log lines."""
    return hashlib.sha256(secret_value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
