"""What a cached MQTT token is, and the key that says which permissions it carries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.bounded import weight
from authserver.fingerprint import fingerprint
from authserver.identity.model import Claims
from authserver.policy.claims import KeptClaims

EARLY_REFRESH_MS = 60_000
# What a kept record costs beyond its strings: the record object and its numbers, the map's
# slot and the store's index entries (calibrated with tracemalloc, tests/test_bounded.py).
RECORD_OVERHEAD = 310
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
# A renewal needs time to land (quota wait, round trip) before devices need the new token.
RENEW_LEAD_MS = 5_000
ACTIONS_PARAM = {"R": "R", "W": "W", "RW": "R,W"}


def claim_names_of(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """The names `claims` answers for: None when they are an identity's whole claim set."""
    return claims.names if isinstance(claims, KeptClaims) else None


def subject_tag(subject: str) -> str:
    """A short, key-safe digest of a subject (subjects may hold any character)."""
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def token_key(
    instance_id: str,
    subject: str,
    token_type: str,
    resources: tuple[str, ...],
    ttl: int,
    client_id: str | None = None,
    marks: tuple[str, ...] = (),
) -> str:
    """The cache key: instance, subject, client, type, exact resources and lifetime asked for.

    A changed policy yields other resources and so another key: it can never be served a
    token minted for the old grant. The client id is part of the key so that revoking one
    device never cuts off another device of the same user; so are the identity's revocable
    claim values (`marks`, tokens/revocable.py), so that a token is found by every value it
    was handed for (absent when no claim is revocable: the key is then what it always was).
    """
    parts: tuple[str, ...] = (
        instance_id,
        subject,
        client_id or "",
        token_type,
        ",".join(resources),
        str(ttl),
    )
    if marks:
        # NUL, which no mark holds (a value with one counts as nothing, a name is an
        # identifier): with any other character one value could spell a list of two.
        parts += ("\x00".join(marks),)
    material = "\x00".join(parts)
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def record_weight(key: str, record: TokenRecord) -> int:
    """Roughly the bytes a cached record holds: what the token caches' byte bounds count."""
    size = RECORD_OVERHEAD + weight(key) + weight(record.token) + weight(record.resources)
    if record.marks:  # up to 32 values of 256 characters per claim: the record's own strings
        size += weight(record.marks)
    # A JWT's own claims are the verifier's, shared by its identity: counted there. Claims
    # cut for the record (KeptClaims), or read back from Redis, are the record's own.
    return size if isinstance(record.claims, Claims) else size + weight(record.claims)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One token minted by ApplyToken, with what it grants and when it expires."""

    token: str
    type: str
    resources: tuple[str, ...]
    expire_ms: int
    refresh_at_ms: int
    issued_ms: int
    subject: str
    instance_id: str
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    # The claim names `claims` answers for; None: all (they are the identity's whole set).
    claim_names: frozenset[str] | None = None
    # The revocable claim values of the identity it was minted for (tokens/revocable.py).
    marks: tuple[str, ...] = ()
    # Derived, not stored: computed once here rather than hashed on every request.
    renew_at_ms: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Place the background renewal of this token (stampede protection).

        Each token gets its own point in a window before refreshAt (at most a minute, or a
        tenth of its life) derived from the token, so a fleet that fetched its tokens in the
        same second is renewed spread over that window rather than at once. The window ends
        a lead (5 s, or the window's width if that is shorter) before refreshAt: a renewal
        started a millisecond before refreshAt would land after devices need the new token,
        and they would wait on a synchronous mint, the stampede this renewal exists to avoid.
        """
        if not self.renew_at_ms:
            window = max(min(EARLY_REFRESH_MS, (self.refresh_at_ms - self.issued_ms) // 10), 1)
            lead = min(RENEW_LEAD_MS, window)
            jitter = int(fingerprint(self.token), 16) % window
            object.__setattr__(self, "renew_at_ms", self.refresh_at_ms - lead - jitter)

    @property
    def fingerprint(self) -> str:
        """Loggable identifier of the token value."""
        return fingerprint(self.token)

    def to_json(self) -> str:
        """Serialise for the shared store."""
        data: dict[str, Any] = {
            "token": self.token,
            "type": self.type,
            "resources": list(self.resources),
            "expire_ms": self.expire_ms,
            "refresh_at_ms": self.refresh_at_ms,
            "issued_ms": self.issued_ms,
            "subject": self.subject,
            "instance_id": self.instance_id,
            "client_id": self.client_id,
            "claims": dict(self.claims),
            "claim_names": None if self.claim_names is None else sorted(self.claim_names),
        }
        if self.marks:
            data["marks"] = list(self.marks)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> TokenRecord:
        """Parse what to_json wrote."""
        data: dict[str, Any] = json.loads(raw)
        claims = dict(data.get("claims") or {})
        if "claim_names" not in data:
            # Written before records said: only what they hold is known about the identity.
            names: frozenset[str] | None = frozenset(claims)
        elif data["claim_names"] is None:
            names = None
        else:
            names = frozenset(str(n) for n in data["claim_names"])
        return cls(
            token=str(data["token"]),
            type=str(data["type"]),
            resources=tuple(str(r) for r in data["resources"]),
            expire_ms=int(data["expire_ms"]),
            refresh_at_ms=int(data["refresh_at_ms"]),
            issued_ms=int(data["issued_ms"]),
            subject=str(data["subject"]),
            instance_id=str(data["instance_id"]),
            client_id=None if data.get("client_id") is None else str(data["client_id"]),
            claims=claims,
            claim_names=names,
            marks=tuple(str(m) for m in data.get("marks") or ()),
        )

    def public(self) -> dict[str, Any]:
        """The device-facing view of this token."""
        return {
            "type": self.type,
            "token": self.token,
            "resources": list(self.resources),
            "expireTime": self.expire_ms,
        }

    def summary(self) -> dict[str, Any]:
        """The admin-facing view: everything but the token value."""
        return {
            "type": self.type,
            "fingerprint": self.fingerprint,
            "resources": list(self.resources),
            "expireTime": self.expire_ms,
            "issuedAt": self.issued_ms,
            "clientId": self.client_id,
            # A shared token (tokens/sharing.py) is stored under the empty subject, which
            # no identity can have.
            "shared": self.subject == "",
        }
