"""Token sharing (AUTHSERVER_TOKEN_SHARING=identical-grants): one token per identical grant.

Over real sockets, in memory and Redis modes: ApplyToken and RevokeToken are counted at the
emulator. Revoking one holder (subject or clientId) rotates the shared token for everyone
without cutting them off, and the revoked identity is refused by its issued-before block;
policy narrowing judges a shared token for each of its holders.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.bounded import ExpiringMap
from authserver.clock import ManualClock
from authserver.fingerprint import fingerprint
from authserver.policy.loader import parse_policy
from authserver.settings import SettingsError, load_settings
from authserver.tokens import store as store_module
from authserver.tokens.model import TokenRecord
from authserver.tokens.narrowing import narrowed
from authserver.tokens.revocation import Revoker
from authserver.tokens.service import HeldTokens, Holding, held_weight
from authserver.tokens.sharing import (
    LIFETIME_CLASSES,
    SHARED_SUBJECT,
    Holder,
    lifetime_class,
    shared_token_key,
)
from authserver.tokens.store import (
    HELD_BY_CLIENT,
    HELD_BY_SUBJECT,
    MemoryStore,
    RedisStore,
    TokenStore,
)
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import REPO, MakeGateway, bearer, make_jwt
from tests.helpers import eventually

TENANT_POLICY = REPO / "policies" / "tenant-broadcast.yaml"
SHARING = "identical-grants"


def applied(emulator: EmulatorHandle) -> int:
    """ApplyToken calls the emulator answered."""
    return int(emulator.state.stats()["success"].get("ApplyToken", 0))


def revoked_upstream(emulator: EmulatorHandle) -> int:
    """RevokeToken calls the emulator answered."""
    return int(emulator.state.stats()["success"].get("RevokeToken", 0))


def device(n: int, tenant: str, **claims: Any) -> tuple[str, dict[str, str]]:
    """A device's app JWT and its request body (its own clientId)."""
    jwt = make_jwt(f"dev-{n}", tenant=tenant, device_id=f"d{n}", **claims)
    return jwt, {"clientId": f"GID_fleet@@@d{n}"}


async def tokens(client: TestClient[Any, Any], jwt: str, body: dict[str, str]) -> dict[str, str]:
    """POST /v1/token: type -> token, asserting 200."""
    resp = await client.post("/v1/token", headers=bearer(jwt), json=body)
    assert resp.status == 200, await resp.text()
    return {t["type"]: t["token"] for t in (await resp.json())["tokens"]}


def revoker_of(client: TestClient[Any, Any]) -> Revoker:
    """The Revoker of a gateway under test."""
    return client.server.app[appkeys.REVOKER]


@pytest.mark.parametrize(("mode", "expected"), [("off", 40), (SHARING, 4)])
async def test_identical_grants_share_one_token_per_tenant(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    store_url: str | None,
    mode: str,
    expected: int,
) -> None:
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=mode
    )
    answers = [
        await tokens(client, *device(n, tenant=f"t{n % 2}"))
        for n in range(20)  # 10 devices in each of 2 tenants
    ]
    assert applied(emulator) == expected
    if mode == SHARING:
        assert all(a == answers[0] for a in answers[0::2])
        assert all(a == answers[1] for a in answers[1::2])
        assert answers[0]["R"] != answers[1]["R"]
    else:
        assert len({a["R"] for a in answers}) == 20


