"""Revocation by claim value (POST /v1/admin/revoke {"claim": ...}) over real sockets.

Two gateways on one real Redis (and the embedded mode alone): the block refuses the old app
JWTs carrying the value on both, a newer JWT gets a new token, the emulator counts each old
token revoked exactly once, a grace margin holds the upstream revocation back on the
ManualClock, shared tokens are rotated, and bad claim names or values are precise 400s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.fingerprint import fingerprint
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import IOT_FLEET_POLICY, REPO, MakeGateway, bearer, make_jwt
from tests.helpers import eventually
from tests.ops.helpers import scrape, value

REVOCABLE = frozenset({"tenant", "roles", "model"})
TENANT_POLICY = REPO / "policies" / "tenant-broadcast.yaml"
START = 1_900_000_000.0


class Device:
    """A device: its subject, claims and clientId; signs app JWTs at the clock's time."""

    def __init__(self, clock: ManualClock, subject: str, **claims: Any) -> None:
        self.clock = clock
        self.subject = subject
        self.claims = {"device_id": subject, **claims}
        self.body = {"clientId": f"GID_fleet@@@{subject}"}
        self.jwt = self.sign()

    def sign(self) -> str:
        """A new app JWT issued now (by the ManualClock)."""
        return make_jwt(self.subject, now=self.clock.time(), **self.claims)


async def fetch(client: TestClient[Any, Any], device: Device, jwt: str | None = None) -> list[str]:
    """POST /v1/token for `device`: its token values, asserting 200."""
    resp = await client.post("/v1/token", headers=bearer(jwt or device.jwt), json=device.body)
    assert resp.status == 200, await resp.text()
    return sorted(t["token"] for t in (await resp.json())["tokens"])


async def refused(client: TestClient[Any, Any], device: Device) -> bool:
    """Whether the device's current JWT is refused as revoked."""
    resp = await client.post("/v1/token", headers=bearer(device.jwt), json=device.body)
    if resp.status == 200:
        return False
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["code"] == "token_revoked"
    return True


def admin(client: TestClient[Any, Any]) -> dict[str, str]:
    """An admin's Authorization header, signed at the gateway's (maybe manual) time."""
    return admin_headers(now=client.server.app[appkeys.CLOCK].time())


