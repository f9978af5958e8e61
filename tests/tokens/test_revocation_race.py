"""A subject revoked while one of its tokens is being minted: that token never escapes.

The emulator holds ApplyToken (injected latency) so that the revocation lands mid-mint, in
the memory and the Redis modes: the minted token is revoked upstream, never stored, never
answered, and the next request is answered as the revocation's block says.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.emulator.state import Fault
from authserver.tokens.bus import InvalidationBus
from authserver.tokens.model import TokenRecord
from authserver.tokens.revocation import MemoryState, Revoker
from authserver.tokens.service import RevokedWhileIssuing, TokenRequest, TokenService
from authserver.tokens.store import MemoryStore
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import BOUND_POLICY, MakeGateway, bearer, make_jwt
from tests.helpers import eventually

BODY = {"actions": ["R"]}


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


async def revoke_mid_mint(
    client: TestClient[Any, Any], emulator: EmulatorHandle, jwt: str, block: bool
) -> tuple[aiohttp.ClientResponse, str]:
    """A token request held in ApplyToken, its subject revoked meanwhile; (answer, token)."""
    await set_fault(emulator, action="ApplyToken", latencyMs=1500)
    asked = asyncio.ensure_future(client.post("/v1/token", headers=bearer(jwt), json=BODY))
    await eventually(lambda: apply_calls(emulator) == 1)
    resp = await client.post(
        "/v1/admin/revoke",
        json={"subject": "mia", "blockIssuedBefore": block},
        headers=admin_headers(),
    )
    assert resp.status == 202, await resp.text()
    # The revocation found nothing stored: the only token is still being minted.
    assert (await resp.json())["revokedLocally"] == 0
    assert not asked.done(), "the mint finished before the revocation; the race was not run"
    answer = await asked
    await set_fault(emulator, action="ApplyToken", latencyMs=0)
    (minted,) = list(emulator.state.tokens)
    return answer, minted


@pytest.mark.parametrize("block", [True, False], ids=["blocked", "unblocked"])
async def test_a_token_minted_across_a_subject_revocation_is_revoked(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None, block: bool
) -> None:
    emulator = await make_emulator()
    client = await make_gateway(emulator, redis_url=store_url)
    jwt = make_jwt("mia")
    answer, minted = await revoke_mid_mint(client, emulator, jwt, block)

    # Not handed out: 503 with Retry-After, and no token in the body.
    assert answer.status == 503, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert answer.headers["Retry-After"] == "1"
    assert minted not in await answer.text()
    await eventually(lambda: emulator.state.is_revoked(minted))
    tokens = client.server.app[appkeys.TOKENS]
    assert tokens.lost_mints == 1
    assert await tokens.lookup(minted) is None

    # The retry: no cached answer serves the revoked token; the block decides.
    again = await client.post("/v1/token", headers=bearer(jwt), json=BODY)
    if block:
        assert again.status == 401
        assert (await again.json())["code"] == "token_revoked"
    else:
        assert again.status == 200, await again.text()
        (fresh,) = (await again.json())["tokens"]
        assert fresh["token"] != minted
        assert not emulator.state.is_revoked(fresh["token"])
    listed = await client.get("/v1/admin/subjects/mia/tokens", headers=admin_headers())
    assert len((await listed.json())["tokens"]) == (0 if block else 1)


async def test_a_renewal_across_a_subject_revocation_stores_nothing(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(emulator, clock=clock, redis_url=store_url)
    jwt = make_jwt("mia", now=clock.time())
    first = await client.post("/v1/token", headers=bearer(jwt), json=BODY)
    body = await first.json()
    (current,) = body["tokens"]

    # Into the renewal window, with ApplyToken held: the renewal is in flight.
    await set_fault(emulator, action="ApplyToken", latencyMs=1500)
    clock.advance((body["refreshAt"] - clock.time() * 1000) / 1000 - 0.5)
    served = await client.post("/v1/token", headers=bearer(jwt), json=BODY)
    assert served.status == 200, await served.text()
    assert (await served.json())["tokens"][0]["token"] == current["token"]
    await eventually(lambda: apply_calls(emulator) == 2)
    tokens = client.server.app[appkeys.TOKENS]
    resp = await client.post(
        "/v1/admin/revoke",
        json={"subject": "mia", "blockIssuedBefore": False},
        headers=admin_headers(now=clock.time()),
    )
    assert (await resp.json())["revokedLocally"] == 1
    assert tokens.lost_mints == 0, "the renewal finished before the revocation"

    await eventually(lambda: tokens.lost_mints == 1)
    renewed = next(t for t in emulator.state.tokens if t != current["token"])
    await eventually(lambda: emulator.state.is_revoked(renewed))
    assert emulator.state.is_revoked(current["token"])
    # Neither the renewed token nor the revoked one it replaced was put back.
    listed = await client.get(
        "/v1/admin/subjects/mia/tokens", headers=admin_headers(now=clock.time())
    )
    assert (await listed.json())["tokens"] == []


MIA_1 = "GID_fleet@@@mia-1"


@pytest.mark.parametrize("block", [True, False], ids=["blocked", "unblocked"])
async def test_a_token_minted_across_a_client_id_revocation_is_revoked(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None, block: bool
) -> None:
    emulator = await make_emulator()
    client = await make_gateway(emulator, redis_url=store_url, policy_file=BOUND_POLICY)
    jwt = make_jwt("mia")
    body = {**BODY, "clientId": MIA_1}

    # ApplyToken held open until the clientId's revocation has been accepted.
    held = asyncio.Event()
    emulator.state.faults["ApplyToken"] = Fault(hold=held)
    asked = asyncio.ensure_future(client.post("/v1/token", headers=bearer(jwt), json=body))
    await eventually(lambda: apply_calls(emulator) == 1)
    resp = await client.post(
        "/v1/admin/revoke",
        json={"clientId": MIA_1, "blockIssuedBefore": block},
        headers=admin_headers(),
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["revokedLocally"] == 0  # the only token is still being minted
    assert not asked.done()
    held.set()
    answer = await asked
    del emulator.state.faults["ApplyToken"]
    (minted,) = list(emulator.state.tokens)

    # Not handed out, not stored, revoked upstream through the durable queue.
    assert answer.status == 503, await answer.text()
    assert answer.content_type == "application/problem+json"
    assert answer.headers["Retry-After"] == "1"
    assert minted not in await answer.text()
    await eventually(lambda: emulator.state.is_revoked(minted))
    tokens = client.server.app[appkeys.TOKENS]
    assert tokens.lost_mints == 1
    assert await tokens.lookup(minted) is None
    assert await tokens.store.client_tokens(MIA_1) == []

    # The retry: nothing serves the revoked token; the block decides.
    again = await client.post("/v1/token", headers=bearer(jwt), json=body)
    if block:
        assert again.status == 401
        assert (await again.json())["code"] == "token_revoked"
    else:
        assert again.status == 200, await again.text()
        (fresh,) = (await again.json())["tokens"]
        assert fresh["token"] != minted
        assert not emulator.state.is_revoked(fresh["token"])


async def test_a_renewal_across_a_client_id_revocation_stores_nothing(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator, clock=clock, redis_url=store_url, policy_file=BOUND_POLICY
    )
    jwt = make_jwt("mia", now=clock.time())
    body = {**BODY, "clientId": MIA_1}
    first = await client.post("/v1/token", headers=bearer(jwt), json=body)
    answer = await first.json()
    (current,) = answer["tokens"]

    # Into the renewal window, with ApplyToken held: the renewal is in flight.
    held = asyncio.Event()
    emulator.state.faults["ApplyToken"] = Fault(hold=held)
    clock.advance((answer["refreshAt"] - clock.time() * 1000) / 1000 - 0.5)
    served = await client.post("/v1/token", headers=bearer(jwt), json=body)
    assert (await served.json())["tokens"][0]["token"] == current["token"]
    await eventually(lambda: apply_calls(emulator) == 2)
    tokens = client.server.app[appkeys.TOKENS]
    resp = await client.post(
        "/v1/admin/revoke",
        json={"clientId": MIA_1, "blockIssuedBefore": False},
        headers=admin_headers(now=clock.time()),
    )
    assert (await resp.json())["revokedLocally"] == 1
    held.set()

    await eventually(lambda: tokens.lost_mints == 1)
    del emulator.state.faults["ApplyToken"]
    renewed = next(t for t in emulator.state.tokens if t != current["token"])
    await eventually(lambda: emulator.state.is_revoked(renewed))
    assert emulator.state.is_revoked(current["token"])
    assert await tokens.store.client_tokens(MIA_1) == []
    assert await tokens.lookup(renewed) is None


class HeldStore(MemoryStore):
    """The memory store, with reads that can be held the way a slow Redis holds them."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def get(self, key: str, subject: str) -> TokenRecord | None:
        """Wait while held, then read."""
        if self.hold is not None:
            self.reading.set()
            await self.hold.wait()
        return await super().get(key, subject)


