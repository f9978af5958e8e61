"""The revoker: admin revocations, issued-before blocks, purges of every cache, epochs.

Blocks are mirrored in every process and kept coherent through the invalidation bus; the
upstream RevokeToken calls go through the durable queue of the state (see `worker.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from authserver.clock import Clock
from authserver.errors import (
    ClaimNotRevocable,
    RevocationNotReplicated,
    StoreUnavailable,
    TokenRevoked,
)
from authserver.fingerprint import fingerprint
from authserver.identity import Identity
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.model import TokenRecord
from authserver.tokens.revocable import SEPARATOR, carried_marks, mark, overflow_mark
from authserver.tokens.revocation.state import (
    CLAIM,
    CLIENT,
    SUBJECT,
    MemoryState,
    RevocationState,
    prune_entries,
)
from authserver.tokens.service import TokenService
from authserver.tokens.store import (
    CLAIM_EPOCH,
    CLIENT_EPOCH,
    HELD_BY_CLAIM,
    HELD_BY_CLIENT,
    HELD_BY_SUBJECT,
    SUBJECT_EPOCH,
    token_hash,
)

log = logging.getLogger(__name__)

# Unknown tokens have no known expiry; 30 days is the longest any token can live.
MAX_TOKEN_LIFE_MS = 30 * 24 * 3600 * 1000
# How long an issued-before block is kept (AUTHSERVER_REVOCATION_BLOCK_RETENTION): it refuses
# the app JWTs issued before it, and once the last of them has expired it refuses nothing
# that the verifier would not refuse anyway. 30 days covers app JWTs that live up to 30 days
# less the leeway; a longer-lived issuer needs a longer retention.
BLOCK_RETENTION = 30 * 24 * 3600.0


class ClientIdsOf(Protocol):
    """(subject, claims) -> every clientId the policy lets that identity use.

    `remember=False`: asked once per mint, with no clientId block to check on every request,
    a memo of the answer would be an entry a device (246 bytes) that nothing reads again.
    """

    def __call__(
        self, subject: str, claims: Mapping[str, Any], *, remember: bool = True
    ) -> Iterable[str]:
        """The clientIds, from the policy's memo when it holds them."""
        ...


