"""A device's previous token, still valid after a renewal, stays findable by its value.

A renewal keeps the replaced record under a retired key (devices still connect with it until
it expires); an admin query or a revocation by token value must find it there, in both
stores.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from authserver.clock import ManualClock
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually


def apply_calls(emulator: EmulatorHandle) -> int:
    """ApplyToken calls the emulator answered successfully."""
    return int(emulator.state.stats()["success"].get("ApplyToken", 0))


async def read_token(client: TestClient[Any, Any], jwt: str) -> dict[str, Any]:
    """The one read token the gateway hands `jwt`."""
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"actions": ["R"]})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    (token,) = body["tokens"]
    return {**token, "refreshAt": body["refreshAt"]}


async def renewed_pair(
    client: TestClient[Any, Any], emulator: EmulatorHandle, clock: ManualClock, subject: str
) -> tuple[str, str]:
    """The previous and the current token of a device whose token was renewed once."""
    jwt = make_jwt(subject, now=clock.time())
    first = await read_token(client, jwt)
    # Into the renewal window: the device still gets its token, a renewal starts behind it.
    clock.advance((first["refreshAt"] - clock.time() * 1000) / 1000 - 0.5)
    assert (await read_token(client, jwt))["token"] == first["token"]
    await eventually(lambda: apply_calls(emulator) == 2)
    clock.advance(1)
    current = await read_token(client, jwt)
    assert current["token"] != first["token"]
    assert first["expireTime"] > clock.time() * 1000  # the previous one is still valid
    return str(first["token"]), str(current["token"])


async def test_the_previous_token_is_found_by_query(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(emulator, clock=clock, redis_url=store_url)
    previous, current = await renewed_pair(client, emulator, clock, "dora")

    for token in (previous, current):
        resp = await client.post(
            "/v1/admin/query", json={"token": token}, headers=admin_headers(now=clock.time())
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body.get("reason") != "unknown", body
        assert body["valid"] is True
        assert body["source"] == "upstream"


async def test_the_previous_token_is_revoked_by_value(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(emulator, clock=clock, redis_url=store_url)
    previous, current = await renewed_pair(client, emulator, clock, "ezra")
    headers = admin_headers(now=clock.time())

    resp = await client.post("/v1/admin/revoke", json={"token": previous}, headers=headers)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["revokedLocally"] == 1
    await eventually(lambda: emulator.state.is_revoked(previous))
    assert not emulator.state.is_revoked(current)

    # Gone from the store too: the subject lists only the current token.
    listed = await client.get("/v1/admin/subjects/ezra/tokens", headers=headers)
    fingerprints = [t["fingerprint"] for t in (await listed.json())["tokens"]]
    assert len(fingerprints) == 1
    query = await client.post("/v1/admin/query", json={"token": previous}, headers=headers)
    assert (await query.json())["reason"] == "revoked"
