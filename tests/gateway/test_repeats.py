"""Repeated requests: a request (header and body) sent before is answered from one lookup.

Each test first makes the repeat (the third request with the same header is answered from
`AnswerCache.repeat`), then changes one thing the repeat must notice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.policy.loader import load_policy
from authserver.tokens.answers import REPEAT_MAX_HEADER, AnswerCache
from authserver.tokens.store import KEY_PREFIX
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt


def answers_of(client: TestClient[Any, Any]) -> AnswerCache:
    return client.server.app[appkeys.ISSUER].answers


async def fetch(client: TestClient[Any, Any], jwt: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/token", headers=bearer(jwt), json=body or None)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def repeated(client: TestClient[Any, Any], jwt: str) -> dict[str, Any]:
    """Ask three times; the third answer comes from the repeats. Returns it."""
    first = await fetch(client, jwt)
    assert answers_of(client).repeats == 0  # a JWT seen once is not remembered yet
    assert await fetch(client, jwt) == first
    assert answers_of(client).repeats == 1
    hits = answers_of(client).hits
    assert await fetch(client, jwt) == first
    assert answers_of(client).hits == hits + 1
    return first


async def clocked(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, **overrides: Any
) -> tuple[ManualClock, TestClient[Any, Any]]:
    """A gateway and an emulator on one manual clock."""
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    return clock, await make_gateway(emulator, clock=clock, **overrides)


def token_of(body: dict[str, Any], kind: str) -> str:
    return next(t["token"] for t in body["tokens"] if t["type"] == kind)


async def test_each_body_is_its_own_repeat(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    for _ in range(3):
        await fetch(client, jwt, ttlSeconds=900)
    assert answers_of(client).repeats == 1
    hits = answers_of(client).hits
    body = await fetch(client, jwt)  # no body: not the repeat of the one with a body
    assert answers_of(client).hits == hits
    assert body["expireTime"] > (await fetch(client, jwt, ttlSeconds=900))["expireTime"]


async def test_a_subject_block_refuses_the_repeated_jwt(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock, client = await clocked(make_emulator, make_gateway)
    jwt = make_jwt("bob", now=clock.time())
    await repeated(client, jwt)
    clock.advance(1)
    await client.server.app[appkeys.REVOKER].revoke_subject("bob")
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"


async def test_a_revoked_token_is_not_repeated(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("erin")
    body = await repeated(client, jwt)
    await client.server.app[appkeys.REVOKER].revoke_token(token_of(body, "R"))
    again = await fetch(client, jwt)
    assert token_of(again, "R") != token_of(body, "R")
    assert token_of(again, "W") == token_of(body, "W")


async def test_an_evicted_answer_is_not_repeated_after_its_token_is_revoked(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Room for one answer: bob's pushes erin's out, so a revocation can no longer find it.
    client = await make_gateway(emulator, answer_cache_size=1)
    jwt = make_jwt("erin")
    body = await repeated(client, jwt)
    await fetch(client, make_jwt("bob"))
    await client.server.app[appkeys.REVOKER].revoke_token(token_of(body, "R"))
    assert token_of(await fetch(client, jwt), "R") != token_of(body, "R")


async def test_a_new_policy_is_applied_to_the_repeated_jwt(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("carol")
    body = await repeated(client, jwt)
    assert [t["type"] for t in body["tokens"]] == ["R", "W"]
    policy = tmp_path / "rw.yaml"
    policy.write_text(
        "version: 1\neveryone:\n  - topics: ['devices/{sub}/#']\n    actions: [R, W]\n"
    )
    client.server.app[appkeys.POLICY].swap(load_policy(policy))
    again = await fetch(client, jwt)
    assert [t["type"] for t in again["tokens"]] == ["RW"]


async def test_an_expired_jwt_is_not_repeated(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock, client = await clocked(make_emulator, make_gateway)
    jwt = make_jwt("dave", now=clock.time(), lifetime=120)
    body = await repeated(client, jwt)
    clock.advance(119)
    assert await fetch(client, jwt) == body  # the tokens last an hour; the JWT two minutes
    clock.advance(2 + 30)  # past exp and the verifier's default leeway of 30 s
    hits = answers_of(client).hits
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 401
    assert "expired" in (await resp.json())["detail"]
    assert answers_of(client).hits == hits  # a refused repeat is not counted as a hit
    assert answers_of(client).repeats == 0


async def test_a_repeat_runs_out_with_its_answer(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock, client = await clocked(make_emulator, make_gateway)
    jwt = make_jwt("frank", now=clock.time(), lifetime=7 * 24 * 3600)
    body = await repeated(client, jwt)
    clock.advance((body["refreshAt"] - clock.time() * 1000) / 1000 + 1)
    again = await fetch(client, jwt)
    assert again["refreshAt"] > body["refreshAt"]


async def test_the_subject_limit_does_not_refuse_repeats(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock, client = await clocked(
        make_emulator, make_gateway, rate_limit_subject=0.1, rate_limit_subject_burst=4
    )
    jwt = make_jwt("gina", now=clock.time())
    body = await repeated(client, jwt)
    for _ in range(20):  # far past the burst: a repeat costs a lookup, not a limit
        assert await fetch(client, jwt) == body
    # What needs working out is still counted: the first request, then these three.
    for n in range(3):
        await fetch(client, jwt, topics=["devices/gina/#", f"devices/gina/{n}"])
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"topics": ["devices/gina/x"]})
    assert resp.status == 429
    assert json.loads(await resp.text())["limit"] == "subject"


async def test_a_block_alone_refuses_the_repeated_jwt(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_url: str
) -> None:
    clock, client = await clocked(make_emulator, make_gateway, redis_url=redis_url)
    jwt = make_jwt("alice", now=clock.time())
    await repeated(client, jwt)
    # Redis lets go of the token records (say, an eviction under maxmemory): revoking alice
    # finds no token to drop, and only the block stands between her old JWT and its answer.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        doomed = [key async for key in redis.scan_iter(match=f"{KEY_PREFIX}tok:*")]
        assert doomed
        await redis.delete(*doomed)
    finally:
        await redis.aclose()
    clock.advance(1)
    result = await client.server.app[appkeys.REVOKER].revoke_subject("alice")
    assert result.revoked_locally == 0
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"


async def test_a_token_the_store_evicted_is_not_repeated_after_its_revocation(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Room for two token records: bob's push erin's out, so revoking erin's token by value
    # finds no record; her answer must have gone with the records it hands out.
    client = await make_gateway(emulator, token_cache_size=2)
    jwt = make_jwt("erin")
    body = await repeated(client, jwt)
    await fetch(client, make_jwt("bob"))
    result = await client.server.app[appkeys.REVOKER].revoke_token(token_of(body, "R"))
    assert result.revoked_locally == 0
    assert token_of(await fetch(client, jwt), "R") != token_of(body, "R")


async def test_a_long_authorization_header_is_not_remembered(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("henry", padding="x" * REPEAT_MAX_HEADER)
    for _ in range(3):
        await fetch(client, jwt)
    assert answers_of(client).repeats == 0
    assert answers_of(client).hits == 2  # still answered from the finished answers


async def test_devices_that_left_are_forgotten_once_expired_not_when_the_caches_fill(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    # bench/soak.py: with new subjects arriving and JWTs renewed, every layer kept what no
    # device would ask for again until it was full, and the RSS grew all through the run.
    clock, client = await clocked(make_emulator, make_gateway)
    app = client.server.app
    leaving = [make_jwt(f"gone-{i}", now=clock.time(), lifetime=600) for i in range(4)]
    for jwt in leaving:
        await fetch(client, jwt)
        await fetch(client, jwt)  # remembered as a repeat too
    answers, tokens = answers_of(client), app[appkeys.TOKENS]
    assert (len(answers), answers.repeats, app[appkeys.VERIFIER].cached) == (4, 4, 4)
    records = tokens.store._records  # type: ignore[attr-defined]
    assert len(records) == 8  # an R and a W token each

    clock.advance(2 * 3600)  # their JWTs, answers and tokens (1 h) have all expired
    for i in range(2):
        await fetch(client, make_jwt(f"new-{i}", now=clock.time()))
    assert len(answers) == 2
    assert answers.repeats == 0
    assert app[appkeys.VERIFIER].cached == 2
    assert len(records) == 4