async def revoke(client: TestClient[Any, Any], body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/admin/revoke, expecting 202."""
    resp = await client.post("/v1/admin/revoke", json=body, headers=admin(client))
    assert resp.status == 202, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def queue(client: TestClient[Any, Any]) -> dict[str, Any]:
    """GET /v1/admin/revocations."""
    resp = await client.get("/v1/admin/revocations", headers=admin(client))
    assert resp.status == 200
    status: dict[str, Any] = await resp.json()
    return status


def revoke_calls(emulator: EmulatorHandle) -> int:
    """RevokeToken calls the emulator answered."""
    return int(emulator.state.stats()["success"].get("RevokeToken", 0))


async def drained(emulator: EmulatorHandle, client: TestClient[Any, Any], old: list[str]) -> None:
    """Wait until every old token is revoked upstream and nothing is left in the queue."""

    async def done() -> bool:
        status = await queue(client)
        idle = status["depth"] == 0 and status["delayed"] == 0
        return idle and all(emulator.state.is_revoked(t) for t in old)

    await eventually(done, what="every old token revoked upstream, the queue empty")


async def test_claim_revocation_across_two_gateways_on_one_redis(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_url: str
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    gateways = [
        await make_gateway(
            emulator,
            clock=clock,
            redis_url=redis_url,
            policy_file=IOT_FLEET_POLICY,
            revocable_claims=REVOCABLE,
        )
        for _ in range(2)
    ]
    first, second = gateways
    alice = Device(clock, "alice", tenant="acme", model="x200")
    bob = Device(clock, "bob", tenant="acme", model="x300")
    carol = Device(clock, "carol", tenant="other", model="x200")
    old_alice = await fetch(first, alice)
    assert await fetch(second, alice) == old_alice  # now in the second's caches too
    old_bob = await fetch(second, bob)
    kept_carol = await fetch(first, carol)
    old = old_alice + old_bob

    before = int(clock.time() * 1000)
    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(first, {"claim": {"name": "tenant", "value": "acme"}})
    assert answer["revokedLocally"] == len(old) == 4
    assert answer["queued"] == 4
    assert before <= answer["blockedIssuedBefore"] <= int(clock.time() * 1000)
    assert sorted(answer["fingerprints"]) == sorted(fingerprint(t) for t in old)
    assert "upstreamRevocationAfter" not in answer

    # The gateway that revoked refuses at once; the other as soon as the bus tells it.
    assert await refused(first, alice)
    assert await refused(first, bob)
    await eventually(lambda: refused(second, alice), what="the second gateway refuses alice")
    assert await refused(second, bob)
    # Another tenant is untouched, on both gateways, and keeps its tokens.
    assert await fetch(second, carol) == kept_carol
    assert await fetch(first, carol) == kept_carol

    clock.advance(1)
    alice.jwt, bob.jwt = alice.sign(), bob.sign()
    fresh_alice = await fetch(second, alice)
    fresh_bob = await fetch(first, bob)
    assert set(fresh_alice + fresh_bob).isdisjoint(old)

    await drained(emulator, first, old)
    assert revoke_calls(emulator) == len(old)  # each exactly once, over both workers
    assert not any(emulator.state.is_revoked(t) for t in kept_carol + fresh_alice + fresh_bob)


@pytest.mark.parametrize("selector", ["roles", "model"])
async def test_list_and_integer_claims(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    store_url: str | None,
    selector: str,
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=REVOCABLE,
    )
    # A groups-like list, and a number: "field" is one of dan's roles, "200" is his model.
    dan = Device(clock, "dan", tenant="acme", roles=["ops", "field"], model=200)
    eve = Device(clock, "eve", tenant="acme", roles=["ops"], model=300)
    none = Device(clock, "nul", tenant="acme", roles=None, model=True)
    old_dan = await fetch(client, dan)
    kept = [await fetch(client, eve), await fetch(client, none)]

    value = {"roles": "field", "model": "200"}[selector]
    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(client, {"claim": {"name": selector, "value": value}})
    assert answer["revokedLocally"] == len(old_dan)
    assert await refused(client, dan)
    assert not await refused(client, eve)
    assert not await refused(client, none)  # a null or boolean claim matches nothing
    await drained(emulator, client, old_dan)
    assert revoke_calls(emulator) == len(old_dan)
    assert [await fetch(client, eve), await fetch(client, none)] == kept


async def test_grace_margin_holds_the_upstream_revocation_back(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=REVOCABLE,
    )
    alice = Device(clock, "alice", tenant="acme")
    other = Device(clock, "olga", tenant="other")
    old = await fetch(client, alice)

    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(
        client, {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 60}
    )
    # The upstream waits 60 s after the block (both made by this request, now).
    held_back = answer["upstreamRevocationAfter"] - answer["blockedIssuedBefore"]
    assert 60_000 <= held_back <= 60_000 + int(clock.time() * 1000) - int(START * 1000)
    assert answer["queued"] == len(old)
    status = await queue(client)
    assert (status["depth"], status["delayed"]) == (0, len(old))
    assert value(await scrape(client), "authserver_revocation_queue_delayed") == len(old)

    # The block applies now: the old JWT is refused, a newer one gets new tokens at once,
    # while the old tokens still work upstream (the device is still connected with them).
    assert await refused(client, alice)
    clock.advance(1)
    alice.jwt = alice.sign()
    fresh = await fetch(client, alice)
    assert set(fresh).isdisjoint(old)
    assert all(emulator.state.token_valid(t) for t in old)

    # The worker drains a later, immediate revocation: it ran rounds meanwhile, and left
    # the held-back jobs alone (the ManualClock is before their time).
    other_tokens = await fetch(client, other)
    await revoke(client, {"subject": "olga"})
    await eventually(lambda: all(emulator.state.is_revoked(t) for t in other_tokens))
    assert not any(emulator.state.is_revoked(t) for t in old)
    assert (await queue(client))["delayed"] == len(old)

    clock.advance(59)
    await drained(emulator, client, old)
    assert revoke_calls(emulator) == len(old) + len(other_tokens)
    assert not any(emulator.state.is_revoked(t) for t in fresh)


async def test_grace_on_two_gateways_is_revoked_once(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_url: str
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    first, second = [
        await make_gateway(
            emulator,
            clock=clock,
            redis_url=redis_url,
            policy_file=IOT_FLEET_POLICY,
            revocable_claims=REVOCABLE,
        )
        for _ in range(2)
    ]
    devices = [Device(clock, f"dev-{n}", tenant="acme") for n in range(3)]
    old = [t for d in devices for t in await fetch(second, d)]
    await revoke(first, {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 30})
    assert (await queue(second))["delayed"] == len(old)  # shared by both: one Redis
    clock.advance(30)
    await drained(emulator, second, old)
    assert revoke_calls(emulator) == len(old)


async def test_sharing_rotates_the_token_for_holders_without_the_value(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=TENANT_POLICY,
        token_sharing="identical-grants",
        revocable_claims=REVOCABLE,
    )
    # One tenant, one grant, two shared tokens: only d1 is in the revoked group.
    d0 = Device(clock, "d0", tenant="acme", roles=["ops"])
    d1 = Device(clock, "d1", tenant="acme", roles=["ops", "field"])
    shared = await fetch(client, d0)
    assert await fetch(client, d1) == shared
    assert emulator.state.stats()["success"]["ApplyToken"] == 2

    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(client, {"claim": {"name": "roles", "value": "field"}})
    assert (answer["revokedLocally"], answer["queued"]) == (2, 2)
    assert await refused(client, d1)
    # d0 is not cut off: the shared tokens were rotated, a replacement minted for it.
    replacement = await fetch(client, d0)
    assert set(replacement).isdisjoint(shared)
    assert emulator.state.stats()["success"]["ApplyToken"] == 4
    await drained(emulator, client, shared)
    assert revoke_calls(emulator) == 2
    assert not any(emulator.state.is_revoked(t) for t in replacement)
    # d1 with a newer JWT (still in the group) shares the replacement.
    clock.advance(1)
    d1.jwt = d1.sign()
    assert await fetch(client, d1) == replacement


async def test_embedded_mode_without_redis(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator, clock=clock, policy_file=IOT_FLEET_POLICY, revocable_claims=REVOCABLE
    )
    alice = Device(clock, "alice", tenant="acme")
    old = await fetch(client, alice)
    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(client, {"claim": {"name": "tenant", "value": "acme"}})
    assert answer["revokedLocally"] == len(old)
    assert (await queue(client))["mode"] == "memory"
    assert await refused(client, alice)
    await drained(emulator, client, old)
    assert revoke_calls(emulator) == len(old)


async def test_without_block_the_same_jwt_gets_new_tokens(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, policy_file=IOT_FLEET_POLICY, revocable_claims=REVOCABLE)
    jwt = make_jwt("gus", tenant="acme", device_id="gus")
    body = {"clientId": "GID_fleet@@@gus"}
    first = await (await client.post("/v1/token", headers=bearer(jwt), json=body)).json()
    answer = await revoke(
        client, {"claim": {"name": "tenant", "value": "acme"}, "blockIssuedBefore": False}
    )
    assert answer["blockedIssuedBefore"] is None
    again = await client.post("/v1/token", headers=bearer(jwt), json=body)
    assert again.status == 200
    old = {t["token"] for t in first["tokens"]}
    assert old.isdisjoint(t["token"] for t in (await again.json())["tokens"])


@pytest.mark.parametrize(
    ("revocable", "body", "code", "field"),
    [
        # A claim the setting does not name, with the setting or without it.
        (REVOCABLE, {"claim": {"name": "device_id", "value": "a"}}, "claim_not_revocable", None),
        (frozenset(), {"claim": {"name": "tenant", "value": "a"}}, "claim_not_revocable", None),
        (REVOCABLE, {"claim": {"name": "ten=ant", "value": "a"}}, "bad_request", "claim.name"),
        (REVOCABLE, {"claim": {"name": "tenant", "value": ""}}, "bad_request", "claim.value"),
        (REVOCABLE, {"claim": {"name": "tenant", "value": 42}}, "bad_request", "claim.value"),
        (REVOCABLE, {"claim": {"name": "tenant", "value": None}}, "bad_request", "claim.value"),
        (REVOCABLE, {"claim": {"name": "tenant", "value": ["a"]}}, "bad_request", "claim.value"),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a\u0000"}},
            "bad_request",
            "claim.value",
        ),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "x" * 257}},
            "bad_request",
            "claim.value",
        ),
        (REVOCABLE, {"claim": {"name": "tenant"}}, "bad_request", "claim"),
        (REVOCABLE, {"claim": {"name": "tenant", "value": "a", "x": 1}}, "bad_request", "claim"),
        (REVOCABLE, {"claim": "tenant=acme"}, "bad_request", "claim"),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a"}, "subject": "s"},
            "bad_request",
            None,
        ),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a"}, "deviceCredentials": "refresh"},
            "bad_request",
            "deviceCredentials",
        ),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a"}, "graceSeconds": -1},
            "bad_request",
            "graceSeconds",
        ),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a"}, "graceSeconds": 3601},
            "bad_request",
            "graceSeconds",
        ),
        (
            REVOCABLE,
            {"claim": {"name": "tenant", "value": "a"}, "graceSeconds": "5"},
            "bad_request",
            "graceSeconds",
        ),
    ],
)
async def test_bad_claim_selectors_are_precise_problems(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    revocable: frozenset[str],
    body: dict[str, Any],
    code: str,
    field: str | None,
) -> None:
    client = await make_gateway(emulator, revocable_claims=revocable)
    resp = await client.post("/v1/admin/revoke", json=body, headers=admin(client))
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == code
    if field is not None:
        assert problem["field"] == field
    if code == "claim_not_revocable":
        assert problem["revocableClaims"] == sorted(revocable)
    status = await queue(client)
    assert (status["depth"], status["delayed"]) == (0, 0)


async def test_a_claim_the_policy_ignores_still_keeps_identities_apart(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=frozenset({"org"}),
    )
    # One subject signed into two orgs: the policy never reads `org`, so the grants are
    # the same, but each JWT is handed tokens recorded under its own org.
    in_a = Device(clock, "sam", tenant="acme", org="a")
    in_b = Device(clock, "sam", tenant="acme", org="b")
    tokens_a = await fetch(client, in_a)
    tokens_b = await fetch(client, in_b)
    assert set(tokens_a).isdisjoint(tokens_b)

    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(client, {"claim": {"name": "org", "value": "b"}})
    assert sorted(answer["fingerprints"]) == sorted(fingerprint(t) for t in tokens_b)
    assert await refused(client, in_b)
    assert await fetch(client, in_a) == tokens_a
    await drained(emulator, client, tokens_b)
    assert not any(emulator.state.is_revoked(t) for t in tokens_a)


async def test_a_value_holding_the_marks_separator_is_its_own_identity(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    # A value may hold any character but NUL: "a\x01org=b" is one value, not the two
    # values a and b, so its tokens are its own and a revocation of it finds them.
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=frozenset({"org"}),
    )
    in_both = Device(clock, "sam", tenant="acme", org=["a", "b"])
    in_one = Device(clock, "sam", tenant="acme", org="a\x01org=b")
    tokens_both = await fetch(client, in_both)
    tokens_one = await fetch(client, in_one)
    assert set(tokens_both).isdisjoint(tokens_one)

    clock.advance(1)
    answer = await revoke(client, {"claim": {"name": "org", "value": "a\x01org=b"}})
    assert sorted(answer["fingerprints"]) == sorted(fingerprint(t) for t in tokens_one)


async def set_fault(emulator: EmulatorHandle, **fault: Any) -> None:
    """`POST /_emulator/faults`."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/_emulator/faults", json=fault) as response,
    ):
        assert response.status == 200, await response.text()


