"""The token path's owner, built without a server: one test per row of its invalidation table.

A MemoryStore (or one marked shared, so that the token service puts its L1 in front), a fake
minter, a ManualClock, a real verifier with a static secret, the real revoker and an
in-process bus. `ask` does what the device handler does: repeat, else verify, then answer.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from authserver import logs
from authserver.clock import ManualClock
from authserver.errors import RateLimited, TokenRevoked
from authserver.identity import JWTVerifier
from authserver.identity.model import JWTSettings
from authserver.policy.holder import PolicyHolder
from authserver.policy.loader import parse_policy
from authserver.ratelimit import Limit, RateLimiter
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.issuer import MARKS_MEMO_BYTES, Asked, TokenIssuer
from authserver.tokens.narrowing import revoke_narrowed
from authserver.tokens.revocation import MemoryState, Revoker
from authserver.tokens.service import RevokedWhileIssuing, TokenService
from authserver.tokens.store import MemoryStore
from tests.helpers import eventually

SECRET = "a-test-secret-long-enough-for-hs256-keys"
ISSUER = "https://id.test"
POLICY = """
version: 1
defaults:
  ttlSeconds: 3600
clientIds: ["GID_fleet@@@{claims.device_id}"]
everyone:
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
  - topics: ["broadcast/#"]
    actions: [R]