@dataclass(frozen=True)
class RevocationResult:
    """What one admin revocation did."""

    revoked_locally: int
    queued: int
    blocked_before_ms: int | None
    fingerprints: tuple[str, ...]
    # Epoch ms before which the upstream revocation is held back (a grace margin), if any.
    upstream_after_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of POST /v1/admin/revoke."""
        answer: dict[str, Any] = {
            "revokedLocally": self.revoked_locally,
            "queued": self.queued,
            "blockedIssuedBefore": self.blocked_before_ms,
            "fingerprints": list(self.fingerprints),
        }
        if self.upstream_after_ms is not None:
            answer["upstreamRevocationAfter"] = self.upstream_after_ms
        return answer


class Revoker:
    """Admin revocations and the local mirror of blocks, kept coherent through the bus."""

    def __init__(
        self,
        tokens: TokenService,
        state: RevocationState,
        bus: InvalidationBus,
        *,
        clock: Clock,
        client_ids: ClientIdsOf | None = None,
        block_retention: float = BLOCK_RETENTION,
        revocable_claims: frozenset[str] = frozenset(),
    ) -> None:
        self.tokens = tokens
        self.state = state
        self.bus = bus
        self._clock = clock
        self._client_ids = client_ids
        self._block_retention_ms = int(block_retention * 1000)
        self._blocks: dict[str, dict[str, int]] = {SUBJECT: {}, CLIENT: {}, CLAIM: {}}
        self.revocable_claims = revocable_claims
        # The claim names that have blocks (None: to be worked out again from the blocks).
        self._blocked_claims: frozenset[str] | None = frozenset()
        # In the embedded mode every block is made here; with Redis they must be read first
        # (readiness waits for it, so a restarted pod never serves a blocked JWT).
        self.blocks_loaded = state.mode == MemoryState.mode
        bus.on_event(self._on_event)
        bus.on_resync(self.resync)
        tokens.on_lost_mint = self.revoke_unstored
        tokens.on_escaped = self._revoke_escaped

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    async def resync(self) -> None:
        """Reload blocks: events may have been missed (the token caches flush themselves)."""
        stored = await self.state.blocks()
        # Merged, not replaced: a block made here while the read was in flight stays.
        for scope, entries in stored.items():
            mine = self._blocks.setdefault(scope, {})
            for name, before in entries.items():
                mine[name] = max(before, mine.get(name, 0))
        self._blocked_claims = None
        self.blocks_loaded = True

    async def maintain(self) -> int:
        """Prune the blocks older than the retention, here and in the state; how many went.

        Every process prunes its own mirror; the shared state is pruned by whichever process
        comes first (the others find nothing left to delete).
        """
        older_than = self._now_ms() - self._block_retention_ms
        prune_entries(self._blocks, older_than)
        self._blocked_claims = None
        pruned = await self.state.prune_blocks(older_than)
        if pruned:
            log.info("pruned %d revocation block(s) older than the retention", pruned)
        return pruned

    def _on_event(self, event: dict[str, Any]) -> None:
        # `tokens` and `flush` events are the token caches' own (tokens/issuer.py).
        if event.get("kind") == "block":
            scope, name, before = event.get("scope"), event.get("name"), event.get("before_ms")
            if scope in self._blocks and isinstance(name, str) and isinstance(before, int):
                entries = self._blocks[scope]
                entries[name] = max(before, entries.get(name, 0))
                if scope == CLAIM:
                    self._blocked_claims = None

    def check(self, identity: Identity, client_id: str | None) -> None:
        """Refuse an app JWT issued before a block of its subject or of one of its clientIds.

        Its clientIds are every one the policy lets the identity use (``client_ids``), not
        only the one it asks with: a blocked device cannot step round its block by naming
        another clientId, or none.
        """
        blocks = self._blocks
        before = blocks[SUBJECT].get(identity.subject)
        if before is not None:
            self._refuse_if_before(identity, SUBJECT, before)
        if blocks[CLAIM]:
            self._check_claims(identity)
        client_blocks = blocks[CLIENT]
        if not client_blocks:  # the usual case: nothing to look up
            return
        for name in self._client_names(identity, client_id):
            before = client_blocks.get(name)
            if before is not None:
                self._refuse_if_before(identity, CLIENT, before)

    async def confirm(self, identity: Identity, client_id: str | None) -> None:
        """`check` against the blocks in the state, not this process's mirror of them.

        Called once per mint, after its epochs were read (`TokenRequest.confirm`), and by
        every device-credential request (web/device_credential.py) before the upstream: the
        mirror learns another process's block from the bus, later than the state, and a
        revocation writes its block before it moves the epochs. So a mint that read the
        moved epochs reads the block here and is refused (the same 401 as `check`), and one
        that read them before the move is caught by the epochs (`TokenService`). What is
        read is kept in the mirror, as `resync` keeps it.
        """
        names = self._blocked_claims
        if names is None:
            names = frozenset(m.split(SEPARATOR, 1)[0] for m in self._blocks[CLAIM])
        # A claim block is made only for a revocable claim (`revoke_claim`).
        claim_names = self.revocable_claims | names
        wanted = {
            SUBJECT: (identity.subject,),
            # Once per mint: remembered only when the clientId blocks make `check` ask too.
            CLIENT: tuple(self._client_names(identity, client_id, remember=False)),
            CLAIM: tuple(carried_marks(identity.claims, claim_names)),
        }
        found = await self.state.blocks_of(wanted)
        for scope, entries in found.items():
            mine = self._blocks[scope]
            for name, before in entries.items():
                if before > mine.get(name, 0):
                    mine[name] = before
                    if scope == CLAIM:
                        self._blocked_claims = None
        self.check(identity, client_id)

    def _client_names(
        self, identity: Identity, client_id: str | None, *, remember: bool = True
    ) -> set[str]:
        """The clientId asked with and every one the policy lets the identity use."""
        names = set() if client_id is None else {client_id}
        if self._client_ids is not None:
            names.update(self._client_ids(identity.subject, identity.claims, remember=remember))
        return names

    def _check_claims(self, identity: Identity) -> None:
        """Refuse an app JWT issued before a block of a claim value it carries.

        Every value it carries counts, however many (a block is not bound by the index's
        `MAX_MARKED_VALUES`), for every claim that has a block, named in the setting or not.
        """
        claim_blocks = self._blocks[CLAIM]
        names = self._blocked_claims
        if names is None:
            names = frozenset(m.split(SEPARATOR, 1)[0] for m in claim_blocks)
            self._blocked_claims = names
        for carried in carried_marks(identity.claims, names):
            before = claim_blocks.get(carried)
            if before is not None:
                self._refuse_if_before(identity, "claim value", before)

    @staticmethod
    def _refuse_if_before(identity: Identity, scope: str, before_ms: int) -> None:
        issued = identity.issued_at
        if issued is None or issued * 1000 < before_ms:
            raise TokenRevoked(
                f"this app token was issued before the {scope} was revoked; "
                "sign in again to get a new one",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    async def _publish(self, event: dict[str, Any]) -> None:
        try:
            await self.bus.publish(event)
        except (RedisError, OSError) as err:
            raise StoreUnavailable(
                "the revocation is stored but other processes could not be told; retry"
            ) from err

    async def _block(self, scope: str, name: str) -> int:
        before = self._now_ms()
        await self.state.block(scope, name, before)
        await self._publish({"kind": "block", "scope": scope, "name": name, "before_ms": before})
        return before

    async def revoke_records(
        self,
        records: list[tuple[str, TokenRecord]],
        extra_tokens: Iterable[str] = (),
        *,
        grace: float = 0.0,
    ) -> RevocationResult:
        """Queue upstream revocation, mark revoked, purge the store and every L1.

        A shared record among them (tokens/sharing.py) is rotated by this: dropped for every
        holder, whose next request mints its replacement.

        `grace` seconds (on the injected clock) hold the upstream revocation back: the tokens
        are dropped from every cache now, so the next request mints a new one, while the
        devices holding the old ones stay connected until then.
        """
        records = list({record.token: (key, record) for key, record in records}.values())
        now = self._now_ms()
        after = now + int(grace * 1000) if grace > 0 else None
        instance = self.tokens.instance_id
        jobs = [(record.token, record.instance_id) for _key, record in records]
        jobs += [(token, instance) for token in extra_tokens]
        # Durable first: nothing lost after this.
        unreplicated: RevocationNotReplicated | None = None
        try:
            queued = await self.state.enqueue(jobs, now, not_before_ms=after or 0)
        except RevocationNotReplicated as err:
            # The jobs are on the master, only a replica's copy is missing: the tokens leave
            # every cache as for an accepted revocation, and the admin is told to retry.
            unreplicated, queued = err, len(jobs)
        expiries = [(token_hash(r.token), r.expire_ms) for _k, r in records]
        expiries += [(token_hash(t), now + MAX_TOKEN_LIFE_MS) for t in extra_tokens]
        await self.state.mark_revoked(expiries, now)
        keys = [key for key, _record in records]
        try:
            await self.tokens.store.delete_many(records)
        finally:
            # Even after a partial failure: a retry would no longer find the deleted records,
            # so this is the one chance to tell the other processes to drop them.
            if keys:
                await self._publish({"kind": "tokens", "keys": keys})
        if unreplicated is not None:
            raise unreplicated
        return RevocationResult(
            revoked_locally=len(records),
            queued=queued,
            blocked_before_ms=None,
            fingerprints=tuple(fingerprint(token) for token, _instance in jobs),
            upstream_after_ms=after,
        )

    async def revoke_unstored(self, key: str, record: TokenRecord) -> None:
        """Revoke a token that was minted across a revocation and is not stored (any more).

        It was never answered: the upstream revocation is queued, durably, and the token is
        remembered as revoked. A shared store may have held it for a moment (an epoch in
        another slot is checked after the write, `RedisStore.put`), so the other processes
        are told to drop `key` from their caches.
        """
        now = self._now_ms()
        await self.state.enqueue([(record.token, record.instance_id)], now)
        await self.state.mark_revoked([(token_hash(record.token), record.expire_ms)], now)
        if self.tokens.store.shared:
            await self._publish({"kind": "tokens", "keys": [key]})

    async def _revoke_escaped(self, records: list[tuple[str, TokenRecord]]) -> None:
        """Revoke tokens stored across a claim revocation, unless its listing found them.

        The usual case, a renewal's retired token, was listed: revoked once upstream, not
        twice. (Both sides may still queue a token when they run at the same instant;
        RevokeToken is idempotent.)
        """
        now = self._now_ms()
        left = [
            (key, record)
            for key, record in records
            if not await self.state.is_revoked(token_hash(record.token), now)
        ]
        await self.revoke_records(left)
        # Revoked or not, they must leave the store: the listing deleted what it found.
        await self.tokens.store.delete_many([found for found in records if found not in left])

    async def revoke_token(self, token: str, *, grace: float = 0.0) -> RevocationResult:
        """Revoke one token by value (queued upstream even when we never held it)."""
        found = await self.tokens.store.lookup(token)
        if found is not None:
            return await self.revoke_records([found], grace=grace)
        return await self.revoke_records([], extra_tokens=[token], grace=grace)

    async def revoke_subject(
        self, subject: str, *, block_issued_before: bool = True, grace: float = 0.0
    ) -> RevocationResult:
        """Revoke every token of a subject; optionally refuse its older app JWTs.

        The shared tokens it was handed are rotated for all their holders (`revoke_records`).

        The block is written first, then the subject's epoch moves, then the tokens are
        listed: a mint in flight now cannot store its token after the listing (the token
        service revokes it instead), and a mint that reads the moved epoch reads the block
        too (`confirm`), even in a process the bus has not told yet.
        """
        store = self.tokens.store
        before = await self._block(SUBJECT, subject) if block_issued_before else None
        await store.bump_epoch(SUBJECT_EPOCH, subject)
        records = await store.subject_tokens(subject)
        held = await store.held(HELD_BY_SUBJECT, subject)
        result = await self.revoke_records(records + held, grace=grace)
        return _with_block(result, before)

    async def revoke_client(
        self, client_id: str, *, block_issued_before: bool = True, grace: float = 0.0
    ) -> RevocationResult:
        """Revoke every token handed to a client id; optionally refuse older app JWTs for it.

        The block, then the clientId's epoch, then the listing, as a subject's
        (`revoke_subject`).
        """
        store = self.tokens.store
        before = await self._block(CLIENT, client_id) if block_issued_before else None
        await store.bump_epoch(CLIENT_EPOCH, client_id)
        records = await store.client_tokens(client_id)
        held = await store.held(HELD_BY_CLIENT, client_id)
        result = await self.revoke_records(records + held, grace=grace)
        return _with_block(result, before)

    async def revoke_claim(
        self, name: str, value: str, *, block_issued_before: bool = True, grace: float = 0.0
    ) -> RevocationResult:
        """Revoke every token minted for an identity carrying the claim value `name`=`value`.

        Only a claim the setting names (`revocable_claims`): its values are what tokens
        record (tokens/revocable.py). The block refuses the app JWTs carrying the value that
        were issued before now; the tokens are dropped everywhere now and revoked upstream
        after `grace` seconds (`revoke_records`). Tokens of identities with too many values
        of the claim (its overflow mark) are revoked too. The shared tokens their holders
        were handed are rotated for all their holders.
        """
        if name not in self.revocable_claims:
            raise ClaimNotRevocable(
                f"claim {name!r} is not revocable: AUTHSERVER_REVOCABLE_CLAIMS "
                + (
                    "names " + ", ".join(sorted(self.revocable_claims))
                    if self.revocable_claims
                    else "is not set"
                ),
                extra={"field": "claim.name", "revocableClaims": sorted(self.revocable_claims)},
            )
        store = self.tokens.store
        carried = mark(name, value)
        # The block first, then the epochs, as a subject's (`revoke_subject`): a mint in
        # flight that stores its token after the listing below finds them moved
        # (`TokenService._check_claim_epochs`).
        before = await self._block(CLAIM, carried) if block_issued_before else None
        for moved in (carried, overflow_mark(name)):
            await store.bump_epoch(CLAIM_EPOCH, moved)
        records: list[tuple[str, TokenRecord]] = []
        for found in (carried, overflow_mark(name)):
            records += await store.claim_tokens(found)
            records += await store.held(HELD_BY_CLAIM, found)
        result = await self.revoke_records(records, grace=grace)
        return _with_block(result, before)

    async def is_revoked(self, token: str) -> bool:
        """Whether we revoked this token (and it could still be alive)."""
        return await self.state.is_revoked(token_hash(token), self._now_ms())

    async def status(self) -> dict[str, Any]:
        """Queue depth, oldest pending age, recent failures."""
        return await self.state.status(self._now_ms())


def _with_block(result: RevocationResult, before: int | None) -> RevocationResult:
    return RevocationResult(
        result.revoked_locally,
        result.queued,
        before,
        result.fingerprints,
        result.upstream_after_ms,
    )
