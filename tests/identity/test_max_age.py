"""AUTHSERVER_JWT_MAX_AGE: a JWT older than that after its `iat` is refused, cached or not."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from authserver.clock import ManualClock
from authserver.errors import InvalidToken
from authserver.identity import JWTSettings, JWTVerifier
from tests.admin.conftest import admin_jwt
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import AUDIENCE, ISSUER, JWT_SECRET, MakeGateway, bearer, make_jwt
from tests.identity.conftest import MakeVerifier
from tests.identity.tokens import ISSUER as IDP
from tests.identity.tokens import SECRET, Minter

MAX_AGE = 600
LEEWAY = 30


@pytest.fixture
async def aged(make_verifier: MakeVerifier) -> JWTVerifier:
    """An HS256 verifier refusing JWTs 600 s after their iat (30 s leeway)."""
    return await make_verifier(
        JWTSettings(
            algorithms=("HS256",), issuer=IDP, secret=SECRET, leeway=LEEWAY, max_age=MAX_AGE
        )
    )


async def test_a_jwt_is_refused_past_its_maximum_age_plus_the_leeway(
    aged: JWTVerifier, minter: Minter, clock: ManualClock
) -> None:
    issued = clock.time()
    at_limit = minter.sign(SECRET, claims={"iat": int(issued - MAX_AGE - LEEWAY + 1)})
    assert (await aged.verify(at_limit)).subject == "dev1"
    too_old = minter.sign(SECRET, claims={"iat": int(issued - MAX_AGE - LEEWAY)})
    with pytest.raises(InvalidToken, match="older than 600 s"):
        await aged.verify(too_old)
    with pytest.raises(InvalidToken, match="no 'iat' claim"):
        await aged.verify(minter.sign(SECRET, drop=["iat"]))


async def test_a_remembered_jwt_is_not_served_past_its_maximum_age(
    aged: JWTVerifier, minter: Minter, clock: ManualClock
) -> None:
    token = minter.sign(SECRET, lifetime=3600)  # exp is far beyond the maximum age
    identity = await aged.verify(token)
    assert identity.expires_at == clock.time() + MAX_AGE
    assert aged.remembered(token) is identity
    clock.advance(MAX_AGE)
    # The cache serves it until iat + max age; the full check grants the leeway, no more.
    assert aged.remembered(token) is None
    assert (await aged.verify(token)).subject == "dev1"
    clock.advance(LEEWAY)
    with pytest.raises(InvalidToken, match="older than"):
        await aged.verify(token)


async def test_without_a_maximum_age_an_old_jwt_and_no_iat_are_fine(
    hs256: JWTVerifier, minter: Minter, clock: ManualClock
) -> None:
    old = minter.sign(SECRET, claims={"iat": int(clock.time()) - 30 * 86400}, lifetime=3600)
    assert (await hs256.verify(old)).expires_at == int(clock.time()) + 3600
    assert (await hs256.verify(minter.sign(SECRET, drop=["iat"]))).issued_at is None


@pytest.fixture
async def emulator(make_emulator: MakeEmulator, clock: ManualClock) -> EmulatorHandle:
    """An emulator on the gateway's manual clock."""
    return await make_emulator(clock=clock)


async def refused_as_too_old(client: Any, path: str, token: str, body: Any = None) -> None:
    """POST with the token; assert a 401 invalid_token problem that names the age."""
    async with client.post(path, headers=bearer(token), json=body) as resp:
        assert resp.status == 401, await resp.text()
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["code"] == "invalid_token"
        assert "older than 600 s" in problem["detail"]


async def test_the_gateway_refuses_device_and_admin_jwts_past_the_maximum_age(
    emulator: EmulatorHandle, make_gateway: MakeGateway, clock: ManualClock
) -> None:
    jwt_settings = JWTSettings(
        algorithms=("HS256",), secret=JWT_SECRET, issuer=ISSUER, audience=AUDIENCE,
        leeway=LEEWAY, max_age=MAX_AGE,
    )  # fmt: skip
    client = await make_gateway(emulator, clock=clock, jwt=jwt_settings)
    device = make_jwt("device-1", groups=["ops"], now=clock.time(), lifetime=86400)
    admin = admin_jwt(now=clock.time(), lifetime=86400)
    for _ in range(3):  # remembered, and answered from the repeat cache
        async with client.post("/v1/token", headers=bearer(device)) as resp:
            assert resp.status == 200, await resp.text()
    async with client.get("/v1/admin/sessions/GID_fleet@@@d1", headers=bearer(admin)) as resp:
        assert resp.status == 200, await resp.text()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "device-2", "exp": clock.time() + 600}
    no_iat = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    async with client.post("/v1/token", headers=bearer(no_iat)) as resp:
        assert resp.status == 401
        assert "no 'iat' claim" in (await resp.json())["detail"]

    clock.advance(MAX_AGE + LEEWAY)
    await refused_as_too_old(client, "/v1/token", device)
    await refused_as_too_old(client, "/v1/admin/query", admin, {"token": "x"})
    fresh = make_jwt("device-1", groups=["ops"], now=clock.time())
    async with client.post("/v1/token", headers=bearer(fresh)) as resp:
        assert resp.status == 200, await resp.text()