"""
ASKED = Asked(None, None, None, 3600)
UNLIMITED = Limit(0)
BROADCAST_RULE = '  - topics: ["broadcast/#"]\n    actions: [R]\n'


class SharedMemoryStore(MemoryStore):
    """A MemoryStore the token service treats as shared: it puts its L1 in front."""

    shared = True


@dataclass
class FakeMinter:
    """Mints `tok-N`; holds every mint at `gate` when one is set."""

    minted: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event | None = None

    async def __call__(
        self, instance_id: str, resources: tuple[str, ...], actions: str, expire_ms: int, _b: float
    ) -> str:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        token = f"tok-{len(self.minted)}"
        self.minted.append(token)
        return token


@dataclass
class Kit:
    clock: ManualClock
    store: MemoryStore
    service: TokenService
    issuer: TokenIssuer
    verifier: JWTVerifier
    revoker: Revoker
    bus: InvalidationBus
    holder: PolicyHolder
    minter: FakeMinter
    signed: int = 0

    def jwt(self, sub: str = "dev-1", *, lifetime: int = 3600, **claims: Any) -> str:
        now = int(self.clock.time())
        self.signed += 1  # every JWT its own, as a new sign-in's
        payload = {"sub": sub, "iss": ISSUER, "iat": now, "exp": now + lifetime, **claims}
        payload["jti"] = str(self.signed)
        return jwt.encode(payload, SECRET, algorithm="HS256")

    async def ask(self, token: str, asked: Asked = ASKED, body: bytes = b"") -> list[str]:
        """What the handler does; the token values answered."""
        authorization = f"Bearer {token}"
        repeat = self.issuer.repeated(authorization, body)
        if repeat is not None:
            return tokens_of(repeat.answer.body)
        identity = self.verifier.remembered(token)
        sent_as = None if identity is None else (authorization, body)
        if identity is None:
            identity = await self.verifier.verify(token)
        return tokens_of(await self.issuer.answer(identity, asked, sent_as=sent_as))

    def repeats(self, token: str, body: bytes = b"") -> bool:
        return self.issuer.repeated(f"Bearer {token}", body) is not None

    def remote(self, event: dict[str, Any]) -> None:
        """An event published by another process, as the bus receives it."""
        self.bus._receive(orjson.dumps({**event, "origin": "another-process"}))


def tokens_of(body: bytes) -> list[str]:
    return [t["token"] for t in orjson.loads(body)["tokens"]]


MakeKit = Callable[..., Kit]


@pytest.fixture
def make_kit() -> MakeKit:
    def make(
        *,
        shared: bool = False,
        store_size: int = 1000,
        store_bytes: int = 1 << 30,
        l1_bytes: int = 1 << 30,
        plan_bytes: int = 1 << 30,
        answers: int = 100,
        subject_limit: Limit = UNLIMITED,
        revocable: frozenset[str] = frozenset(),
        marks_bytes: int = MARKS_MEMO_BYTES,
        **jwt_settings: Any,
    ) -> Kit:
        clock = ManualClock()
        store = (SharedMemoryStore if shared else MemoryStore)(
            clock, maxsize=store_size, max_bytes=store_bytes
        )
        minter = FakeMinter()
        service = TokenService(
            minter,
            store,
            instance_id="mqtt-test",
            access_key_id="AK",
            clock=clock,
            l1_bytes=l1_bytes,
        )
        holder = PolicyHolder(
            Path("policy.yaml"), parse_policy(POLICY, "test"), plan_cache_bytes=plan_bytes
        )
        settings = JWTSettings(
            algorithms=("HS256",), issuer=ISSUER, secret=SECRET, leeway=0, **jwt_settings
        )
        verifier = JWTVerifier(settings, clock=clock)
        bus = InvalidationBus(None, clock=clock)
        revoker = Revoker(service, MemoryState(), bus, clock=clock, client_ids=holder.client_ids)
        limiter = RateLimiter(subject=subject_limit, ip=Limit(0), clock=clock)
        issuer = TokenIssuer(
            service,
            holder=holder,
            verifier=verifier,
            revoker=revoker,
            limiter=limiter,
            bus=bus,
            clock=clock,
            request_deadline=5.0,
            answer_cache_size=answers,
            revocable_claims=revocable,
            marks_memo_bytes=marks_bytes,
        )
        return Kit(clock, store, service, issuer, verifier, revoker, bus, holder, minter)

    return make


async def repeating(kit: Kit, token: str) -> list[str]:
    """Ask until the next request is a repeat (the second with a remembered JWT)."""
    first = await kit.ask(token)
    assert await kit.ask(token) == first
    assert kit.repeats(token)
    return first


async def test_a_repeat_and_an_answer_are_served_without_a_mint(make_kit: MakeKit) -> None:
    kit = make_kit()
    token = kit.jwt()
    first = await repeating(kit, token)
    assert await kit.ask(token) == first
    assert kit.minter.minted == first  # the R and the W token, minted once
    assert await kit.ask(kit.jwt()) == first  # a new JWT of the same subject: the answer


async def test_token_revoked_by_value(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    token = kit.jwt()
    read, write = await repeating(kit, token)
    await kit.revoker.revoke_token(read)
    assert len(kit.issuer.answers) == 0
    assert not kit.repeats(token)
    # Not from L1 either: a new read token, the write token from the store.
    again = await kit.ask(token)
    assert read not in again
    assert write in again


async def test_subject_revoked(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    old = kit.jwt()
    first = await repeating(kit, old)
    kit.clock.advance(1)
    await kit.revoker.revoke_subject("dev-1")
    assert len(kit.issuer.answers) == 0
    with pytest.raises(TokenRevoked):
        await kit.ask(old)
    kit.clock.advance(1)
    again = await kit.ask(kit.jwt())  # signed in again
    assert not set(again) & set(first)


async def test_a_block_refuses_repeats_and_answers_before_the_tokens_go(
    make_kit: MakeKit,
) -> None:
    # Another process's block event arrives before its tokens event: the blocks alone
    # refuse the older JWT, on the repeat path and on the answer path.
    kit = make_kit()
    old = kit.jwt()
    await repeating(kit, old)
    other = kit.jwt()  # verified, but never repeated: it meets the answer
    await kit.ask(other)
    kit.clock.advance(1)
    before = int(kit.clock.time() * 1000)
    kit.remote({"kind": "block", "scope": "subject", "name": "dev-1", "before_ms": before})
    assert len(kit.issuer.answers) == 1  # still held: the blocks decide
    with pytest.raises(TokenRevoked):
        kit.repeats(old)
    with pytest.raises(TokenRevoked):
        await kit.ask(other)


async def test_client_id_revoked(make_kit: MakeKit) -> None:
    kit = make_kit()
    old = kit.jwt(device_id="d1")
    asked = Asked("GID_fleet@@@d1", None, None, 3600)
    first = await kit.ask(old, asked)
    await kit.ask(old)  # without naming it: its answer holds none of the clientId's tokens
    kit.clock.advance(1)
    await kit.revoker.revoke_client("GID_fleet@@@d1")
    assert len(kit.issuer.answers) == 1  # the answer without a clientId holds other tokens
    with pytest.raises(TokenRevoked):
        await kit.ask(old, asked)
    with pytest.raises(TokenRevoked):  # any clientId the identity may use is blocked
        await kit.ask(old)
    kit.clock.advance(1)
    assert not set(await kit.ask(kit.jwt(device_id="d1"), asked)) & set(first)


async def test_policy_reload_makes_answers_and_repeats_stale(make_kit: MakeKit) -> None:
    kit = make_kit()
    token = kit.jwt()
    first = await repeating(kit, token)
    kit.holder.swap(parse_policy(POLICY + "# reworded\n", "test"))
    assert not kit.repeats(token)
    misses = kit.issuer.answers.misses
    assert await kit.ask(token) == first  # decided again; the same grants reuse the tokens
    assert kit.issuer.answers.misses == misses + 1
    assert kit.minter.minted == first


async def test_policy_narrowing_revokes_what_it_no_longer_allows(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    token = kit.jwt()
    read, write = await repeating(kit, token)
    narrower = parse_policy(
        POLICY.replace('  - topics: ["broadcast/#"]\n    actions: [R]\n', ""), "t"
    )
    assert await revoke_narrowed(kit.service, kit.revoker, narrower) == 1
    kit.holder.swap(narrower)
    assert len(kit.issuer.answers) == 0
    assert await kit.revoker.is_revoked(read)
    assert not await kit.revoker.is_revoked(write)
    assert read not in await kit.ask(token)


async def test_store_eviction_forgets_answers_without_an_invalidation(
    make_kit: MakeKit,
) -> None:
    kit = make_kit(store_size=2)
    token = kit.jwt("dev-1")
    first = await repeating(kit, token)
    generation = kit.service.generation
    await kit.ask(kit.jwt("dev-2"))  # its two tokens push dev-1's out of the store
    assert kit.service.generation == generation
    assert len(kit.issuer.answers) == 1
    assert not kit.repeats(token)
    assert not set(await kit.ask(token)) & set(first)


async def test_store_eviction_by_bytes_forgets_answers_too(make_kit: MakeKit) -> None:
    # The same row for a store full by bytes: about 1.5 KB a record, 6 KB hold two devices.
    kit = make_kit(store_bytes=6_000)
    tokens = [kit.jwt(f"dev-{n}") for n in range(6)]
    answered = [await kit.ask(token) for token in tokens]
    assert kit.store._records.bytes <= 6_000
    assert 2 <= len(kit.store._records) < 12
    assert not kit.repeats(tokens[0])
    assert len(kit.issuer.answers) == len(kit.store._records) // 2
    assert await kit.ask(tokens[-1]) == answered[-1]  # the newest still answered as before
    minted = len(kit.minter.minted)
    assert not set(await kit.ask(tokens[0])) & set(answered[0])  # the oldest minted anew
    assert len(kit.minter.minted) == minted + 2
    assert kit.store._records.bytes <= 6_000


async def test_l1_bounded_by_bytes_still_answers(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True, l1_bytes=6_000)
    l1 = kit.service._l1
    assert l1 is not None
    tokens = [kit.jwt(f"dev-{n}") for n in range(6)]
    answered = [await kit.ask(token) for token in tokens]
    assert l1.bytes <= 6_000
    assert 2 <= len(l1) < 12
    assert len(kit.store._records) == 12  # the store behind it keeps them all
    kit.issuer.answers.clear()  # so that the next asks go through L1, else the store
    for token, before in zip(tokens, answered, strict=True):
        assert await kit.ask(token) == before
        assert l1.bytes <= 6_000
    assert len(kit.minter.minted) == 12


async def test_remembered_jwts_bounded_by_bytes_still_answer(make_kit: MakeKit) -> None:
    kit = make_kit(cache_bytes=4_000)
    tokens = [kit.jwt(f"dev-{n}", pad="x" * 500) for n in range(12)]
    answered = [await kit.ask(token) for token in tokens]
    cache = kit.verifier._cache
    assert cache.bytes <= 4_000
    assert 1 <= len(cache) < 12
    assert kit.verifier.remembered(tokens[0]) is None  # the oldest went for room
    for token, before in zip(tokens, answered, strict=True):  # verified again where needed
        assert await kit.ask(token) == before
        assert cache.bytes <= 4_000
    assert len(kit.minter.minted) == 24


async def test_plans_bounded_by_bytes_still_decide(make_kit: MakeKit) -> None:
    kit = make_kit(plan_bytes=2_000)
    plans = kit.holder._plans
    tokens = [kit.jwt(f"dev-{n}") for n in range(10)]
    for token in tokens:
        await kit.ask(token)
        assert plans.bytes <= 2_000
    assert 1 <= len(plans) < 10
    kit.issuer.answers.clear()  # the plans are asked again; the evicted ones worked out anew
    for n, token in enumerate(tokens):
        identity = await kit.verifier.verify(token)
        plan = kit.holder.plan(identity.subject, identity.claims, None, None, None)
        assert plan.write == (f"devices/dev-{n}/#",)
        assert plans.bytes <= 2_000


async def test_store_expiry_forgets_answers(make_kit: MakeKit) -> None:
    kit = make_kit()
    token = kit.jwt(lifetime=10 * 3600)
    await repeating(kit, token)
    kit.clock.advance(3600)  # the tokens expired: the store lets them go when it meets them
    assert len(kit.issuer.answers) == 1
    assert await kit.store.subject_tokens("dev-1") == []
    assert len(kit.issuer.answers) == 0


async def test_bus_drop_from_another_process(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    token = kit.jwt()
    read, write = await repeating(kit, token)
    # The other process deleted the record from the shared store and says so.
    for key, record in await kit.store.subject_tokens("dev-1"):
        if record.token == read:
            await kit.store.delete(key, record)
            kit.remote({"kind": "tokens", "keys": [key]})
    assert len(kit.issuer.answers) == 0
    assert not kit.repeats(token)
    again = await kit.ask(token)
    assert read not in again  # L1 let it go too
    assert write in again


@pytest.mark.parametrize("how", ["resync", "flush"])
async def test_missed_events_flush_every_layer(make_kit: MakeKit, how: str) -> None:
    kit = make_kit(shared=True)
    token = kit.jwt()
    first = await repeating(kit, token)
    generation = kit.service.generation
    # Deleted elsewhere, and the event was missed.
    for key, record in await kit.store.subject_tokens("dev-1"):
        await kit.store.delete(key, record)
    if how == "resync":
        for resync in kit.bus._resyncs:
            await resync()
    else:
        kit.remote({"kind": "flush"})
    assert kit.service.generation > generation
    assert len(kit.issuer.answers) == 0
    assert not kit.repeats(token)
    assert not set(await kit.ask(token)) & set(first)  # nothing left in L1


async def test_a_jwks_key_removed_ends_repeats(make_kit: MakeKit) -> None:
    # The verifier moves its epoch when a key leaves the JWKS (end to end over sockets in
    # tests/security/test_hostile_jwt.py); a repeat verified under the old one is not served.
    kit = make_kit()
    token = kit.jwt()
    await repeating(kit, token)
    kit.verifier.epoch += 1
    assert not kit.repeats(token)


async def test_jwt_expiry_ends_repeats(make_kit: MakeKit) -> None:
    kit = make_kit()
    token = kit.jwt(lifetime=120)
    await repeating(kit, token)
    kit.clock.advance(119)
    assert kit.repeats(token)
    kit.clock.advance(1)
    assert not kit.repeats(token)


async def test_max_jwt_age_ends_repeats(make_kit: MakeKit) -> None:
    kit = make_kit(max_age=60)
    token = kit.jwt(lifetime=3600)
    await repeating(kit, token)
    kit.clock.advance(59)
    assert kit.repeats(token)
    kit.clock.advance(1)
    assert not kit.repeats(token)


async def test_the_renewal_point_ends_the_answer_and_renews_in_the_background(
    make_kit: MakeKit,
) -> None:
    kit = make_kit()
    token = kit.jwt(lifetime=10 * 3600)
    first = await repeating(kit, token)
    renew_at = max(r.renew_at_ms for _k, r in await kit.store.subject_tokens("dev-1"))
    kit.clock.advance(renew_at / 1000 - kit.clock.time())
    assert not kit.repeats(token)
    assert await kit.ask(token) == first  # still handed out while being renewed
    await eventually(lambda: len(kit.minter.minted) == 4, what="both renewed")
    assert not set(await kit.ask(token)) & set(first)


async def test_the_refresh_point_mints_again(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    token = kit.jwt(lifetime=10 * 3600)
    first = await repeating(kit, token)
    refresh_at = max(r.refresh_at_ms for _k, r in await kit.store.subject_tokens("dev-1"))
    kit.clock.advance(refresh_at / 1000 - kit.clock.time())
    assert not set(await kit.ask(token)) & set(first)  # neither L1 nor the store hands out
    assert len(kit.minter.minted) == 4


async def test_an_evicted_answer_takes_its_repeats(make_kit: MakeKit) -> None:
    kit = make_kit(answers=1)
    token = kit.jwt("dev-1")
    await repeating(kit, token)
    await kit.ask(kit.jwt("dev-2"))
    assert kit.issuer.answers.repeats == 0
    assert not kit.repeats(token)


async def test_an_invalidation_during_a_mint_keeps_nothing(make_kit: MakeKit) -> None:
    kit = make_kit(shared=True)
    kit.minter.gate = asyncio.Event()
    token = kit.jwt()
    asking = asyncio.create_task(kit.ask(token))
    await kit.minter.started.wait()
    kit.issuer.invalidate(["another-key"])  # a revocation of something else lands
    kit.minter.gate.set()
    first = await asking  # still stored: answered
    assert len(kit.issuer.answers) == 0  # but not kept
    store_hits = kit.service.hits["store"]
    assert await kit.ask(token) == first
    assert kit.service.hits["store"] == store_hits + 2  # not kept in L1 either
    assert kit.service.hits["l1"] == 0


@pytest.mark.parametrize("scope", ["subject", "clientId"])
async def test_a_revocation_during_a_mint_is_not_answered(make_kit: MakeKit, scope: str) -> None:
    kit = make_kit()
    kit.minter.gate = asyncio.Event()
    asked = Asked("GID_fleet@@@d1", None, None, 3600)
    asking = asyncio.create_task(kit.ask(kit.jwt(device_id="d1"), asked))
    await kit.minter.started.wait()
    if scope == "subject":
        await kit.revoker.revoke_subject("dev-1", block_issued_before=False)
    else:
        await kit.revoker.revoke_client("GID_fleet@@@d1", block_issued_before=False)
    kit.minter.gate.set()
    with pytest.raises(RevokedWhileIssuing):
        await asking
    assert await kit.store.subject_tokens("dev-1") == []
    assert len(kit.issuer.answers) == 0
    for token in kit.minter.minted:  # queued for RevokeToken upstream
        assert await kit.revoker.is_revoked(token)


async def test_the_subject_limit_counts_only_work(make_kit: MakeKit) -> None:
    kit = make_kit(subject_limit=Limit(0.001, 1))
    await kit.ask(kit.jwt())  # worked out: the one request the burst allows
    for _ in range(3):
        await kit.ask(kit.jwt())  # answered: never refused
    with pytest.raises(RateLimited):
        await kit.ask(kit.jwt(), Asked(None, ("broadcast/#",), None, 3600))


async def test_identical_requests_in_flight_are_one_piece_of_work(make_kit: MakeKit) -> None:
    kit = make_kit(subject_limit=Limit(0.001, 1))
    kit.minter.gate = asyncio.Event()
    first = asyncio.create_task(kit.ask(kit.jwt()))
    await kit.minter.started.wait()
    second = asyncio.create_task(kit.ask(kit.jwt()))  # the same request, while minting
    await eventually(lambda: kit.verifier.misses == 2, what="the second request verified")
    kit.minter.gate.set()
    assert await first == await second
    assert len(kit.minter.minted) == 2


async def test_a_refused_repeat_is_logged_under_its_subject(make_kit: MakeKit) -> None:
    kit = make_kit()
    token = kit.jwt()
    await repeating(kit, token)
    kit.clock.advance(1)
    before = int(kit.clock.time() * 1000)
    kit.remote({"kind": "block", "scope": "subject", "name": "dev-1", "before_ms": before})
    context = logs.RequestContext("id", "POST", "/v1/token")
    reset = logs.CURRENT.set(context)
    try:
        with pytest.raises(TokenRevoked):
            kit.repeats(token)
    finally:
        logs.CURRENT.reset(reset)
    assert context.subject == "dev-1"


async def test_a_blocked_jwt_does_not_spend_the_subject_limit(make_kit: MakeKit) -> None:
    kit = make_kit(subject_limit=Limit(0.001, 1))
    old = kit.jwt()
    kit.clock.advance(1)
    await kit.revoker.revoke_subject("dev-1")
    with pytest.raises(TokenRevoked):
        await kit.ask(old)
    kit.clock.advance(1)
    assert await kit.ask(kit.jwt())  # signed in again: the one request the burst allows


async def test_the_claim_marks_memo_is_held_to_its_byte_bound(make_kit: MakeKit) -> None:
    # Each claims object carries 32 group values of 250 characters: its marks and the claims
    # the memo keeps alive are about 19 KB by `weight`. Bounded by entries only (10,000), the
    # memo held all 60 (1.1 MB) once the verifier and the callers had let go of them.
    kit = make_kit(revocable=frozenset({"groups"}), marks_bytes=100_000)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for n in range(60):
            claims = {
                "sub": f"dev-{n}",
                "groups": [f"{n:02d}{m:02d}" + "g" * 246 for m in range(32)],
            }
            marks = kit.issuer.marks(claims)
            assert len(marks) == 32
            assert kit.issuer.marks(claims) is marks  # remembered while it is held
            del claims, marks
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert held <= 150_000, held
    assert kit.issuer._marks.bytes <= 100_000


async def test_the_tokens_of_one_request_share_their_time_objects(make_kit: MakeKit) -> None:
    # 32 bytes a time each: the R and W records of one mint hold one issue, expiry and
    # refresh time object (TokenService._shared_ms), where each had its own.
    kit = make_kit()
    await kit.ask(kit.jwt())
    read, write = (record for _key, record in kit.store._records.items(0))
    assert (read.type, write.type) == ("R", "W")
    assert read.issued_ms is write.issued_ms
    assert read.expire_ms is write.expire_ms
    assert read.refresh_at_ms is write.refresh_at_ms


async def test_a_mint_remembers_no_client_ids_until_a_client_id_is_blocked(
    make_kit: MakeKit,
) -> None:
    # A mint's confirmation asks once per device: memoised, that was 246 bytes a device
    # that only a clientId block (which makes every request ask) ever reads again.
    kit = make_kit()
    await kit.ask(kit.jwt("dev-1", device_id="d1"))
    assert len(kit.holder._client_ids) == 0
    await kit.revoker.revoke_client("GID_fleet@@@other")
    await kit.ask(kit.jwt("dev-2", device_id="d2"))
    assert len(kit.holder._client_ids) == 1  # now every request asks: remembered


async def test_answers_hold_no_tuple_per_device_beside_the_subject(make_kit: MakeKit) -> None:
    # The claims key travels with the request, which devices asking alike share: a pair of
    # subject and claims key per answer was 56 bytes a device.
    kit = make_kit()
    await kit.ask(kit.jwt("dev-1"))
    await kit.ask(kit.jwt("dev-2"))
    (first, one), (second, two) = kit.issuer.answers._entries
    assert (first, second) == ("dev-1", "dev-2")
    assert one is two