async def test_revoking_a_subject_rotates_the_shared_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None
) -> None:
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=SHARING
    )
    fleet = [device(n, tenant="acme") for n in range(3)]
    first = [await tokens(client, *d) for d in fleet]
    assert first[0] == first[1] == first[2]
    assert applied(emulator) == 2

    listed = await client.get("/v1/admin/subjects/dev-0/tokens", headers=admin_headers())
    summaries = (await listed.json())["tokens"]
    assert len(summaries) == 2
    assert all(s["shared"] and s["clientId"] is None for s in summaries)

    result = await revoker_of(client).revoke_subject("dev-0")
    assert (result.revoked_locally, result.queued) == (2, 2)
    await eventually(lambda: revoked_upstream(emulator) == 2)
    assert all(emulator.state.is_revoked(t) for t in first[0].values())

    # The revoked identity is refused; the others get one replacement between them.
    resp = await client.post("/v1/token", headers=bearer(fleet[0][0]), json=fleet[0][1])
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"
    second = [await tokens(client, *d) for d in fleet[1:]]
    assert second[0] == second[1]
    assert set(second[0].values()).isdisjoint(first[0].values())
    assert applied(emulator) == 4
    listed = await client.get("/v1/admin/subjects/dev-0/tokens", headers=admin_headers())
    assert (await listed.json())["tokens"] == []


async def test_revoking_a_client_id_rotates_the_shared_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None
) -> None:
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=SHARING
    )
    fleet = [device(n, tenant="acme") for n in range(2)]
    first = [await tokens(client, *d) for d in fleet]
    assert first[0] == first[1]

    result = await revoker_of(client).revoke_client("GID_fleet@@@d1")
    assert (result.revoked_locally, result.queued) == (2, 2)
    await eventually(lambda: revoked_upstream(emulator) == 2)

    resp = await client.post("/v1/token", headers=bearer(fleet[1][0]), json=fleet[1][1])
    assert resp.status == 401
    again = await tokens(client, *fleet[0])
    assert set(again.values()).isdisjoint(first[0].values())
    assert applied(emulator) == 4


async def test_revoking_one_tenant_leaves_the_other_tenant_s_token_alone(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None
) -> None:
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=SHARING
    )
    acme = await tokens(client, *device(0, tenant="acme"))
    other = await tokens(client, *device(1, tenant="other"))
    await revoker_of(client).revoke_subject("dev-0")
    await eventually(lambda: revoked_upstream(emulator) == 2)
    assert not any(emulator.state.is_revoked(t) for t in other.values())
    assert await tokens(client, *device(2, tenant="other")) == other
    assert all(emulator.state.is_revoked(t) for t in acme.values())


# The broadcast grant moves into a group: narrowed for the holders outside it only.
GROUPED = """version: 1
defaults:
  ttlSeconds: 3600
groupsClaim: roles
clientIds: ["GID_fleet@@@{claims.device_id}"]
everyone:
  - topics: ["t/{claims.tenant}/uplink"]
    actions: [W]
groups:
  subscriber:
    - topics: ["t/{claims.tenant}/broadcast/#"]
      actions: [R]
"""


async def test_narrowing_for_one_holder_rotates_the_shared_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(TENANT_POLICY.read_bytes())
    client = await make_gateway(
        emulator,
        policy_file=path,
        policy_poll_interval=3600,
        redis_url=store_url,
        token_sharing=SHARING,
    )
    assert client.app is not None
    subscriber = device(0, tenant="acme", roles=["subscriber"])
    plain = device(1, tenant="acme")
    first = await tokens(client, *subscriber)
    assert await tokens(client, *plain) == first

    path.write_text(GROUPED)
    watcher = client.app[appkeys.POLICY_WATCHER]
    assert await watcher.reload(reason="test")  # returns once the narrowing sweep is done
    assert watcher.narrowed == 1  # the shared R token, for both holders
    await eventually(lambda: emulator.state.is_revoked(first["R"]))
    assert not emulator.state.is_revoked(first["W"])  # everyone still has the uplink

    rotated = await tokens(client, *subscriber)
    assert rotated["R"] != first["R"]
    assert rotated["W"] == first["W"]
    assert await tokens(client, *plain) == {"W": first["W"]}