async def test_a_block_landing_while_the_store_is_read_mints_nothing(
    emulator: EmulatorHandle,
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    minted: list[str] = []

    async def mint(
        instance_id: str, resources: tuple[str, ...], actions: str, expire_ms: int, _b: float
    ) -> str:
        minted.append(emulator.state.issue_token(instance_id, actions, resources, expire_ms))
        return minted[-1]

    store = HeldStore(clock)
    tokens = TokenService(
        mint, store, instance_id=emulator.instance_id, access_key_id="LTAIx", clock=clock
    )
    revoker = Revoker(tokens, MemoryState(), InvalidationBus(), clock=clock)
    request = TokenRequest(subject="sam", client_id=None, read=("a/#",), write=(), ttl=3600)
    first = await tokens.credentials(request, clock.monotonic() + 5)

    # The app JWT passed the block check; its request is reading the store when the
    # subject is revoked (and blocked), which purges the very token being read.
    store.hold = asyncio.Event()
    asked = asyncio.ensure_future(tokens.credentials(request, clock.monotonic() + 5))
    await store.reading.wait()
    assert (await revoker.revoke_subject("sam")).revoked_locally == 1
    store.hold.set()
    store.hold = None

    with pytest.raises(RevokedWhileIssuing):
        await asked
    assert minted[0] == first.tokens[0].token
    for token in minted:  # whatever was minted meanwhile is revoked, and none is stored
        assert await revoker.is_revoked(token)
    assert await store.subject_tokens("sam") == []
