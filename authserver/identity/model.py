"""What the verifier is configured with, and what it says about a caller."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.errors import InvalidToken
from authserver.settings import JWTSettings

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Claims(Mapping[str, Any]):
    """A JWT's claims, read-only and compact: their values, and names shared by many JWTs.

    The verifier remembers up to 100,000 identities, whose JWTs nearly all name the same
    claims: one name -> position table per set of names, and a tuple of values each, cost
    140 bytes where a dict behind a MappingProxyType cost 330.
    """

    __slots__ = ("_names", "_values", "memo")

    def __init__(self, names: Mapping[str, int], values: tuple[Any, ...]) -> None:
        self._names = names  # name -> position in values, in the JWT's order; shared
        self._values = values
        # Where the policy in force keeps what it derived from these claims (their key, what
        # token records keep of them), tagged with that policy: one slot rather than maps
        # keyed by each claims object's id (policy/holder.py).
        self.memo: Any = None

    def __getitem__(self, name: str) -> Any:
        return self._values[self._names[name]]

    def get(self, name: str, default: Any = None) -> Any:
        """The claim's value, or `default` when the JWT has no such claim."""
        at = self._names.get(name)
        return default if at is None else self._values[at]

    @property
    def value_tuple(self) -> tuple[Any, ...]:
        """The values in the JWT's order, without a view: what the verifier's byte bound weighs."""
        return self._values

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Claims({dict(self)!r})"


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
    # Which verification key signed the JWT (the verifier forgets its JWTs when a key leaves
    # the JWKS): here rather than in a pair beside each remembered identity (56 bytes a JWT).
    key_ref: str = field(default="", compare=False, repr=False)


def invalid_token(detail: str) -> InvalidToken:
    """An InvalidToken carrying the RFC 6750 challenge for a bad bearer token."""
    return InvalidToken(detail, headers=BEARER_CHALLENGE)


__all__ = ["Identity", "JWTSettings", "invalid_token"]