async def test_a_policy_change_that_narrows_no_holder_keeps_the_shared_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(TENANT_POLICY.read_bytes())
    client = await make_gateway(
        emulator,
        policy_file=path,
        policy_poll_interval=3600,
        redis_url=store_url,
        token_sharing=SHARING,
    )
    assert client.app is not None
    holders = [device(n, tenant="acme", roles=["subscriber"]) for n in range(2)]
    first = [await tokens(client, *d) for d in holders]
    path.write_text(GROUPED)
    watcher = client.app[appkeys.POLICY_WATCHER]
    assert await watcher.reload(reason="test")  # returns once the narrowing sweep is done
    assert watcher.narrowed == 0
    assert [await tokens(client, *d) for d in holders] == first
    assert applied(emulator) == 2


def test_lifetime_classes_round_down_never_up() -> None:
    assert lifetime_class(60) == 60
    assert lifetime_class(3599) == 1800
    assert lifetime_class(3600) == 3600
    assert lifetime_class(7000) == 3600
    assert lifetime_class(2_592_000) == 2_592_000
    assert all(lifetime_class(c) == c for c in LIFETIME_CLASSES)


def test_shared_keys_name_the_grant_only() -> None:
    one = shared_token_key("post-cn-x", "R", ("t/acme/broadcast/#",), 3600)
    assert one == shared_token_key("post-cn-x", "R", ("t/acme/broadcast/#",), 3600)
    assert one != shared_token_key("post-cn-x", "W", ("t/acme/broadcast/#",), 3600)
    assert one != shared_token_key("post-cn-x", "R", ("t/other/broadcast/#",), 3600)
    assert one != shared_token_key("post-cn-x", "R", ("t/acme/broadcast/#",), 1800)
    assert one != shared_token_key("post-cn-y", "R", ("t/acme/broadcast/#",), 3600)


