"""Tokens shared by identical grants: the key, the lifetime classes and who holds a token.

With `AUTHSERVER_TOKEN_SHARING=identical-grants` a token is keyed by the permissions it
carries (instance, type, exact resources, lifetime class), not by the device: every subject
whose grant is identical is handed the same token, and a fleet of N devices under a
tenant-level policy costs one ApplyToken per tenant and token type instead of N.

A shared record is stored once, under the owner `SHARED_SUBJECT` (no identity can have it: the
verifier refuses an empty subject). Who was handed it is kept beside it, per token value:
subject -> tokens, clientId -> tokens and claim value -> tokens (so that revoking one finds
the shared tokens it holds) and token -> holders with their claims (so that policy narrowing
can judge the token for each of them). Revoking one holder (a subject, a clientId or a claim
value) rotates the shared token: the record is dropped everywhere and revoked upstream
through the durable queue, the next request of any other holder mints the replacement (one
ApplyToken for all of them), and the revoked identity is refused by its issued-before block.

The per-subject revocation epoch guards the requester, not the record: a shared record is
stored whatever any one holder's epoch did (it is the others' token too), and a request
answers only if its subject's epoch is unchanged after its holding was written
(`TokenService._hold`), so a request in flight across its own revocation never carries
away the replacement minted for the others.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authserver.settings import TOKEN_SHARING_MODES

OFF, IDENTICAL_GRANTS = TOKEN_SHARING_MODES

# The owner of every shared record in the store (an identity's subject is never empty).
SHARED_SUBJECT = ""

# The lifetimes a shared token may be minted with, in seconds. A request's ttlSeconds is
# rounded down to its class, never up: a device never holds a token longer than it asked, and
# requests asking 3000 s and 3500 s share the 1800 s token instead of minting one each. The
# steps are at most 3.5x apart (2 days -> 7 days), mostly 2x.
LIFETIME_CLASSES = (
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14_400,
    21_600,
    43_200,
    86_400,
    172_800,
    604_800,
    1_209_600,
    2_592_000,
)

# Holders remembered per shared token (for narrowing and listing). Past this, the list is
# marked incomplete and narrowing rotates the token on every policy change, since it cannot
# judge the holders it does not know. Revocation does not depend on it: each subject and
# clientId keeps its own list of the tokens it holds.
MAX_HOLDERS = 100_000


def lifetime_class(ttl: int) -> int:
    """The lifetime a shared token asked for `ttl` seconds gets: the class at or below it."""
    index = bisect.bisect_right(LIFETIME_CLASSES, ttl) - 1
    return LIFETIME_CLASSES[max(index, 0)]


def shared_token_key(
    instance_id: str, token_type: str, resources: tuple[str, ...], ttl_class: int
) -> str:
    """The key of a shared token: what it grants and how long it lives, and nothing else.

    Namespaced apart from `token_key` (a leading marker no per-subject key material has), so
    a shared and a per-subject token never collide when the mode is switched.
    """
    parts = ("shared", instance_id, token_type, ",".join(resources), str(ttl_class))
    material = "\x00".join(parts)
    return "s" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:31]


@dataclass(frozen=True, slots=True)
class Holder:
    """An identity that was handed a shared token: enough to judge its grant again."""

    subject: str
    client_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    # Its revocable claim values (tokens/revocable.py): the holding is indexed under each,
    # so that revoking a claim value rotates the shared tokens its holders were handed.
    # Not kept in the holder list (narrowing does not need them).
    marks: tuple[str, ...] = ()

    def to_list(self) -> list[Any]:
        """The JSON form kept in Redis (without the subject, which is the field name)."""
        return [self.client_id, dict(self.claims)]

    @classmethod
    def from_list(cls, subject: str, data: list[Any]) -> Holder:
        """Parse what to_list wrote."""
        client_id = None if data[0] is None else str(data[0])
        return cls(subject, client_id, dict(data[1] or {}))
