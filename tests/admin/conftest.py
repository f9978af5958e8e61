"""Helpers for the admin API tests: admin JWTs and API key files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.gateway import bearer, make_jwt

ADMIN_SCOPE = "authserver:admin"
API_KEY = "test-admin-api-key-0123456789abcdef"


def admin_jwt(subject: str = "admin@example.test", **claims: Any) -> str:
    """An app JWT whose scope claim holds the admin scope."""
    claims.setdefault("scope", f"openid {ADMIN_SCOPE}")
    return make_jwt(subject, **claims)


def admin_headers(subject: str = "admin@example.test", **claims: Any) -> dict[str, str]:
    """Authorization headers of an admin JWT."""
    return bearer(admin_jwt(subject, **claims))


def key_hash(key: str) -> str:
    """What the API key file holds for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def api_keys_file(tmp_path: Path) -> Path:
    """An API key file accepting API_KEY (with a comment and a blank line)."""
    path = tmp_path / "admin-keys"
    path.write_text(f"# automation key\n\n{key_hash(API_KEY)}  # ci\n")
    return path
