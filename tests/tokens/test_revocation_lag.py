"""A block made by one gateway refuses an old app JWT on another before the bus tells it.

Two gateways on one real Redis. Gateway B's invalidation bus is held (its subscriber's
messages are kept back until the test lets them through), so B's mirror of the blocks is
behind while the epochs the revocation moved are not: a mint on B for an app JWT issued
before the block must still be refused (401 `token_revoked`), before anything is minted,
or its token would be stored under the moved epoch after the revocation's listing ran and
never be revoked upstream. A newer JWT still gets its token, and an answer served from
the cache costs no read of the blocks. The device-credential route, which reaches the
upstream on every request, reads the blocks as a mint does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.clock import ManualClock
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import BOUND_POLICY, REPO, MakeGateway, bearer, make_jwt
from tests.fixtures.redis import RedisServer
from tests.helpers import eventually

START = 1_900_000_000.0
TENANT_POLICY = REPO / "policies" / "tenant-broadcast.yaml"
CREDENTIAL_POLICY = REPO / "tests" / "fixtures" / "credential-policy.yaml"
BODY = {"clientId": "GID_fleet@@@mia-1", "actions": ["R"]}
REVOCATIONS = {
    "subject": {"subject": "mia"},
    "clientId": {"clientId": "GID_fleet@@@mia-1"},
    "claim": {"claim": {"name": "tenant", "value": "acme"}},
}


# The same three selectors, for a sensor of the credential policy (GID_fleet@@@{sub}).
SENSOR_CLIENT_ID = "GID_fleet@@@s1"
SENSOR_REVOCATIONS = {
    "subject": {"subject": "s1"},
    "clientId": {"clientId": SENSOR_CLIENT_ID},
    "claim": {"claim": {"name": "tenant", "value": "acme"}},
    # A grace holds back the upstream revocation of the old tokens, not the block.
    "claim with a grace": {"claim": {"name": "tenant", "value": "acme"}, "graceSeconds": 600},
    "subject with a grace": {"subject": "s1", "graceSeconds": 600},
}


def apply_calls(emulator: EmulatorHandle) -> int:
    """ApplyToken calls that reached the emulator."""
    return int(emulator.state.stats()["calls"].get("ApplyToken", 0))


async def two_gateways(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    clock: ManualClock,
    policy_file: Path = BOUND_POLICY,
    **overrides: Any,
) -> tuple[EmulatorHandle, TestClient[Any, Any], TestClient[Any, Any]]:
    """An emulator and two gateways on one Redis, both subscribed to the bus.

    Revocable claims are {"tenant"} unless `overrides` (settings) say otherwise.
    """
    emulator = await make_emulator(clock=clock)
    settings = {"revocable_claims": frozenset({"tenant"}), **overrides}
    a, b = [
        await make_gateway(
            emulator, clock=clock, redis_url=redis_url, policy_file=policy_file, **settings
        )
        for _ in range(2)
    ]
    # Subscribed (and synced) before the bus is held: a late subscription would read the
    # blocks in its resync, and the race would not be run.
    await eventually(lambda: a.server.app[appkeys.BUS].synced and b.server.app[appkeys.BUS].synced)
    return emulator, a, b


@pytest.mark.parametrize("selector", list(REVOCATIONS))
async def test_a_block_refuses_a_mint_before_the_bus_arrives(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    selector: str,
) -> None:
    clock = ManualClock(start=START)
    emulator, a, b = await two_gateways(make_emulator, make_gateway, redis_url, clock)
    old_jwt = make_jwt("mia", now=clock.time(), tenant="acme")
    bus_b = b.server.app[appkeys.BUS]
    held: list[bytes | str] = []
    receive = bus_b._receive
    monkeypatch.setattr(bus_b, "_receive", held.append)

    clock.advance(1)  # the JWT was issued before the block, not in its millisecond
    revoked = await a.post(
        "/v1/admin/revoke", json=REVOCATIONS[selector], headers=admin_headers(now=clock.time())
    )
    assert revoked.status == 202, await revoked.text()
    await eventually(lambda: len(held) >= 1, what="the block event reached B's subscriber")
    # B's mirror has not heard of the block (this would raise): the race is run.
    identity = await b.server.app[appkeys.VERIFIER].verify(old_jwt)
    b.server.app[appkeys.REVOKER].check(identity, BODY["clientId"])

    answer = await b.post("/v1/token", headers=bearer(old_jwt), json=BODY)
    assert answer.status == 401, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["code"] == "token_revoked"
    assert apply_calls(emulator) == 0  # refused before anything was minted
    # What B read is kept in its mirror: the next request is refused without a read.
    again = await b.post("/v1/token", headers=bearer(old_jwt), json=BODY)
    assert again.status == 401

    for data in held:  # the bus catches up
        receive(data)
    monkeypatch.undo()
    clock.advance(1)
    fresh = await b.post(
        "/v1/token", headers=bearer(make_jwt("mia", now=clock.time(), tenant="acme")), json=BODY
    )
    assert fresh.status == 200, await fresh.text()
    assert apply_calls(emulator) == 1


async def test_only_a_mint_reads_the_blocks(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(start=START)
    _emulator, a, _b = await two_gateways(make_emulator, make_gateway, redis_url, clock)
    state = a.server.app[appkeys.REVOKER].state
    reads: list[Any] = []
    blocks_of = state.blocks_of

    async def counted(wanted: Any) -> dict[str, dict[str, int]]:
        reads.append(wanted)
        return await blocks_of(wanted)

    monkeypatch.setattr(state, "blocks_of", counted)
    jwt = make_jwt("mia", now=clock.time(), tenant="acme")
    first = await a.post("/v1/token", headers=bearer(jwt), json=BODY)
    assert first.status == 200, await first.text()
    assert len(reads) == 1  # one read for the mint
    assert reads[0]["subject"] == ("mia",)
    assert len(reads[0]["claim"]) == 1  # its tenant's value
    for _ in range(3):  # the answers serve these: no read of the blocks
        again = await a.post("/v1/token", headers=bearer(jwt), json=BODY)
        assert again.status == 200
    assert len(reads) == 1


@pytest.mark.parametrize("selector", list(REVOCATIONS))
async def test_once_an_epoch_moved_its_block_is_there(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    selector: str,
) -> None:
    clock = ManualClock(start=START)
    emulator, a, b = await two_gateways(make_emulator, make_gateway, redis_url, clock)
    old_jwt = make_jwt("mia", now=clock.time(), tenant="acme")
    monkeypatch.setattr(b.server.app[appkeys.BUS], "_receive", lambda _data: None)
    store = a.server.app[appkeys.TOKENS].store
    bump_epoch = store.bump_epoch
    moved, go_on = asyncio.Event(), asyncio.Event()

    async def held_bump(scope: str, name: str) -> int:
        epoch = await bump_epoch(scope, name)
        moved.set()
        await go_on.wait()  # the revocation stops right after its first epoch move
        return epoch

    monkeypatch.setattr(store, "bump_epoch", held_bump)
    clock.advance(1)
    revoking = asyncio.ensure_future(
        a.post(
            "/v1/admin/revoke", json=REVOCATIONS[selector], headers=admin_headers(now=clock.time())
        )
    )
    await moved.wait()
    try:
        # B mints under the moved epoch: the block must already be in Redis to refuse it.
        answer = await b.post("/v1/token", headers=bearer(old_jwt), json=BODY)
    finally:
        go_on.set()
    assert (await revoking).status == 202
    assert answer.status == 401, await answer.text()
    assert (await answer.json())["code"] == "token_revoked"
    assert apply_calls(emulator) == 0


async def test_a_shared_token_is_not_handed_to_a_jwt_blocked_on_another_gateway(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(start=START)
    emulator, a, b = await two_gateways(
        make_emulator,
        make_gateway,
        redis_url,
        clock,
        policy_file=TENANT_POLICY,
        token_sharing="identical-grants",
        revocable_claims=frozenset(),
    )

    def device(n: int) -> tuple[str, dict[str, str]]:
        jwt = make_jwt(f"dev-{n}", now=clock.time(), tenant="acme", device_id=f"d{n}")
        return jwt, {"clientId": f"GID_fleet@@@d{n}"}

    blocked, other = device(0), device(1)
    shared = await a.post("/v1/token", headers=bearer(other[0]), json=other[1])
    assert shared.status == 200, await shared.text()
    minted = apply_calls(emulator)
    monkeypatch.setattr(b.server.app[appkeys.BUS], "_receive", lambda _data: None)
    clock.advance(1)
    revoked = await a.post(
        "/v1/admin/revoke", json={"subject": "dev-0"}, headers=admin_headers(now=clock.time())
    )
    assert revoked.status == 202, await revoked.text()

    # B finds the shared token in the store (no mint) and would hold it for dev-0 after the
    # revocation listed dev-0's holdings: the new holding checks the shared blocks first.
    answer = await b.post("/v1/token", headers=bearer(blocked[0]), json=blocked[1])
    assert answer.status == 401, await answer.text()
    assert (await answer.json())["code"] == "token_revoked"
    assert apply_calls(emulator) == minted


@pytest.mark.parametrize("selector", list(SENSOR_REVOCATIONS))
async def test_a_block_refuses_a_device_credential_before_the_bus_arrives(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    selector: str,
) -> None:
    clock = ManualClock(start=START)
    emulator, a, b = await two_gateways(
        make_emulator, make_gateway, redis_url, clock, policy_file=CREDENTIAL_POLICY
    )
    claims = {"groups": ["sensors"], "tenant": "acme"}
    old_jwt = make_jwt("s1", now=clock.time(), **claims)
    body = {"clientId": SENSOR_CLIENT_ID}
    bus_b = b.server.app[appkeys.BUS]
    held: list[bytes | str] = []
    receive = bus_b._receive
    monkeypatch.setattr(bus_b, "_receive", held.append)

    clock.advance(1)
    revoked = await a.post(
        "/v1/admin/revoke",
        json=SENSOR_REVOCATIONS[selector],
        headers=admin_headers(now=clock.time()),
    )
    assert revoked.status == 202, await revoked.text()
    await eventually(lambda: len(held) >= 1, what="the block event reached B's subscriber")
    identity = await b.server.app[appkeys.VERIFIER].verify(old_jwt)
    b.server.app[appkeys.REVOKER].check(identity, SENSOR_CLIENT_ID)  # B's mirror: no block yet

    answer = await b.post("/v1/device-credential", headers=bearer(old_jwt), json=body)
    assert answer.status == 401, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["code"] == "token_revoked"
    calls = emulator.state.stats()["calls"]
    assert "GetDeviceCredential" not in calls  # refused before the upstream
    assert "RegisterDeviceCredential" not in calls
    assert emulator.state.credentials == {}

    for data in held:  # the bus catches up
        receive(data)
    monkeypatch.undo()
    clock.advance(1)
    new_jwt = make_jwt("s1", now=clock.time(), **claims)
    fresh = await b.post("/v1/device-credential", headers=bearer(new_jwt), json=body)
    assert fresh.status == 200, await fresh.text()
    assert (await fresh.json())["registered"] is True


async def test_a_holding_written_across_its_revocation_is_checked_again_on_the_retry(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(start=START)
    emulator, a, b = await two_gateways(
        make_emulator,
        make_gateway,
        redis_url,
        clock,
        policy_file=TENANT_POLICY,
        token_sharing="identical-grants",
        revocable_claims=frozenset(),
    )
    blocked = make_jwt("dev-0", now=clock.time(), tenant="acme", device_id="d0")
    body = {"clientId": "GID_fleet@@@d0"}
    other = make_jwt("dev-1", now=clock.time(), tenant="acme", device_id="d1")
    shared = await a.post("/v1/token", headers=bearer(other), json={"clientId": "GID_fleet@@@d1"})
    assert shared.status == 200, await shared.text()
    minted = apply_calls(emulator)
    monkeypatch.setattr(b.server.app[appkeys.BUS], "_receive", lambda _data: None)
    store_b = b.server.app[appkeys.TOKENS].store
    hold = store_b.hold
    revoked: list[int] = []

    async def revoked_first(record: Any, holder: Any) -> None:
        if not revoked:  # A revokes dev-0 (block, epoch, listing) before B writes its holding
            clock.advance(1)
            answer = await a.post(
                "/v1/admin/revoke",
                json={"subject": "dev-0"},
                headers=admin_headers(now=clock.time()),
            )
            assert answer.status == 202, await answer.text()
            revoked.append((await answer.json())["revokedLocally"])
        await hold(record, holder)

    monkeypatch.setattr(store_b, "hold", revoked_first)
    first = await b.post("/v1/token", headers=bearer(blocked), json=body)
    assert first.status == 503, await first.text()  # B saw the moved epoch
    assert revoked == [0]  # the listing ran before the holding was written: nothing rotated

    # The retry finds the same shared tokens (not rotated), and B's mirror has no block yet:
    # the holding must be checked against the shared blocks again, not taken as known.
    retry = await b.post("/v1/token", headers=bearer(blocked), json=body)
    assert retry.status == 401, await retry.text()
    assert (await retry.json())["code"] == "token_revoked"
    assert apply_calls(emulator) == minted


async def test_a_device_credential_is_not_answered_when_the_blocks_cannot_be_read(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    redis_server: RedisServer,
    redis_url: str,
) -> None:
    # Redis down: the blocks are unknown, so the credential (a login) is not handed out.
    emulator = await make_emulator()
    gateway = await make_gateway(emulator, redis_url=redis_url, policy_file=CREDENTIAL_POLICY)
    jwt = make_jwt("s1", groups=["sensors"], tenant="acme")
    redis_server.stop()
    answer = await gateway.post(
        "/v1/device-credential", headers=bearer(jwt), json={"clientId": SENSOR_CLIENT_ID}
    )
    assert answer.status == 503, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert (await answer.json())["code"] == "store_unavailable"
    calls = emulator.state.stats()["calls"]
    assert "GetDeviceCredential" not in calls
    assert "RegisterDeviceCredential" not in calls