def test_an_unknown_sharing_mode_is_reported(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_bytes(TENANT_POLICY.read_bytes())
    env = {
        "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-x",
        "AUTHSERVER_POLICY_FILE": str(policy),
        "AUTHSERVER_TOKEN_SHARING": "everyone",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert any("TOKEN_SHARING='everyone'" in p for p in caught.value.problems)


def test_sharing_is_off_unless_asked(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_bytes(TENANT_POLICY.read_bytes())
    env = {
        "AUTHSERVER_MQTT_INSTANCE_ID": "post-cn-x",
        "AUTHSERVER_POLICY_FILE": str(policy),
        "AUTHSERVER_JWT_SECRET": "a-secret-that-is-long-enough-for-hs256!!",
        "AUTHSERVER_JWT_ISSUER": "https://app.example.test",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIx",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret",
    }
    assert load_settings(env).token_sharing == "off"
    env["AUTHSERVER_TOKEN_SHARING"] = "Identical-Grants"
    assert load_settings(env).token_sharing == SHARING


async def test_a_request_in_flight_across_its_revocation_is_not_served_the_replacement(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None
) -> None:
    """Its holding was rotated away: it must not pick up the token minted for the others."""
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=SHARING
    )
    service = client.server.app[appkeys.TOKENS]
    revoked, other = device(0, tenant="acme"), device(1, tenant="acme")
    first = await tokens(client, *other)
    assert await tokens(client, *revoked) == first

    # The revoked device's next request stops at its first store read until released.
    store = service.store
    read_started, release = asyncio.Event(), asyncio.Event()
    plain_get = store.get

    async def gated_get(key: str, subject: str) -> Any:
        if not read_started.is_set():  # that request's read only, not the revoker's
            read_started.set()
            await release.wait()
        return await plain_get(key, subject)

    store.get = gated_get  # type: ignore[method-assign]
    client.server.app[appkeys.ISSUER].flush()  # answers and L1: the next request reads the store
    in_flight = asyncio.create_task(
        client.post("/v1/token", headers=bearer(revoked[0]), json=revoked[1])
    )
    await read_started.wait()
    # No block: only the epoch can tell that this request began before the revocation.
    await revoker_of(client).revoke_subject("dev-0", block_issued_before=False)
    replacement = await tokens(client, *other)
    assert set(replacement.values()).isdisjoint(first.values())
    release.set()  # its read now finds the replacement in the store

    resp = await in_flight
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"


async def test_a_shared_token_retired_by_a_renewal_is_rotated_with_its_holder(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    """The revoked device still holds the token the renewal replaced: that one is revoked."""
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        policy_file=TENANT_POLICY,
        redis_url=store_url,
        token_sharing=SHARING,
    )
    now = clock.time()
    revoked = (
        make_jwt("dev-0", tenant="acme", device_id="d0", now=now),
        {"clientId": "GID_fleet@@@d0"},
    )
    other = (
        make_jwt("dev-1", tenant="acme", device_id="d1", now=now),
        {"clientId": "GID_fleet@@@d1"},
    )
    first = await tokens(client, *revoked)
    resp = await client.post("/v1/token", headers=bearer(other[0]), json=other[1])
    refresh_at = (await resp.json())["refreshAt"]
    # Into the renewal window: the other device's request renews both shared tokens.
    clock.advance((refresh_at - clock.time() * 1000) / 1000 - 0.0005)
    await tokens(client, *other)
    await eventually(lambda: applied(emulator) == 4)
    clock.advance(1)
    renewed = await tokens(client, *other)
    assert set(renewed.values()).isdisjoint(first.values())

    result = await revoker_of(client).revoke_subject("dev-0")
    assert result.revoked_locally == 2  # the retired tokens it holds, not the renewed ones
    await eventually(lambda: all(emulator.state.is_revoked(t) for t in first.values()))
    assert not any(emulator.state.is_revoked(t) for t in renewed.values())
    assert await tokens(client, *other) == renewed


def shared_record(token: str, expire_ms: int) -> TokenRecord:
    """A shared R record, as the service stores it."""
    return TokenRecord(
        token=token,
        type="R",
        resources=("t/acme/broadcast/#",),
        expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000,
        issued_ms=0,
        subject=SHARED_SUBJECT,
        instance_id="post-cn-x",
    )


async def test_holders_stop_at_the_bound_and_say_so(
    store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_HOLDERS", 3)
    clock = ManualClock(start=1000.0)
    redis = None if store_url is None else aioredis.Redis.from_url(store_url)
    store: TokenStore = MemoryStore(clock) if redis is None else RedisStore(redis, clock)
    try:
        record = shared_record("t-shared", int(clock.time() * 1000) + 60_000)
        assert await store.put("ks", record)
        for n in range(3):
            await store.hold(record, Holder(f"dev-{n}", f"GID_fleet@@@d{n}", {"tenant": "acme"}))
        holders, complete = await store.holders(record)
        assert complete
        assert sorted(h.subject for h in holders) == ["dev-0", "dev-1", "dev-2"]
        assert holders[0].claims == {"tenant": "acme"}
        await store.hold(record, Holder("dev-3"))
        holders, complete = await store.holders(record)
        assert not complete  # narrowing then rotates it on every policy change
        assert len(holders) == 3
        # Revocation does not depend on that list: every holder finds the token.
        assert [k for k, _ in await store.held(HELD_BY_SUBJECT, "dev-3")] == ["ks"]
        assert [k for k, _ in await store.held(HELD_BY_CLIENT, "GID_fleet@@@d0")] == ["ks"]
    finally:
        if redis is not None:
            await redis.aclose()


async def test_narrowing_rotates_a_shared_token_it_cannot_judge_for_every_holder() -> None:
    record = shared_record("t-shared", 2**41)
    policy = parse_policy(TENANT_POLICY.read_text(), "test")
    holder = Holder("dev-0", "GID_fleet@@@d0", {"tenant": "acme", "device_id": "d0"})

    async def complete(_record: TokenRecord) -> tuple[list[Holder], bool]:
        return [holder], True

    async def incomplete(_record: TokenRecord) -> tuple[list[Holder], bool]:
        return [holder], False

    assert await narrowed(policy, [("ks", record)], complete) == []
    assert await narrowed(policy, [("ks", record)], incomplete) == [("ks", record)]
    assert await narrowed(policy, [("ks", record)]) == [("ks", record)]  # no holders known


async def test_the_memory_holder_index_is_bounded() -> None:
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock, maxsize=4)
    record = shared_record("t-shared", int(clock.time() * 1000) + 60_000)
    assert await store.put("ks", record)
    for n in range(20):
        await store.hold(record, Holder(f"dev-{n}"))
    assert len(store._held) <= 8
    assert await store.held(HELD_BY_SUBJECT, "dev-19") == [("ks", record)]
    assert await store.held(HELD_BY_SUBJECT, "dev-0") == []  # the oldest went first


async def test_two_gateways_share_one_token_and_rotate_it_together(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    first = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=redis_url, token_sharing=SHARING
    )
    second = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=redis_url, token_sharing=SHARING
    )
    revoked, other = device(0, tenant="acme"), device(1, tenant="acme")
    served = await tokens(first, *revoked)
    assert await tokens(second, *other) == served  # one mint per token for both processes
    assert await tokens(second, *other) == served  # now in second's L1 and answer cache
    assert applied(emulator) == 2

    # Revoked through the first process: the second's device is moved to the replacement.
    await revoker_of(first).revoke_subject("dev-0")

    async def rotated() -> bool:
        return set((await tokens(second, *other)).values()).isdisjoint(served.values())

    await eventually(rotated, what="the second gateway serves the replacement")
    assert applied(emulator) == 4
    resp = await second.post("/v1/token", headers=bearer(revoked[0]), json=revoked[1])
    assert resp.status == 401


async def test_explain_shows_the_shared_token_a_subject_holds(
    emulator: EmulatorHandle, make_gateway: MakeGateway, store_url: str | None
) -> None:
    client = await make_gateway(
        emulator, policy_file=TENANT_POLICY, redis_url=store_url, token_sharing=SHARING
    )
    held = await tokens(client, *device(0, tenant="acme"))
    resp = await client.post(
        "/v1/admin/explain",
        headers=admin_headers(),
        json={
            "subject": "dev-0",
            "clientId": "GID_fleet@@@d0",
            "claims": {"tenant": "acme", "device_id": "d0"},
        },
    )
    assert resp.status == 200, await resp.text()
    cached = {t["type"]: t for t in (await resp.json())["cachedTokens"]}
    assert cached["R"]["cached"]
    assert cached["W"]["cached"]
    assert {cached["R"]["fingerprint"], cached["W"]["fingerprint"]} == {
        fingerprint(t) for t in held.values()
    }


async def test_a_holder_over_its_mint_budget_does_not_refuse_the_others(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Found in review: a shared grant's single flight charged the mint budget of whoever
    # started it, so the holders that joined it got that device's 429.
    client = await make_gateway(
        emulator,
        policy_file=TENANT_POLICY,
        token_sharing=SHARING,
        mint_budget=1.0,
        mint_budget_burst=1,
    )
    spent, fresh = device(0, tenant="acme"), device(1, tenant="acme")
    kinds = len(await tokens(client, *spent))  # one flight per token type
    resp = await client.post(
        "/v1/token", headers=bearer(spent[0]), json={**spent[1], "ttlSeconds": 120}
    )
    assert resp.status == 429  # dev-0's budget is spent

    # dev-0 starts the next shared mint; dev-1 joins that flight before dev-0 is refused.
    limiter = client.server.app[appkeys.RATE_LIMITER]
    service = client.server.app[appkeys.TOKENS]
    charging, refuse = asyncio.Event(), asyncio.Event()
    plain_charge, plain_landing = limiter._charge, service._landing
    landings = 0

    async def gated_charge(asking: Any) -> None:
        if not charging.is_set():
            charging.set()
            await refuse.wait()
        await plain_charge(asking)

    async def counted_landing(flight: Any, deadline: float) -> Any:
        nonlocal landings
        landings += 1
        return await plain_landing(flight, deadline)

    limiter._charge = gated_charge  # type: ignore[method-assign]
    service._landing = counted_landing  # type: ignore[method-assign]
    body = {"ttlSeconds": 7200}
    first = asyncio.create_task(
        client.post("/v1/token", headers=bearer(spent[0]), json={**spent[1], **body})
    )
    await charging.wait()
    second = asyncio.create_task(
        client.post("/v1/token", headers=bearer(fresh[0]), json={**fresh[1], **body})
    )
    await eventually(lambda: landings >= 2 * kinds, what="dev-1 waits on dev-0's flights")
    refuse.set()
    assert (await first).status == 429
    resp = await second
    assert resp.status == 200, await resp.text()


# A hostile fleet's claim values: 24 of 200 characters make a JWT of about 7 KB, under the
# 8 KiB the verifier takes, and a remembered holding of about 6 KB instead of about 700 bytes.
HOSTILE_TAGS = 24
HELD_BOUND = 64 * 1024


def hostile_device(n: int) -> tuple[str, dict[str, str]]:
    """A device of tenant acme whose revocable `tags` claim is as large as its JWT allows."""
    tags = [f"{n}-{j}-" + "x" * 200 for j in range(HOSTILE_TAGS)]
    return device(n, tenant="acme", tags=tags)


async def test_the_holdings_a_process_remembers_are_bounded_by_bytes(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await make_gateway(
        emulator,
        policy_file=TENANT_POLICY,
        redis_url=redis_url,
        token_sharing=SHARING,
        revocable_claims=frozenset({"tags"}),
        token_cache_bytes=HELD_BOUND,
        answer_cache_size=0,  # every request reaches the token service
    )
    service = client.server.app[appkeys.TOKENS]
    held = service._held_here
    holds: list[str] = []
    store_hold = service.store.hold

    async def counted(record: TokenRecord, holder: Holder) -> None:
        holds.append(holder.subject)
        await store_hold(record, holder)

    monkeypatch.setattr(service.store, "hold", counted)
    fleet = [hostile_device(n) for n in range(30)]
    answers = [await tokens(client, *d) for d in fleet]
    assert all(a == answers[0] for a in answers)
    assert applied(emulator) == 2  # one R and one W token for the whole fleet
    assert len(holds) == 60  # each device's two holdings written once

    now = client.server.app[appkeys.CLOCK].time() * 1000
    live = list(held.items(now))
    assert sum(held_weight(key, value) for key, value in live) <= HELD_BOUND
    assert held.bytes == sum(held_weight(key, value) for key, value in live)
    remembered = {key[0] for key, _value in live}
    assert "dev-29" in remembered
    assert {"dev-0", "dev-1"}.isdisjoint(remembered)  # the oldest went first

    # Remembered: nothing written again. Forgotten: written again, as a first holding is.
    assert await tokens(client, *fleet[29]) == answers[0]
    assert len(holds) == 60
    assert await tokens(client, *fleet[0]) == answers[0]
    assert holds[60:] == ["dev-0", "dev-0"]

    # A forgotten holding is still the store's: revoking its subject rotates the shared
    # tokens, nothing escapes, and the revoked JWT is refused.
    revoked = await client.post(
        "/v1/admin/revoke", json={"subject": "dev-1"}, headers=admin_headers()
    )
    assert revoked.status == 202, await revoked.text()
    assert (await revoked.json())["revokedLocally"] == 2
    await eventually(lambda: revoked_upstream(emulator) == 2)
    assert all(emulator.state.is_revoked(t) for t in answers[0].values())
    refused = await client.post("/v1/token", headers=bearer(fleet[1][0]), json=fleet[1][1])
    assert refused.status == 401
    assert (await refused.json())["code"] == "token_revoked"
    assert set((await tokens(client, *fleet[2])).values()).isdisjoint(answers[0].values())


async def test_the_memory_store_s_holdings_are_not_taken_as_remembered(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Four holdings' index entries (two devices) in the memory store, the oldest going first.
    client = await make_gateway(
        emulator,
        policy_file=TENANT_POLICY,
        token_sharing=SHARING,
        token_cache_size=4,
        answer_cache_size=0,  # every request reaches the token service
    )
    fleet = [device(n, tenant="acme") for n in range(5)]
    first = [await tokens(client, *d) for d in fleet]
    assert all(answer == first[0] for answer in first)
    store = client.server.app[appkeys.TOKENS].store
    assert await store.held(HELD_BY_SUBJECT, "dev-1") == []  # the store let it go

    # dev-1 asks again: its holdings are written again, so its revocation finds them.
    assert await tokens(client, *fleet[1]) == first[0]
    revoked = await client.post(
        "/v1/admin/revoke", json={"subject": "dev-1"}, headers=admin_headers()
    )
    assert revoked.status == 202, await revoked.text()
    assert (await revoked.json())["revokedLocally"] == 2
    await eventually(lambda: revoked_upstream(emulator) == 2)
    assert all(emulator.state.is_revoked(t) for t in first[0].values())


# A device's subject and claim values in any script: CPython stores a string at the width
# of its widest character (one byte for ASCII, up to four for emoji).
WIDE_TEXT = ["", "\u00e9" * 150, "\u4e2d" * 150, "\U0001f600" * 150]


@pytest.mark.parametrize("text", WIDE_TEXT, ids=["ascii", "latin-1", "cjk", "emoji"])
def test_the_holding_estimate_follows_tracemalloc(text: str) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        held: ExpiringMap[Holding, HeldTokens] = ExpiringMap(10_000, lambda value: value[0])
        estimate = 0
        for n in range(2000):
            # Its own token strings each: what an entry keeps once its records are rotated.
            key = (f"dev-{n}{text}", f"GID_fleet@@@d{n}", (f"tags=g{n}{text}",))
            value = (1_900_000_000_000 + n, tuple(f"{kind}-{n}-" + "t" * 120 for kind in "RW"))
            held.put(key, value)
            estimate += held_weight(key, value)
        measured = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert abs(estimate - measured) <= 0.1 * measured, (estimate, measured)


async def test_holdings_lost_with_redis_are_written_again_after_the_resync(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    # A failover to a replica that had not received the holding writes: the bus
    # resubscribes and resyncs ("anything may have changed"), and the holdings this process
    # remembers having written are no longer taken as written, or the revocation of their
    # holder would not find the shared tokens and its device would keep them upstream.
    client = await make_gateway(
        emulator,
        policy_file=TENANT_POLICY,
        redis_url=redis_url,
        token_sharing=SHARING,
        answer_cache_size=0,  # every request reaches the token service
    )
    bus = client.server.app[appkeys.BUS]
    await eventually(lambda: bus.synced)
    resyncs: list[int] = []

    async def counted() -> None:
        resyncs.append(1)

    bus.on_resync(counted)
    jwt, body = device(0, tenant="acme")
    first = await tokens(client, jwt, body)
    redis = aioredis.from_url(redis_url)
    try:
        lost = await redis.keys("authserver:held:*")
        assert lost
        await redis.delete(*lost)  # what the promoted replica never got
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await redis.aclose()
    await eventually(lambda: bool(resyncs) and bus.synced, what="the bus resynced")

    assert await tokens(client, jwt, body) == first  # the same shared tokens, held again
    revoked = await client.post(
        "/v1/admin/revoke", json={"subject": "dev-0"}, headers=admin_headers()
    )
    assert revoked.status == 202, await revoked.text()
    assert (await revoked.json())["revokedLocally"] == 2
    await eventually(lambda: revoked_upstream(emulator) == 2)
    assert all(emulator.state.is_revoked(t) for t in first.values())
