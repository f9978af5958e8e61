"""The token service: reuse a cached token while it is fresh, else mint one, once per key."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from authserver import background
from authserver.bounded import ExpiringMap, weight
from authserver.clock import Clock
from authserver.errors import RateLimited, ServiceUnavailable, StoreUnavailable
from authserver.policy.model import MAX_TTL_SECONDS, MIN_TTL_SECONDS
from authserver.tokens.model import (
    ACTIONS_PARAM,
    DEFAULT_CACHE_BYTES,
    TokenRecord,
    claim_names_of,
    record_weight,
    token_key,
)
from authserver.tokens.sharing import (
    IDENTICAL_GRANTS,
    OFF,
    SHARED_SUBJECT,
    Holder,
    lifetime_class,
    shared_token_key,
)
from authserver.tokens.store import (
    CLAIM_EPOCH,
    CLIENT_EPOCH,
    HELD_BY_SUBJECT,
    SUBJECT_EPOCH,
    EpochName,
    Epochs,
    TokenStore,
)

log = logging.getLogger(__name__)

# The upstream's token lifetimes, defined once with the policy's bounds (which are the same).
MIN_TTL = MIN_TTL_SECONDS
MAX_TTL = MAX_TTL_SECONDS
BROKER_NOTICE_SECONDS = 300
# ExpireTime must be at least 60 s ahead when the upstream receives it, not when we send it.
MIN_TTL_SLACK_MS = 2000
RENEW_DEADLINE = 30.0
# Distinct token times kept as one object each (`TokenService._shared_ms`), then anew.
RECENT_MS = 64

Minter = Callable[[str, tuple[str, ...], str, int, float], Awaitable[str]]
LostMint = Callable[[str, TokenRecord], Awaitable[None]]
Escaped = Callable[[list[tuple[str, TokenRecord]]], Awaitable[object]]
# Refuses (raises) when the app JWT behind a request is blocked, as the shared state says.
Confirm = Callable[[], Awaitable[None]]


class RevokedWhileIssuing(ServiceUnavailable):
    """A revocation (subject, clientId, claim value) landed while the token was minted: kept back.

    Answered 503 with Retry-After: the retry meets the revocation's block (401
    `token_revoked` for an app JWT issued before it) or, without a block, gets a new token.
    """


@dataclass
class _Epoch:
    """The revocation epochs one request mints under, read before its first await.

    `value`: its subject's and clientId's (`epoch_names`), which the store checks as it
    writes; `claims`: its revocable claim values' (`TokenRequest.marks`), read just after
    and checked once its tokens are stored (`TokenService._check_claim_epochs`).
    """

    value: Epochs | None = None
    claims: Epochs = ()
    # Whether `TokenRequest.confirm` ran (after the epochs were read): once per request.
    confirmed: bool = False


# Who holds shared tokens (subject, clientId, claim marks) -> (until ms, the tokens whose
# holdings this process wrote for them): one entry a device, whatever its token count.
Holding = tuple[str, str | None, tuple[str, ...]]
HeldTokens = tuple[int, tuple[str, ...]]
# What a remembered holding costs beyond its strings: the map's slot, the value's tuples
# and its expiry (calibrated with tracemalloc, tests/tokens/test_sharing.py).
HELD_OVERHEAD = 260


def held_weight(holding: Holding, held: HeldTokens) -> int:
    """Roughly the bytes one remembered holding keeps alive, for `_held_here`'s byte bound.

    The tokens count although they are the shared records' strings: an entry keeps them
    alive once a record is rotated out. A device chooses the rest (its subject and claim
    values, up to the JWT's size; its clientId), so they are what a hostile one makes large.
    """
    strings = weight(holding) + sum([40 + len(token) for token in held[1]])
    return HELD_OVERHEAD + strings + 8 * len(held[1])


def epoch_names(request: TokenRequest) -> tuple[EpochName, ...]:
    """The revocation epochs that guard `request`'s tokens: its subject's, its clientId's."""
    if request.client_id is None:
        return ((SUBJECT_EPOCH, request.subject),)
    return ((SUBJECT_EPOCH, request.subject), (CLIENT_EPOCH, request.client_id))


def clamp_ttl(ttl: float) -> int:
    """A token lifetime the upstream accepts: within [60 s, 30 days]."""
    return int(min(max(ttl, MIN_TTL), MAX_TTL))


def refresh_margin_for(ttl: int, margin: float) -> int:
    """Seconds before expiry at which a token stops being handed out.

    The broker warns 5 minutes ahead, so the margin is at least that when the token
    lives long enough; a short-lived token is refreshed at half its life.
    """
    return int(min(max(margin, BROKER_NOTICE_SECONDS), ttl / 2))


@dataclass(frozen=True)
class TokenRequest:
    """What one device asked for, after the policy decided."""

    subject: str
    client_id: str | None
    read: tuple[str, ...]
    write: tuple[str, ...]
    ttl: int
    claims: Mapping[str, Any] = field(default_factory=dict)
    # The identity's revocable claim values (tokens/revocable.py): kept with its tokens.
    marks: tuple[str, ...] = ()
    # Checks the app JWT against the blocks in the shared state (`Revoker.confirm`) before
    # anything is minted or held for it, once its epochs are read: another process's block
    # may not have reached this one's mirror yet, while its epoch move already has.
    confirm: Confirm | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class MqttCredentials:
    """What a device needs to connect: username, password and the tokens behind them."""

    instance_id: str
    username: str
    password: str
    tokens: tuple[TokenRecord, ...]
    expire_ms: int
    refresh_at_ms: int
    keys: tuple[str, ...] = ()
    renew_at_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of POST /v1/token."""
        return {
            "instanceId": self.instance_id,
            "username": self.username,
            "password": self.password,
            "tokens": [t.public() for t in self.tokens],
            "expireTime": self.expire_ms,
            "refreshAt": self.refresh_at_ms,
        }


def _retired_key(key: str, previous: TokenRecord) -> str:
    """Where a token replaced by a renewal is kept while it is still valid upstream."""
    return f"{key}~{previous.fingerprint}"


def token_specs(read: tuple[str, ...], write: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The tokens to hold: one `RW` when both sets are equal, else one per non-empty set."""
    if read and read == write:
        return [("RW", read)]
    specs: list[tuple[str, tuple[str, ...]]] = []
    if read:
        specs.append(("R", read))
    if write:
        specs.append(("W", write))
    return specs


class TokenService:
    """Hands out MQTT tokens: from the store while fresh, else one ApplyToken per key."""

    def __init__(
        self,
        mint: Minter,
        store: TokenStore,
        *,
        instance_id: str,
        access_key_id: str,
        clock: Clock,
        refresh_margin: float = 600.0,
        lock_ttl: float = 10.0,
        l1_size: int = 200_000,
        l1_bytes: int = DEFAULT_CACHE_BYTES,
        poll_interval: float = 0.02,
        sharing: str = OFF,
    ) -> None:
        self._mint = mint
        self.store = store
        self.instance_id = instance_id
        self._username = f"Token|{access_key_id}|{instance_id}"
        self._clock = clock
        self._margin = refresh_margin
        self._lock_ttl = lock_ttl
        self._poll = poll_interval
        self._flights: dict[str, asyncio.Task[TokenRecord]] = {}
        # L1: in front of a shared store, entries live only while fresh; the invalidation
        # bus drops them everywhere on revocation. The memory store needs no L1.
        self._l1: ExpiringMap[str, TokenRecord] | None = None
        if store.shared:
            self._l1 = ExpiringMap(
                l1_size,
                lambda record: record.refresh_at_ms,
                max_bytes=l1_bytes,
                weigh=record_weight,
            )
        # Bumped by every invalidation: an L1 entry or an answer built across one is not
        # kept, since the tokens it was built from may be the very ones just revoked.
        self.generation = 0
        # The times of the tokens minted lately, one int object each (`_shared_ms`).
        self._recent_ms: dict[int, int] = {}
        self.hits = {"l1": 0, "store": 0}
        self.misses = 0
        self.minted = 0
        self._renewing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Set by the revoker: revokes upstream a token minted across a revocation.
        self.on_lost_mint: LostMint | None = None
        # Set by the revoker: revokes (everywhere) tokens stored across a revocation of one
        # of their claim values, which the revocation's listing may have missed.
        self.on_escaped: Escaped | None = None
        self.lost_mints = 0
        # Token sharing (tokens/sharing.py): which holdings of which tokens this process has
        # written to the shared store already (`Holding`), so a repeat writes nothing.
        self.sharing = sharing == IDENTICAL_GRANTS
        # Keyed with the holder's claim values too: the same subject and clientId signed in
        # with other values is indexed under those as well. Bounded by bytes as L1 is (a
        # device makes its entry as large as its JWT and body allow). Forgetting one is
        # safe: the next request writes those holdings again (the store keeps each once),
        # after the shared blocks and the epochs are read as for a first holding; only what
        # it remembers saves that work. Only in front of Redis, which keeps a holding as
        # long as its token: the memory store forgets its oldest holdings when full, and a
        # holding remembered here would then never be written again, so a revocation of
        # its holder would not find the shared token (and a write there costs no trip).
        self._held_here: ExpiringMap[Holding, HeldTokens] = ExpiringMap(
            l1_size if self.sharing and store.shared else 0,
            lambda held: held[0],
            max_bytes=l1_bytes,
            weigh=held_weight,
        )

    def _shared_ms(self, value: int) -> int:
        """One int object for each time of the tokens minted together (32 bytes a time each).

        The R and W token of one request are minted in the same millisecond, nearly always:
        their records then hold the same issue, expiry and refresh times.
        """
        times = self._recent_ms
        found = times.get(value)
        if found is None:
            if len(times) >= RECENT_MS:
                times.clear()
            times[value] = found = value
        return found

    def drop(self, keys: Iterable[str]) -> None:
        """Forget these keys' L1 entries: an invalidation (see tokens/issuer.py)."""
        self.generation += 1
        if self._l1 is not None:
            for key in keys:
                self._l1.pop(key)

    def clear(self) -> None:
        """Forget every L1 entry: events may have been missed (see tokens/issuer.py).

        And the holdings remembered as written: a resync follows a break with Redis, which
        may have lost them (a failover to a replica they had not reached yet), and one not
        written again would hide its shared tokens from its holder's revocation.
        """
        self.generation += 1
        if self._l1 is not None:
            self._l1.clear()
        self._held_here.clear()

    async def lookup(self, token: str) -> TokenRecord | None:
        """A token we issued and still hold, by value."""
        found = await self.store.lookup(token)
        return None if found is None else found[1]

    async def subject_tokens(self, subject: str) -> list[TokenRecord]:
        """The subject's live tokens: its own, and the shared ones it was handed."""
        own = [record for _key, record in await self.store.subject_tokens(subject)]
        shared = [record for _key, record in await self.store.held(HELD_BY_SUBJECT, subject)]
        return own + shared

    async def credentials(self, request: TokenRequest, deadline: float) -> MqttCredentials:
        """MQTT credentials for `request`; `deadline` is an absolute monotonic time.

        An invalidation (revocation) that lands while the tokens are being gathered may be
        about exactly these tokens: they are then checked against the store, which a
        revocation clears before it tells anyone, and gathered again if one is gone.

        A revocation of the whole subject, or of a clientId, moves its epoch
        (`TokenStore.bump_epoch`) before it lists the tokens it revokes. Every mint of this
        request happens under the epochs (`epoch_names`) read before its first store read
        (L1 hits need none), gathering again included: a record minted under an older epoch
        is never stored (the store checks the epochs as it writes) and is revoked upstream,
        and tokens minted and stored before the move (which the revocation then purged) are
        not answered either: `RevokedWhileIssuing`. Before it mints, a request checks its
        JWT against the shared blocks (`request.confirm`): a revocation writes its block
        before it moves the epoch, so one whose epoch move was read is refused there.
        """
        if self.sharing:
            # Shared tokens live in lifetime classes: asked 3000 s, a device shares the
            # 1800 s token of every other device whose grant is the same.
            request = replace(request, ttl=lifetime_class(request.ttl))
        epoch = _Epoch()
        for _attempt in range(3):
            generation = self.generation
            found = await self._gather(request, deadline, epoch)
            if self.generation == generation or await self._still_stored(found):
                return found
        raise ServiceUnavailable(
            "the tokens were revoked while being issued; try again",
            headers={"Retry-After": "1"},
        )

    async def _still_stored(self, found: MqttCredentials) -> bool:
        for key, record in zip(found.keys, found.tokens, strict=True):
            current = await self.store.get(key, record.subject)
            if current is None or current.token != record.token:
                return False
        return True

    def _key(self, request: TokenRequest, kind: str, resources: tuple[str, ...]) -> str:
        """The key of one token of `request`: per subject and clientId, or per grant."""
        if self.sharing:
            return shared_token_key(self.instance_id, kind, resources, request.ttl)
        return token_key(
            self.instance_id,
            request.subject,
            kind,
            resources,
            request.ttl,
            request.client_id,
            request.marks,
        )

    def _owner(self, request: TokenRequest) -> str:
        """Whose records `request`'s tokens are in the store (the store's subject argument)."""
        return SHARED_SUBJECT if self.sharing else request.subject

    async def _hold(self, request: TokenRequest, records: list[TokenRecord], epoch: _Epoch) -> None:
        """Note who is handed shared tokens, then refuse the request if it was revoked meanwhile.

        The holding is written before the epoch is read again, and a revocation moves the
        epoch before it lists the holdings: either it sees this holding (and rotates the
        token) or this request sees the moved epoch. A request that read the store at all
        (`epoch.value` set) checks the epoch even with nothing new to write: it may have read
        the replacement of a token rotated for its own revocation.
        """
        here = (request.subject, request.client_id, request.marks)
        known = self._held_here.get(here, self._clock.time() * 1000)
        fresh = [r for r in records if known is None or r.token not in known[1]]
        if not fresh and epoch.value is None:
            return  # nothing awaited: no revocation could land in between
        if epoch.value is None:
            await self._read_epochs(request, epoch)
        if fresh:
            await self._confirm(request, epoch)
        holder = Holder(request.subject, request.client_id, request.claims, request.marks)
        for record in fresh:
            await self.store.hold(record, holder)
        if await self._epochs(request) != epoch.value:
            raise self._revoked_while_issuing()
        # The same for its claim values: a revocation of one lists the holdings by value.
        if request.marks and await self._claim_epochs(request.marks) != epoch.claims:
            raise self._revoked_while_issuing()
        if fresh:
            # Remembered only now: a holding written across a revocation whose listing
            # missed it must be written (and its JWT checked against the shared blocks)
            # again on the retry, or a JWT blocked meanwhile would be handed the token.
            tokens = tuple(r.token for r in records)
            until = min(r.expire_ms for r in records)
            self._held_here.put(here, (until, tokens), self._clock.time() * 1000)

    async def _read_epochs(self, request: TokenRequest, epoch: _Epoch) -> None:
        """Read the epochs a request mints under: its subject's and clientId's, then claims'."""
        names = epoch_names(request)
        claims = tuple((CLAIM_EPOCH, mark) for mark in request.marks)
        read = await self.store.epochs(names + claims)  # one round trip for them all
        epoch.value, epoch.claims = read[: len(names)], read[len(names) :]

    @staticmethod
    async def _confirm(request: TokenRequest, epoch: _Epoch) -> None:
        """Refuse a blocked JWT by the shared blocks, once the epochs are read (see `confirm`).

        A revocation writes its block before it moves the epochs: a request that read the
        moved epochs finds the block here; one that read them before finds them moved later.
        """
        if request.confirm is not None and not epoch.confirmed:
            await request.confirm()
            epoch.confirmed = True

    async def _epochs(self, request: TokenRequest) -> Epochs:
        return await self.store.epochs(epoch_names(request))

    async def _claim_epochs(self, marks: tuple[str, ...]) -> Epochs:
        return await self.store.epochs(tuple((CLAIM_EPOCH, mark) for mark in marks))

    async def _gather(
        self, request: TokenRequest, deadline: float, epoch: _Epoch
    ) -> MqttCredentials:
        specs = token_specs(request.read, request.write)
        records: list[TokenRecord | None] = []
        keys: list[str] = []
        missing: list[tuple[int, str, str, tuple[str, ...]]] = []
        for kind, resources in specs:
            key = self._key(request, kind, resources)
            keys.append(key)
            record = await self._cached(key, request, epoch)
            if record is None:
                missing.append((len(records), key, kind, resources))
            else:
                self._refresh_early(key, kind, resources, request, record)
            records.append(record)
        if missing:
            self.misses += len(missing)
            if epoch.value is None:
                await self._read_epochs(request, epoch)
            await self._confirm(request, epoch)
            at = epoch.value
            assert at is not None
            issued = await asyncio.gather(
                *(
                    self._issue(key, kind, res, request, deadline, at)
                    for _i, key, kind, res in missing
                )
            )
            for (index, *_rest), record in zip(missing, issued, strict=True):
                records[index] = record
            # Before the answer goes out (and into the answer cache): a revocation that moved
            # an epoch after these were stored has purged them.
            if await self._epochs(request) != at:
                raise self._revoked_while_issuing()
            if not self.sharing and request.marks:
                minted = [(m[1], record) for m, record in zip(missing, issued, strict=True)]
                await self._check_claim_epochs(request, epoch.claims, minted)
        done = [r for r in records if r is not None]
        if self.sharing:
            await self._hold(request, done, epoch)
        password = "|".join(f"{r.type}|{r.token}" for r in done)
        return MqttCredentials(
            instance_id=self.instance_id,
            username=self._username,
            password=password,
            tokens=tuple(done),
            expire_ms=min(r.expire_ms for r in done),
            refresh_at_ms=min(r.refresh_at_ms for r in done),
            keys=tuple(keys),
            renew_at_ms=min(r.renew_at_ms for r in done),
        )

    def _fresh(self, record: TokenRecord | None) -> bool:
        return record is not None and record.refresh_at_ms > self._clock.time() * 1000

    async def _cached(self, key: str, request: TokenRequest, epoch: _Epoch) -> TokenRecord | None:
        """A fresh token from L1, else from the store (then kept in L1)."""
        l1 = self._l1
        if l1 is not None:
            record = l1.get(key, self._clock.time() * 1000)
            if record is not None:
                self.hits["l1"] += 1
                return record
        if epoch.value is None:
            # Before the first await of the request: a revocation that lands while the store
            # is read moves the epoch, and then no token is minted for this request; one that
            # landed before (its block written before its epoch moved) is met by the check
            # of the shared blocks before a mint (`_confirm`).
            await self._read_epochs(request, epoch)
        generation = self.generation
        record = await self.store.get(key, self._owner(request))
        if record is None or not self._fresh(record):
            return None
        self.hits["store"] += 1
        # Kept in L1 only if no invalidation landed meanwhile: the record read before a
        # revocation must not be put back after the revocation dropped the key.
        if l1 is not None and self.generation == generation:
            l1.put(key, record, self._clock.time() * 1000)
        return record

    def _refresh_early(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        record: TokenRecord,
    ) -> None:
        """Stampede protection: renew a token in use from its renew_at_ms on.

        The first request that comes by starts the renewal in the background; devices keep
        getting the current token meanwhile.
        """
        if self._clock.time() * 1000 < record.renew_at_ms:
            return
        if key in self._flights or key in self._renewing:
            return
        self._renewing.add(key)
        task = asyncio.create_task(self._renew(key, kind, resources, request, record))
        self._background.add(task)
        task.add_done_callback(functools.partial(self._renewed, key))

    def _renewed(self, key: str, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        self._renewing.discard(key)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background token renewal failed: %s", type(task.exception()).__name__)

    async def _renew(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        old: TokenRecord,
    ) -> None:
        deadline = self._clock.monotonic() + RENEW_DEADLINE
        generation = self.generation
        # A shared token is no one subject's: no epoch guards its store (see `_hold`).
        epoch = None if self.sharing else await self._epochs(request)
        marked = not self.sharing and bool(request.marks)
        claims_at = await self._claim_epochs(request.marks) if marked else ()
        if not self.sharing:
            await self._confirm(request, _Epoch())
        owner = self._owner(request)
        # The lock must outlive the renewal's own deadline (quota waits included), or
        # another process would renew the same key at the same time.
        lock_id = await self.store.lock(key, owner, RENEW_DEADLINE + 2.0)
        if lock_id is None:
            return  # another process renews it
        try:
            current = await self.store.get(key, owner)
            if current is None or current.token != old.token:
                return  # renewed elsewhere, or revoked: nothing to do here
            record = await self._apply(
                key, kind, resources, request, deadline, previous=current, epoch=epoch
            )
            if marked:
                # The token it replaces, still held by devices, is kept under its retired key.
                retired = (_retired_key(key, current), current)
                await self._check_claim_epochs(request, claims_at, [(key, record), retired])
            if self._l1 is not None and self.generation == generation:
                self._l1.put(key, record, self._clock.time() * 1000)
        finally:
            await self._unlock(key, owner, lock_id)

    async def _check_claim_epochs(
        self,
        request: TokenRequest,
        read: Epochs,
        stored: list[tuple[str, TokenRecord]],
    ) -> None:
        """Revoke what this mint stored if one of its claim values was revoked meanwhile.

        A revocation by claim value moves the value's epoch, then lists the value's tokens:
        tokens stored before the move are listed, and a mint that stored its tokens after
        the move finds the epoch moved here (it read them before it minted). They are
        revoked everywhere (once: the revoker skips those the listing found) and not
        answered (`RevokedWhileIssuing`, whose retry meets the block).
        """
        if await self._claim_epochs(request.marks) == read:
            return
        self.lost_mints += len(stored)
        log.warning(
            "token(s) %s were minted while a claim value of their identity was being "
            "revoked; revoking them",
            ", ".join(record.fingerprint for _key, record in stored),
        )
        if self.on_escaped is not None:
            await self.on_escaped(stored)
        raise self._revoked_while_issuing()

    async def close(self) -> None:
        """Cancel background renewals and issuances still running (the app is stopping)."""
        await background.stop([*self._background, *self._flights.values()])

    async def _issue(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        deadline: float,
        epoch: Epochs,
    ) -> TokenRecord:
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = self._take_off(key, kind, resources, request, deadline, epoch)
        generation = self.generation
        try:
            record = await self._landing(flight, deadline)
        except RateLimited:
            if not joined:
                raise
            # The flight was charged to whoever started it (its context carries the mint
            # budget's subject): a shared grant's other holders must not get that subject's
            # 429. This request's own budget decides, in a flight of its own.
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight = self._flights.get(key) or self._take_off(
                key, kind, resources, request, deadline, epoch
            )
            record = await self._landing(flight, deadline)
        if self._l1 is not None and self._fresh(record) and self.generation == generation:
            self._l1.put(key, record, self._clock.time() * 1000)
        return record

    async def _landing(self, flight: asyncio.Task[TokenRecord], deadline: float) -> TokenRecord:
        """The flight's record, waited for until `deadline` (the flight itself goes on)."""
        remaining = deadline - self._clock.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(flight), max(remaining, 0.001))
        except TimeoutError as err:
            raise ServiceUnavailable(
                "token issuance did not finish within the request deadline",
                headers={"Retry-After": "1"},
            ) from err

    def _take_off(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        deadline: float,
        epoch: Epochs,
    ) -> asyncio.Task[TokenRecord]:
        """Start the one issuance of `key`, in this request's context (its mint budget)."""
        flight = asyncio.create_task(self._fill(key, kind, resources, request, deadline, epoch))
        self._flights[key] = flight
        flight.add_done_callback(functools.partial(self._landed, key))
        return flight

    def _landed(self, key: str, task: asyncio.Task[TokenRecord]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here so a waiter that gave up leaves no warning

    async def _fill(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        deadline: float,
        epoch: Epochs,
    ) -> TokenRecord:
        owner = self._owner(request)
        while True:
            record = await self.store.get(key, owner)
            if self._fresh(record):
                assert record is not None
                return record
            lock_id = await self.store.lock(key, owner, self._lock_ttl)
            if lock_id is not None:
                try:
                    record = await self.store.get(key, owner)
                    if self._fresh(record):
                        assert record is not None
                        return record
                    return await self._apply(
                        key, kind, resources, request, deadline, previous=record, epoch=epoch
                    )
                finally:
                    await self._unlock(key, owner, lock_id)
            # Another process is minting this very token: wait for it to land.
            if self._clock.monotonic() + self._poll >= deadline:
                raise ServiceUnavailable(
                    "another gateway process is issuing this token; try again",
                    headers={"Retry-After": "1"},
                )
            await self._clock.sleep(self._poll)

    @staticmethod
    def _revoked_while_issuing() -> RevokedWhileIssuing:
        return RevokedWhileIssuing(
            "a revocation of this identity landed while its token was being issued; try again",
            headers={"Retry-After": "1"},
        )

    async def _revoke_lost(self, key: str, record: TokenRecord) -> None:
        """A token minted across a revocation: revoke it upstream, durably."""
        self.lost_mints += 1
        log.warning(
            "token %s was minted while its subject or clientId was being revoked; revoking it",
            record.fingerprint,
        )
        if self.on_lost_mint is None:
            log.error(
                "no revoker: token %s stays valid upstream until it expires", record.fingerprint
            )
            return
        try:
            await self.on_lost_mint(key, record)
        except StoreUnavailable:
            log.error(
                "could not queue the revocation of token %s; it stays valid upstream until %d",
                record.fingerprint,
                record.expire_ms,
            )
            raise

    async def _unlock(self, key: str, subject: str, lock_id: str) -> None:
        # Not cut short by a shutdown's repeated cancellation: a lock left behind makes
        # every other process wait out its TTL for this token (tests/tokens/test_stopping.py).
        try:
            with background.finishing():
                await self.store.unlock(key, subject, lock_id)
        except StoreUnavailable:
            log.warning("could not release an issuance lock; it expires by itself")

    async def _apply(
        self,
        key: str,
        kind: str,
        resources: tuple[str, ...],
        request: TokenRequest,
        deadline: float,
        *,
        previous: TokenRecord | None = None,
        epoch: Epochs | None = None,
    ) -> TokenRecord:
        """Mint one token and store it, unless its subject or clientId was revoked meanwhile."""
        now_ms = self._shared_ms(int(self._clock.time() * 1000))
        ttl_ms = request.ttl * 1000
        if request.ttl <= MIN_TTL:
            ttl_ms += MIN_TTL_SLACK_MS
        expire_ms = self._shared_ms(now_ms + ttl_ms)
        budget = deadline - self._clock.monotonic()
        token = await self._mint(
            self.instance_id, resources, ACTIONS_PARAM[kind], expire_ms, budget
        )
        margin_ms = refresh_margin_for(request.ttl, self._margin) * 1000
        claims: Mapping[str, Any]
        marks: tuple[str, ...] = ()
        if self.sharing:
            # Everyone's and no one's: the holders are kept beside it (`_hold`), and the
            # requester's epochs do not guard it (the requester is refused instead).
            subject, client_id, claims, epoch = SHARED_SUBJECT, None, {}, None
        else:
            subject, client_id, claims = request.subject, request.client_id, request.claims
            marks = request.marks
        record = TokenRecord(
            token=token,
            type=kind,
            resources=resources,
            expire_ms=expire_ms,
            refresh_at_ms=self._shared_ms(expire_ms - margin_ms),
            issued_ms=now_ms,
            subject=subject,
            instance_id=self.instance_id,
            client_id=client_id,
            claims=claims,
            claim_names=claim_names_of(claims),
            marks=marks,
        )
        self.minted += 1
        stored = True
        if previous is not None and previous.expire_ms > now_ms:
            # Devices still hold the token being replaced and it stays valid upstream until
            # it expires: keep it findable (by subject, client and value) for revocation and
            # policy narrowing, under a key no request looks up.
            retired = _retired_key(key, previous)
            stored = await self.store.put(retired, previous, epochs=epoch)
        if not stored or not await self.store.put(key, record, epochs=epoch):
            await self._revoke_lost(key, record)
            raise self._revoked_while_issuing()
        log.debug(
            "minted %s token %s for subject key %s (%d resources)",
            kind,
            record.fingerprint,
            key[:8],
            len(resources),
        )
        return record
