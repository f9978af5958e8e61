"""Policy narrowing: which cached tokens a new policy no longer allows, and their revocation.

After a policy change, `narrowed()` finds the cached tokens whose resources the new policy no
longer grants their subject, and `revoke_narrowed` revokes them (upstream too, through the
durable revocation queue). Each record is judged with the claims it kept of its identity
(normally the whole set, see `KeptClaims`), so a new policy reading a claim the old one ignored
still sees its value.

A shared record (tokens/sharing.py) is judged for each of its holders, with the claims and
clientId each was handed it with: if the new policy narrows it for any of them, it is
revoked, which rotates it for all (the others get the same grant again under a new token,
the narrowed ones a smaller grant under another key). A record whose holder list stopped
growing at `MAX_HOLDERS` cannot be judged for the holders it does not know, and rotates on
every sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from authserver.policy.claims import referenced_claims
from authserver.policy.engine import evaluate
from authserver.policy.model import Policy
from authserver.tokens.model import TokenRecord
from authserver.tokens.sharing import SHARED_SUBJECT, Holder
from authserver.topics import FilterSet

if TYPE_CHECKING:
    from authserver.tokens.revocation import Revoker
    from authserver.tokens.service import TokenService

log = logging.getLogger(__name__)

# Yield to the event loop this often while re-evaluating many cached tokens.
NARROW_BATCH = 256

_TYPE_ACTIONS = {"R": ("R",), "W": ("W",), "RW": ("R", "W")}

# A shared record -> its holders, and whether that list is complete (`TokenStore.holders`).
HoldersOf = Callable[[TokenRecord], Awaitable[tuple[list[Holder], bool]]]


def exceeds(record: TokenRecord, grants: dict[str, FilterSet]) -> bool:
    """Whether `record` grants a resource outside `grants` for one of its actions."""
    for action in _TYPE_ACTIONS.get(record.type, ("R", "W")):
        allowed = grants[action]
        if any(not allowed.covers(resource) for resource in record.resources):
            return True
    return False


async def narrowed(
    policy: Policy,
    records: AsyncIterator[tuple[str, TokenRecord]] | Iterable[tuple[str, TokenRecord]],
    holders_of: HoldersOf | None = None,
) -> list[tuple[str, TokenRecord]]:
    """The (key, record) pairs granting more than `policy` now grants their subject.

    A record that kept only some claims (`TokenRecord.claim_names`) may lack one `policy`
    reads. The policy only grants (default deny, no deny rules), so a missing claim can only
    take grants away: a record inside what its known claims grant is allowed whatever the
    missing one holds, and is kept. A record beyond that may or may not be allowed; it cannot
    be proven allowed, so it is returned too (revoked: the safe side, since dropping it only
    from the cache would leave a possibly forbidden token valid upstream until it expires;
    its device gets a new token, if still allowed, on its next request) and logged.
    """
    needed = referenced_claims(policy)
    decisions: dict[tuple[str, str, str | None], dict[str, FilterSet]] = {}
    found: list[tuple[str, TokenRecord]] = []
    shared: list[tuple[str, TokenRecord]] = []
    unproven = 0
    seen = 0

    def grants_of(
        subject: str, kept: Mapping[str, Any], client_id: str | None
    ) -> dict[str, FilterSet]:
        # Only the claims the policy reads: the decision depends on nothing else.
        claims = {name: kept[name] for name in needed if name in kept}
        cache_key = (subject, repr(sorted(claims.items())), client_id)
        grants = decisions.get(cache_key)
        if grants is None:
            decision = evaluate(policy, subject, claims, client_id)
            grants = {"R": FilterSet(decision.read), "W": FilterSet(decision.write)}
            decisions[cache_key] = grants
        return grants

    def check(key: str, record: TokenRecord) -> None:
        nonlocal unproven
        if record.subject == SHARED_SUBJECT:
            shared.append((key, record))
            return
        if exceeds(record, grants_of(record.subject, record.claims, record.client_id)):
            found.append((key, record))
            if record.claim_names is not None and not needed <= record.claim_names:
                unproven += 1

    if isinstance(records, AsyncIterator):
        async for key, record in records:
            check(key, record)
            seen += 1
            if seen % NARROW_BATCH == 0:
                await asyncio.sleep(0)
    else:
        for key, record in records:
            check(key, record)
            seen += 1
            if seen % NARROW_BATCH == 0:
                await asyncio.sleep(0)
    for key, record in shared:
        holders, complete = ([], False) if holders_of is None else await holders_of(record)
        if not complete or any(
            exceeds(record, grants_of(h.subject, h.claims, h.client_id)) for h in holders
        ):
            found.append((key, record))
        await asyncio.sleep(0)
    if unproven:
        log.warning(
            "policy %s: %d cached token(s) kept too few claims to be proven still allowed "
            "(the policy reads claims they lack); revoking them as narrowed",
            policy.version_id,
            unproven,
        )
    return found


async def revoke_narrowed(tokens: TokenService, revoker: Revoker | None, new: Policy) -> int:
    """Revoke the cached tokens that grant more than the new policy allows; how many."""
    # Every process sweeps when it switches: a replica still on the old policy may mint a
    # wide token until its own watcher sees the change, and its own sweep then catches it.
    # Records revoked by an earlier sweeper are gone from the shared store already.
    doomed = await narrowed(new, tokens.store.all_tokens(), tokens.store.holders)
    if not doomed:
        return 0
    if revoker is None:
        log.error("policy narrowed %d cached token(s) but no revoker is configured", len(doomed))
        return 0
    await revoker.revoke_records(doomed)
    log.warning(
        "policy %s narrowed grants: revoked %d cached token(s) of %d subject(s)",
        new.version_id,
        len(doomed),
        len({record.subject for _key, record in doomed}),
    )
    return len(doomed)