def apply_calls(emulator: EmulatorHandle) -> int:
    """ApplyToken calls that reached the emulator (counted on arrival, before the latency)."""
    return int(emulator.state.stats()["calls"].get("ApplyToken", 0))


@pytest.mark.parametrize("block", [True, False], ids=["blocked", "unblocked"])
async def test_a_token_minted_across_a_claim_revocation_is_revoked(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None, block: bool
) -> None:
    emulator = await make_emulator()
    client = await make_gateway(
        emulator, redis_url=store_url, policy_file=IOT_FLEET_POLICY, revocable_claims=REVOCABLE
    )
    jwt = make_jwt("mia", tenant="acme", device_id="mia")
    body = {"clientId": "GID_fleet@@@mia", "actions": ["R"]}
    await set_fault(emulator, action="ApplyToken", latencyMs=1500)
    asked = asyncio.ensure_future(client.post("/v1/token", headers=bearer(jwt), json=body))
    await eventually(lambda: apply_calls(emulator) == 1)
    resp = await client.post(
        "/v1/admin/revoke",
        json={"claim": {"name": "tenant", "value": "acme"}, "blockIssuedBefore": block},
        headers=admin_headers(),
    )
    assert resp.status == 202, await resp.text()
    # Nothing stored yet: the only token is still being minted.
    assert (await resp.json())["revokedLocally"] == 0
    assert not asked.done(), "the mint finished before the revocation; the race was not run"
    answer = await asked
    await set_fault(emulator, action="ApplyToken", latencyMs=0)
    (minted,) = list(emulator.state.tokens)

    assert answer.status == 503, await answer.text()
    assert minted not in await answer.text()
    await eventually(lambda: emulator.state.is_revoked(minted))
    tokens = client.server.app[appkeys.TOKENS]
    assert await tokens.lookup(minted) is None
    again = await client.post("/v1/token", headers=bearer(jwt), json=body)
    if block:
        assert again.status == 401
    else:
        assert again.status == 200, await again.text()
        assert minted not in await again.text()
    assert revoke_calls(emulator) == 1


