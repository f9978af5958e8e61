"""What the verifier is configured with, and what it says about a caller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.errors import InvalidToken
from authserver.settings import JWTSettings

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: the subject and the (read-only) claims of its JWT.

    `expires_at` is when the JWT stops being accepted without a new check: its `exp`, or
    `iat` plus the maximum age when that comes first.
    """

    subject: str
    claims: Mapping[str, Any] = field(hash=False)
    issued_at: float | None
    expires_at: float
    fingerprint: str


def invalid_token(detail: str) -> InvalidToken:
    """An InvalidToken carrying the RFC 6750 challenge for a bad bearer token."""
    return InvalidToken(detail, headers=BEARER_CHALLENGE)


__all__ = ["Identity", "JWTSettings", "invalid_token"]
