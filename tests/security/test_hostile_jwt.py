"""The hostile-JWT corpus over HTTP: every token refused with 401 problem+json, device and admin."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver import appkeys as app_keys
from authserver.clock import ManualClock
from authserver.identity import JWTSettings
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.identity.conftest import JWKSServer, RecordingServer
from tests.identity.test_hostile import AUDIENCE, CORPUS, ISSUER
from tests.identity.tokens import Keys, Minter, public_jwk, public_pem

# Where a device and an admin present a JWT; each must refuse every hostile one.
PATHS = [("/v1/token", None), ("/v1/admin/query", {"token": "x"})]
# aiohttp refuses a header line over 8190 bytes itself, before any handler runs.
HEADER_LIMIT = 8190


@pytest.fixture
async def emulator(make_emulator: MakeEmulator, clock: ManualClock) -> EmulatorHandle:
    """An emulator on the same manual clock as the gateway (signed timestamps must agree)."""
    return await make_emulator(clock=clock)


async def refused_everywhere(client: TestClient[Any, Any], token: str) -> list[int]:
    """POST the token to every path; assert each answer is a 401 problem (or an early 4xx)."""
    statuses = []
    for path, body in PATHS:
        async with client.post(path, headers=bearer(token), json=body) as resp:
            statuses.append(resp.status)
            if len(token) + len("Bearer ") > HEADER_LIMIT:
                assert 400 <= resp.status < 500, (path, resp.status)
                continue
            assert resp.status == 401, (path, resp.status, await resp.text())
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
            assert problem["code"] == "invalid_token"
            assert token not in str(problem) or not token
            assert resp.headers["WWW-Authenticate"]
    return statuses


async def test_the_corpus_is_refused_by_an_rs256_gateway(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    clock: ManualClock,
    minter: Minter,
    keys: Keys,
) -> None:
    jwt_settings = JWTSettings(
        algorithms=("RS256",), public_key_pem=public_pem(keys.rsa), issuer=ISSUER,
        audience=AUDIENCE,
    )  # fmt: skip
    client = await make_gateway(emulator, clock=clock, jwt=jwt_settings)
    reference = minter.sign(keys.rsa, "RS256", claims={"iss": ISSUER, "aud": AUDIENCE})
    async with client.post("/v1/token", headers=bearer(reference)) as resp:
        assert resp.status == 200, await resp.text()
    async with client.post("/v1/admin/query", headers=bearer(reference), json={"token": "x"}) as r:
        assert r.status == 403  # a valid JWT without the admin scope: known, not allowed

    outcomes: dict[str, list[int]] = {}
    for name, case, _reason in CORPUS:
        outcomes[name] = await refused_everywhere(client, case(minter, keys))
    assert outcomes["1 MB token"] == [400, 400]  # aiohttp: "Got more than 8190 bytes"
    assert all(s == [401, 401] for n, s in outcomes.items() if n != "1 MB token"), outcomes
    assert emulator.state.stats()["calls"].get("ApplyToken", 0) == 2  # the reference only


async def jwks_gateway(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    clock: ManualClock,
    keys: Keys,
    jwks_server: JWKSServer,
) -> TestClient[Any, Any]:
    """A gateway trusting RS256 keys from the JWKS server, which publishes keys.rsa as k1."""
    jwks_server.publish(public_jwk(keys.rsa, kid="k1", alg="RS256"))
    return await make_gateway(
        emulator,
        clock=clock,
        jwt=JWTSettings(issuer=ISSUER, algorithms=("RS256",), jwks_url=jwks_server.url),
    )


async def test_a_jwks_shared_by_two_issuers_does_not_merge_their_subjects(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    clock: ManualClock,
    minter: Minter,
    keys: Keys,
    jwks_server: JWKSServer,
) -> None:
    # A multi-tenant provider signs every tenant's tokens with the keys of one JWKS; "alice"
    # of another tenant (whose admin may mint any subject) must not get our alice's tokens.
    client = await jwks_gateway(emulator, make_gateway, clock, keys, jwks_server)
    ours = minter.sign(keys.rsa, "RS256", claims={"sub": "alice"}, headers={"kid": "k1"})
    async with client.post("/v1/token", headers=bearer(ours)) as resp:
        assert resp.status == 200, await resp.text()
    for other in ["https://other-tenant.example", ISSUER + "/", ISSUER.upper()]:
        theirs = minter.sign(
            keys.rsa, "RS256", claims={"sub": "alice", "iss": other}, headers={"kid": "k1"}
        )
        await refused_everywhere(client, theirs)
    assert emulator.state.stats()["calls"].get("ApplyToken", 0) == 2  # ours only (R and W)


async def test_jwks_gateway_kids_headers_and_rotation(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    clock: ManualClock,
    minter: Minter,
    keys: Keys,
    jwks_server: JWKSServer,
    attacker_server: RecordingServer,
) -> None:
    client = await jwks_gateway(emulator, make_gateway, clock, keys, jwks_server)

    def signed(key: Any, **headers: Any) -> str:
        return minter.sign(key, "RS256", headers=headers)

    async with client.post("/v1/token", headers=bearer(signed(keys.rsa, kid="k1"))) as resp:
        assert resp.status == 200, await resp.text()
    clock.advance(31)  # an unknown kid may refresh the real JWKS: at most once per 30 s
    for kid in ["../../../../etc/passwd", "' OR '1'='1' --", "k1; DROP TABLE keys", "/dev/zero"]:
        await refused_everywhere(client, signed(keys.rsa2, kid=kid))
    attacker_jwk = public_jwk(keys.rsa2, kid="k1", alg="RS256")
    hostile: list[dict[str, Any]] = [
        {"kid": "k1", "jku": attacker_server.url("/jwks.json")},
        {"kid": "evil", "jku": attacker_server.url("/jwks.json")},
        {"kid": "k1", "x5u": attacker_server.url("/cert.pem")},
        {"kid": "k1", "jwk": attacker_jwk},
        {"jwk": attacker_jwk},
    ]
    for headers in hostile:
        await refused_everywhere(client, signed(keys.rsa2, **headers))
    assert attacker_server.requests == []
    assert jwks_server.requests <= 2

    # The issuer rotates: k1 is retired, k2 published. New tokens work at once; k1 ones stop.
    jwks_server.publish(public_jwk(keys.rsa2, kid="k2", alg="RS256"))
    clock.advance(31)
    async with client.post("/v1/token", headers=bearer(signed(keys.rsa2, kid="k2"))) as resp:
        assert resp.status == 200, await resp.text()
    clock.advance(31)
    await refused_everywhere(client, signed(keys.rsa, kid="k1"))
    assert attacker_server.requests == []


async def test_a_repeated_jwt_stops_working_when_its_key_leaves_the_jwks(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    clock: ManualClock,
    minter: Minter,
    keys: Keys,
    jwks_server: JWKSServer,
) -> None:
    client = await jwks_gateway(emulator, make_gateway, clock, keys, jwks_server)
    token = minter.sign(keys.rsa, "RS256", headers={"kid": "k1"})
    for _ in range(3):  # the third is answered from the repeats
        async with client.post("/v1/token", headers=bearer(token)) as resp:
            assert resp.status == 200, await resp.text()
    assert client.server.app[app_keys.ISSUER].answers.repeats == 1
    jwks_server.publish(public_jwk(keys.rsa2, kid="k2", alg="RS256"))
    clock.advance(31)
    await client.server.app[app_keys.VERIFIER].jwks.refresh(rate_limited=False)  # type: ignore[union-attr]
    await refused_everywhere(client, token)


async def test_claims_nested_too_deep_are_refused_not_a_500(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    # Found in review: a 900-byte JWT whose `groups` nested 250 empty lists answered 500 (a
    # RecursionError in the answer cache's weights), after its ApplyToken calls were made.
    emulator = await make_emulator()
    client = await make_gateway(emulator)
    nested: Any = []
    for _ in range(250):
        nested = [nested]
    resp = await client.post("/v1/token", headers=bearer(make_jwt("alice", groups=nested)))
    assert resp.status == 401
    assert (await resp.json())["code"] == "invalid_token"
    assert emulator.state.stats()["calls"].get("ApplyToken", 0) == 0
    shallow: Any = ["ops"]
    for _ in range(10):
        shallow = [shallow]
    resp = await client.post("/v1/token", headers=bearer(make_jwt("alice", groups=shallow)))
    assert resp.status == 200