async def test_a_renewal_across_a_claim_revocation_revokes_both_tokens(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=REVOCABLE,
    )
    jwt = make_jwt("mia", now=clock.time(), lifetime=86400, tenant="acme", device_id="mia")
    body = {"clientId": "GID_fleet@@@mia", "actions": ["R"]}
    first = await (await client.post("/v1/token", headers=bearer(jwt), json=body)).json()
    (current,) = first["tokens"]

    # Into the renewal window, with ApplyToken held: the renewal is in flight.
    await set_fault(emulator, action="ApplyToken", latencyMs=1500)
    clock.advance((first["refreshAt"] - clock.time() * 1000) / 1000 - 0.5)
    served = await client.post("/v1/token", headers=bearer(jwt), json=body)
    assert (await served.json())["tokens"][0]["token"] == current["token"]
    await eventually(lambda: apply_calls(emulator) == 2)
    tokens = client.server.app[appkeys.TOKENS]
    answer = await revoke(client, {"claim": {"name": "tenant", "value": "acme"}})
    assert answer["revokedLocally"] == 1
    assert tokens.lost_mints == 0, "the renewal finished before the revocation"

    # The renewal stored its token and kept the old one under its retired key after the
    # listing: both are found by the moved epoch and revoked, nothing is left stored.
    await eventually(lambda: tokens.lost_mints == 2)
    await set_fault(emulator, action="ApplyToken", latencyMs=0)
    renewed = next(t for t in emulator.state.tokens if t != current["token"])
    await eventually(lambda: emulator.state.is_revoked(renewed))
    assert emulator.state.is_revoked(current["token"])

    async def both_gone() -> bool:
        return all([await tokens.lookup(t) is None for t in (renewed, current["token"])])

    # Upstream first, the store after (the revoker queues durably, then deletes): the
    # worker may revoke upstream before the store's deletes have run.
    await eventually(both_gone)
    assert revoke_calls(emulator) == 2  # each once: the listing's, then the renewal's


