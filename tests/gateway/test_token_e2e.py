"""End to end over real sockets: app JWT in, emulator ApplyToken, MQTT credentials out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.cloud import quota
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually

ALICE_READ = ["alerts/#", "broadcast/#", "devices/alice/#", "fleet/t1/+/status"]


def apply_calls(emulator: EmulatorHandle) -> int:
    """How many ApplyToken calls the emulator answered successfully."""
    return int(emulator.state.stats()["success"].get("ApplyToken", 0))


async def test_alice_gets_read_and_write_tokens(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    resp = await client.post("/v1/token", headers=bearer(jwt))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["instanceId"] == emulator.instance_id
    assert body["username"] == f"Token|{emulator.access_key_id}|{emulator.instance_id}"
    tokens = {t["type"]: t for t in body["tokens"]}
    assert set(tokens) == {"R", "W"}
    assert tokens["R"]["resources"] == ALICE_READ
    assert tokens["W"]["resources"] == ["devices/alice/#"]
    assert body["password"] == f"R|{tokens['R']['token']}|W|{tokens['W']['token']}"
    # What the upstream recorded is exactly what the device was told.
    for kind, actions in (("R", "R"), ("W", "W")):
        info = emulator.state.token_info(tokens[kind]["token"])
        assert info is not None
        assert info.actions == actions
        assert list(info.resources) == tokens[kind]["resources"]
        assert info.expire_ms == tokens[kind]["expireTime"]
    assert body["expireTime"] == min(t["expireTime"] for t in body["tokens"])
    assert body["refreshAt"] <= body["expireTime"] - 300_000
    assert apply_calls(emulator) == 2


async def test_bob_without_groups(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    resp = await client.post("/v1/token", headers=bearer(make_jwt("bob")))
    assert resp.status == 200
    tokens = {t["type"]: t["resources"] for t in (await resp.json())["tokens"]}
    assert tokens == {"R": ["broadcast/#", "devices/bob/#"], "W": ["devices/bob/#"]}


async def test_second_request_is_served_from_cache(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    first = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    again = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    assert again["password"] == first["password"]
    assert apply_calls(emulator) == 2


async def test_equal_read_and_write_sets_give_one_rw_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    policy = tmp_path / "rw.yaml"
    policy.write_text(
        "version: 1\neveryone:\n  - topics: ['devices/{sub}/#', 'chat/+']\n    actions: [R, W]\n"
    )
    client = await make_gateway(emulator, policy_file=policy)
    body = await (await client.post("/v1/token", headers=bearer(make_jwt("carol")))).json()
    assert [t["type"] for t in body["tokens"]] == ["RW"]
    token = body["tokens"][0]
    assert token["resources"] == ["chat/+", "devices/carol/#"]
    assert body["password"] == f"RW|{token['token']}"
    info = emulator.state.token_info(token["token"])
    assert info is not None
    assert info.actions == "R,W"


async def test_requested_topics_narrow_the_token(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    resp = await client.post(
        "/v1/token",
        headers=bearer(jwt),
        json={"topics": ["devices/alice/temp", "alerts/fire"], "actions": ["R"]},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [(t["type"], t["resources"]) for t in body["tokens"]] == [
        ("R", ["alerts/fire", "devices/alice/temp"])
    ]


async def test_topic_outside_grants_is_403_naming_it(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    resp = await client.post(
        "/v1/token",
        headers=bearer(make_jwt("bob")),
        json={"topics": ["devices/alice/#"]},
    )
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == "policy_denied"
    assert "devices/alice/#" in problem["detail"]
    assert apply_calls(emulator) == 0


async def test_concurrent_first_requests_cause_one_apply_per_type(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")

    async def fetch() -> dict[str, Any]:
        resp = await client.post("/v1/token", headers=bearer(jwt))
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    bodies = await asyncio.gather(*(fetch() for _ in range(200)))
    assert len({b["password"] for b in bodies}) == 1
    assert apply_calls(emulator) == 2


async def test_ttl_is_clamped_by_policy_and_refreshed_near_expiry(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(emulator, clock=clock)
    jwt = make_jwt("bob", now=clock.time())
    now_ms = int(clock.time() * 1000)

    # The example policy allows 3600 s; asking for a day gets 3600 s.
    resp = await client.post("/v1/token", headers=bearer(jwt), json={"ttlSeconds": 86400})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # Quota pacing may move the manual clock by a few milliseconds.
    assert 0 <= body["expireTime"] - (now_ms + 3600_000) < 1000
    assert body["refreshAt"] == body["expireTime"] - 600_000

    short = await (
        await client.post("/v1/token", headers=bearer(jwt), json={"ttlSeconds": 600})
    ).json()
    assert 0 <= short["expireTime"] - (now_ms + 600_000) < 1000
    assert short["refreshAt"] == short["expireTime"] - 300_000
    assert apply_calls(emulator) == 4

    # Over a minute before refreshAt the cached token is handed out, nothing renewed.
    clock.advance((body["refreshAt"] - clock.time() * 1000) / 1000 - 61)
    again = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    assert again["password"] == body["password"]
    # Decided, not waited for: a renewal starts only past a token's renewal point.
    held = await client.server.app[appkeys.TOKENS].subject_tokens("zoe")
    assert all(r.renew_at_ms > clock.time() * 1000 for r in held)
    assert apply_calls(emulator) == 4

    # Just before refreshAt the device still gets the current token, while a background
    # renewal (stampede protection) mints the next one for each type ...
    clock.advance((body["refreshAt"] - clock.time() * 1000) / 1000 - 0.0005)
    again = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    assert again["password"] == body["password"]
    await eventually(lambda: apply_calls(emulator) == 6, what="two background renewals")
    # ... which is served once refreshAt has passed, with no further upstream call.
    clock.advance(2)
    renewed = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    assert renewed["password"] != body["password"]
    assert renewed["refreshAt"] > body["refreshAt"]
    assert apply_calls(emulator) == 6


async def test_a_fleet_in_the_renewal_window_causes_one_renewal_per_token(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(emulator, clock=clock)
    jwt = make_jwt("zoe", now=clock.time())
    body = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    clock.advance((body["refreshAt"] - clock.time() * 1000) / 1000 - 0.5)

    async def fetch() -> str:
        resp = await client.post("/v1/token", headers=bearer(jwt))
        assert resp.status == 200
        return str((await resp.json())["password"])

    passwords = await asyncio.gather(*(fetch() for _ in range(100)))
    # Both tokens were due; the first request started their renewals in the background.
    await eventually(lambda: apply_calls(emulator) == 4, what="two background renewals")
    renewed = await fetch()
    assert renewed != body["password"]
    # A request that came after a renewal landed got the renewed token, none another one.
    assert set(passwords) <= {body["password"], renewed}
    assert apply_calls(emulator) == 4


async def test_two_gateways_sharing_redis_serve_each_others_tokens(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    first = await make_gateway(emulator, redis_url=redis_url)
    second = await make_gateway(emulator, redis_url=redis_url)
    jwt = make_jwt("alice", groups=["ops"], tenant="t1")
    a = await (await first.post("/v1/token", headers=bearer(jwt))).json()
    b = await (await second.post("/v1/token", headers=bearer(jwt))).json()
    assert a["password"] == b["password"]
    assert apply_calls(emulator) == 2


async def test_concurrent_requests_across_gateways_mint_once(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    gateways = [await make_gateway(emulator, redis_url=redis_url) for _ in range(3)]
    jwt = make_jwt("dave")

    async def fetch(i: int) -> str:
        resp = await gateways[i % 3].post("/v1/token", headers=bearer(jwt))
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["password"])

    passwords = await asyncio.gather(*(fetch(i) for i in range(60)))
    assert len(set(passwords)) == 1
    assert apply_calls(emulator) == 2


async def test_hundreds_of_concurrent_redis_lookups_do_not_exhaust_the_pool(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, redis_url: str
) -> None:
    emulator = await make_emulator(qps={"ApplyToken": 5000.0})
    quota = {"ApplyToken": 5000.0}
    warm = await make_gateway(emulator, redis_url=redis_url, quota=quota, account_quota=5000.0)
    jwts = [make_jwt(f"pool-{n}") for n in range(150)]
    for start in range(0, len(jwts), 30):
        batch = jwts[start : start + 30]
        answers = await asyncio.gather(*(warm.post("/v1/token", headers=bearer(j)) for j in batch))
        assert {r.status for r in answers} == {200}
    # A fresh gateway (empty L1): every request reads its R and W tokens from Redis at once,
    # 300 commands in flight, past redis-py's default pool cap of 100.
    cold = await make_gateway(emulator, redis_url=redis_url, quota=quota, account_quota=5000.0)
    answers = await asyncio.gather(*(cold.post("/v1/token", headers=bearer(j)) for j in jwts))
    assert [r.status for r in answers] == [200] * len(jwts)
    assert apply_calls(emulator) == 300


async def test_the_governor_learns_which_subject_a_mint_is_for(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # The fair rotation of upstream slots is keyed by the subject the handler names.
    client = await make_gateway(emulator)
    governor = client.server.app[appkeys.CLOUD].governor
    seen: list[str | None] = []
    acquire = governor.acquire

    async def spy(action: str, deadline: float) -> Any:
        seen.append(quota._ASKING.get())
        return await acquire(action, deadline)

    governor.acquire = spy  # type: ignore[method-assign]
    resp = await client.post("/v1/token", headers=bearer(make_jwt("zoe")))
    assert resp.status == 200
    assert seen == ["zoe", "zoe"]
