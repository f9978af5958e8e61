"""POST /v1/admin/query: local answers cost no upstream call; live tokens ask QueryToken once."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from authserver.clock import ManualClock
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt


def query_calls(emulator: EmulatorHandle) -> int:
    """QueryToken calls that reached the emulator."""
    return int(emulator.state.stats()["calls"].get("QueryToken", 0))


async def device_token(client: TestClient[Any, Any], clock: ManualClock, subject: str) -> str:
    """A read token minted through the gateway for `subject`."""
    jwt = make_jwt(subject, now=clock.time())
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"actions": ["R"]})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["tokens"][0]["token"])


async def ask(client: TestClient[Any, Any], token: str, clock: ManualClock) -> dict[str, Any]:
    """The admin query answer for `token`."""
    headers = admin_headers(now=clock.time())
    resp = await client.post("/v1/admin/query", json={"token": token}, headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_unknown_token_is_answered_locally(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(time.time())
    client = await make_gateway(emulator, clock=clock)
    # Even a token the upstream issued, if it was not issued through us, is unknown here.
    foreign = emulator.state.issue_token(
        emulator.instance_id, "R", ("a/#",), int(time.time() * 1000) + 3_600_000
    )
    for token in ("no-such-token", foreign):
        body = await ask(client, token, clock)
        assert body["valid"] is False
        assert body["source"] == "local"
        assert body["reason"] == "unknown"
        assert len(body["fingerprint"]) == 8
    assert query_calls(emulator) == 0


async def test_expired_token_is_answered_locally(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(time.time())
    client = await make_gateway(emulator, clock=clock)
    token = await device_token(client, clock, "bob")
    clock.advance(3600 + 5)
    body = await ask(client, token, clock)
    assert body["valid"] is False
    assert body["source"] == "local"
    # The store forgets a token at its expiry, so an expired token is one we no longer hold.
    assert body["reason"] in {"expired", "unknown"}
    assert query_calls(emulator) == 0


async def test_live_token_asks_upstream_once_then_caches(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(time.time())
    client = await make_gateway(emulator, clock=clock)
    token = await device_token(client, clock, "bob")

    first = await ask(client, token, clock)
    assert first["valid"] is True
    assert first["source"] == "upstream"
    assert first["cached"] is False
    assert first["type"] == "R"
    assert first["resources"] == ["broadcast/#", "devices/bob/#"]
    assert first["expireTime"] > clock.time() * 1000
    assert query_calls(emulator) == 1

    clock.advance(4)
    again = await ask(client, token, clock)
    assert again["valid"] is True
    assert again["cached"] is True
    assert query_calls(emulator) == 1


async def test_upstream_revocation_shows_after_the_cache_expires(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(time.time())
    client = await make_gateway(emulator, clock=clock)
    token = await device_token(client, clock, "bob")
    assert (await ask(client, token, clock))["valid"] is True

    emulator.state.revoke_token(token, emulator.instance_id)
    assert (await ask(client, token, clock))["valid"] is True  # the 5 s cache
    clock.advance(5.5)
    body = await ask(client, token, clock)
    assert body["valid"] is False
    assert body["source"] == "upstream"
    assert body["cached"] is False
    assert query_calls(emulator) == 2


async def test_query_body_is_strict(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    for body in ({}, {"token": ""}, {"token": 5}, {"token": None}, {"token": "x", "more": 1}):
        resp = await client.post("/v1/admin/query", json=body, headers=admin_headers())
        assert resp.status == 400, body
    resp = await client.post("/v1/admin/query", data="not json", headers=admin_headers())
    assert resp.status == 400
    assert query_calls(emulator) == 0