async def test_one_audit_line_names_the_claim_value(
    emulator: EmulatorHandle, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway(emulator, policy_file=IOT_FLEET_POLICY, revocable_claims=REVOCABLE)
    jwt = make_jwt("ann", tenant="acme", device_id="ann")
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"clientId": "GID_fleet@@@ann"})
    tokens = [t["token"] for t in (await resp.json())["tokens"]]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await revoke(client, {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 5})
        bad = await client.post(
            "/v1/admin/revoke",
            json={"claim": {"name": "device_id", "value": "ann"}},
            headers=admin(client),
        )
        assert bad.status == 400
    lines = [r.audit for r in caplog.records if r.name == "authserver.audit"]
    done, refused_line = lines
    assert (done["action"], done["result"]) == ("revoke", 202)
    assert done["claim"] == {"name": "tenant", "value": "acme"}
    assert sorted(done["fingerprints"]) == sorted(fingerprint(t) for t in tokens)
    assert done["upstreamRevocationAfter"] - done["blockedIssuedBefore"] >= 5000
    assert (refused_line["result"], refused_line["error"]) == (400, "claim_not_revocable")
    assert not any(t in caplog.text for t in tokens)


async def test_a_holder_signed_in_again_with_another_value_is_found_by_it(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=TENANT_POLICY,
        token_sharing="identical-grants",
        revocable_claims=REVOCABLE,
    )
    before = Device(clock, "d2", tenant="acme", roles=["ops"])
    shared = await fetch(client, before)
    # The same subject and clientId, now in the field group: the same shared tokens.
    after = Device(clock, "d2", tenant="acme", roles=["ops", "field"])
    assert await fetch(client, after) == shared
    answer = await revoke(client, {"claim": {"name": "roles", "value": "field"}})
    assert (answer["revokedLocally"], answer["queued"]) == (2, 2)
    await drained(emulator, client, shared)


