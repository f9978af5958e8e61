"""What the verifier is configured with, and what it says about a caller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.errors import InvalidToken

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@dataclass(frozen=True)
class JWTSettings:
    """How to verify a JWT; every choice comes from here, never from the token.

    The issuer is required: the subject alone names a caller everywhere (token reuse,
    answers, rate limits, revocation blocks, the admin API), which is only unambiguous
    when every accepted token comes from one issuer.
    """

    algorithms: tuple[str, ...]
    issuer: str
    secret: str | None = None
    public_key_pem: str | None = None
    jwks_url: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    # Seconds after its `iat` a JWT is refused, whatever its `exp`; None: no limit, `iat` optional.
    max_age: float | None = None
    subject_claim: str = "sub"
    jwks_refresh_interval: float = 30.0
    jwks_cache_ttl: float = 3600.0
    max_token_bytes: int = 8192
    cache_size: int = 100_000


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