async def test_claim_revocation_with_grace_on_a_redis_cluster(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_cluster_url: str
) -> None:
    # Claim indexes and epochs live in other slots than the records; the held-back jobs in
    # the stream's slot, moved by one script.
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    one, two = [
        await make_gateway(
            emulator,
            clock=clock,
            redis_url=redis_cluster_url,
            redis_cluster=True,
            policy_file=IOT_FLEET_POLICY,
            revocable_claims=REVOCABLE,
        )
        for _ in range(2)
    ]
    devices = [Device(clock, f"dev-{n}", tenant="acme") for n in range(6)]
    old = [t for d in devices for t in await fetch(one, d)]
    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(two, {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 10})
    assert answer["revokedLocally"] == len(old)
    assert (await queue(one))["delayed"] == len(old)

    async def all_refused() -> bool:
        return all([await refused(one, d) for d in devices])

    await eventually(all_refused, what="every old JWT refused on the other gateway")
    clock.advance(10)
    await drained(emulator, one, old)
    assert revoke_calls(emulator) == len(old)


async def test_an_identity_with_too_many_values_is_revoked_by_any_of_that_claim(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=store_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=REVOCABLE,
    )
    crowd = Device(clock, "crowd", tenant="acme", roles=[f"g{n}" for n in range(40)])
    plain = Device(clock, "plain", tenant="acme", roles=["g1"])
    old_crowd = await fetch(client, crowd)
    kept = await fetch(client, plain)

    # "zzz" is nobody's: the crowd's tokens go (indexed under the claim as a whole), but
    # its JWT carries no "zzz" and is not refused; it simply gets new tokens.
    clock.advance(1)  # the JWTs above were issued before the block, not in its ms
    answer = await revoke(client, {"claim": {"name": "roles", "value": "zzz"}})
    assert sorted(answer["fingerprints"]) == sorted(fingerprint(t) for t in old_crowd)
    assert not await refused(client, crowd)
    assert await fetch(client, plain) == kept
    # "g39" is the crowd's: refused, however far down its list the value is.
    await revoke(client, {"claim": {"name": "roles", "value": "g39"}})
    assert await refused(client, crowd)
    assert not await refused(client, plain)
    await drained(emulator, client, old_crowd)


async def test_a_lone_surrogate_in_a_claim_is_an_invalid_token_not_a_500(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_url: str
) -> None:
    # "\ud800" is valid JSON but no Unicode text: a claim value (or name) holding it could not
    # be written to Redis (its marks and claims are UTF-8 there) and the request was a 500.
    clock = ManualClock(start=START)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator,
        clock=clock,
        redis_url=redis_url,
        policy_file=IOT_FLEET_POLICY,
        revocable_claims=REVOCABLE,
    )
    for claims in ({"tenant": "acme\ud800"}, {"roles": ["ok", "\udfff"]}, {"x\ud83d": 1}):
        device = Device(clock, "alice", model="x200", **claims)
        resp = await client.post("/v1/token", headers=bearer(device.jwt), json=device.body)
        assert resp.status == 401, await resp.text()
        assert (await resp.json())["code"] == "invalid_token"
    # A surrogate pair escaped in the JSON is one character: accepted.
    device = Device(clock, "alice", model="x200", tenant="acme\U0001f600")
    assert await fetch(client, device)
