"""Canonical requests: answers are kept per parsed request, never per spelling of its body.

Two bodies share an answer only when they ask the same thing (same clientId, the same set
of topics and of actions, the same lifetime once the policy settled it); anything else is
its own entry with its own answer.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from authserver import appkeys
from authserver.tokens.answers import REPEAT_MAX_BODY, REPEAT_SPELLINGS, AnswerCache
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BOUND_POLICY, MakeGateway, bearer, make_jwt
from tests.tokens.test_answers import assert_consistent

CLIENT = "GID_fleet@@@alice-1"


def answers_of(client: TestClient[Any, Any]) -> AnswerCache:
    return client.server.app[appkeys.ISSUER].answers


def apply_calls(emulator: EmulatorHandle) -> int:
    return int(emulator.state.stats()["calls"].get("ApplyToken", 0))


async def send(client: TestClient[Any, Any], jwt: str, raw: bytes) -> tuple[int, Any]:
    """POST raw bytes as the body; the status and the parsed answer."""
    headers = {**bearer(jwt), "Content-Type": "application/json"}
    async with client.post("/v1/token", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_spellings_of_one_request_share_one_answer_and_one_mint(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, policy_file=BOUND_POLICY)
    jwt = make_jwt("alice")
    spellings = [
        b'{"clientId": "%s", "topics": ["devices/alice/a", "broadcast/x"], "ttlSeconds": 900}',
        b'{ "ttlSeconds" : 900 ,\n "topics":["broadcast/x","devices/alice/a"],"clientId":"%s"}',
        b'{"topics": ["devices/alice/a", "broadcast/x", "devices/alice/a"], '
        b'"clientId": "%s", "ttlSeconds": 900}',
    ]
    answers = [await send(client, jwt, s % CLIENT.encode()) for s in spellings]
    assert [status for status, _ in answers] == [200, 200, 200]
    first = answers[0][1]
    assert all(body == first for _, body in answers)
    tokens = {t["type"]: t["resources"] for t in first["tokens"]}
    assert tokens == {"R": ["broadcast/x", "devices/alice/a"], "W": ["devices/alice/a"]}
    assert len(answers_of(client)) == 1
    assert apply_calls(emulator) == 2  # one R, one W: the later spellings minted nothing

    # Actions in another order (or named twice) are the same demand.
    for actions in (["R", "W"], ["W", "R"]):
        status, body = await send(client, jwt, json.dumps({"actions": actions}).encode())
        assert status == 200
    assert len(answers_of(client)) == 2
    # A lifetime past the policy's maximum (3600 s) is that maximum: one entry for all.
    for ttl in (None, 3600, 7200, 86_400):
        status, body = await send(
            client, jwt, json.dumps({"ttlSeconds": ttl} if ttl else {}).encode()
        )
        assert status == 200
        assert body["expireTime"] - body["tokens"][0]["expireTime"] == 0
    assert len(answers_of(client)) == 3


async def test_different_requests_keep_their_own_answers(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, policy_file=BOUND_POLICY)
    jwt = make_jwt("alice")
    _, both = await send(client, jwt, b'{"topics": ["devices/alice/a", "devices/alice/b"]}')
    _, one = await send(client, jwt, b'{"topics": ["devices/alice/a"]}')
    # Read and write sets are equal here: one RW token each.
    assert [t["resources"] for t in both["tokens"]] == [["devices/alice/a", "devices/alice/b"]]
    assert [t["resources"] for t in one["tokens"]] == [["devices/alice/a"]]
    _, short = await send(client, jwt, b'{"topics": ["devices/alice/a"], "ttlSeconds": 600}')
    assert short["expireTime"] < one["expireTime"]
    _, other = await send(
        client, jwt, b'{"topics": ["devices/alice/a"], "clientId": "%s"}' % CLIENT.encode()
    )
    assert other["password"] != one["password"]  # a clientId is part of what a token is for

    # No actions means "whatever I may do with these topics"; ["R", "W"] demands both, so a
    # read-only topic is granted one way and refused the other: never the same entry.
    status, body = await send(client, jwt, b'{"topics": ["broadcast/news"]}')
    assert status == 200
    assert [t["type"] for t in body["tokens"]] == ["R"]
    status, body = await send(client, jwt, b'{"topics": ["broadcast/news"], "actions": ["R", "W"]}')
    assert status == 403
    assert len(answers_of(client)) == 5


async def test_a_repeated_body_is_answered_from_the_repeats(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, policy_file=BOUND_POLICY)
    jwt = make_jwt("bob")
    raw = b'{"clientId": "GID_fleet@@@bob-1"}'
    first = await send(client, jwt, raw)
    assert answers_of(client).repeats == 0  # a JWT seen once is not remembered yet
    assert await send(client, jwt, raw) == first
    assert answers_of(client).repeats == 1
    hits = answers_of(client).hits
    assert await send(client, jwt, raw) == first
    assert answers_of(client).hits == hits + 1
    # Another spelling is another repeat key, answered from the same answer.
    assert await send(client, jwt, b' {"clientId":"GID_fleet@@@bob-1"}') == first
    assert await send(client, jwt, b' {"clientId":"GID_fleet@@@bob-1"}') == first
    assert answers_of(client).repeats == 2
    assert len(answers_of(client)) == 1
    # A bodyless request is its own repeat, with its own answer (no clientId).
    await send(client, jwt, b"")
    bodyless = await send(client, jwt, b"")
    assert bodyless[1]["password"] != first[1]["password"]
    assert answers_of(client).repeats == 3


async def test_one_jwt_spelling_a_body_anew_cannot_push_out_other_devices_repeats(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    # Found in review: one JWT sending `{` + N spaces + `}` 1,500 times held every repeat slot
    # (answer_cache_size=1000) and pushed out every other device's repeats.
    client = await make_gateway(emulator, policy_file=BOUND_POLICY, answer_cache_size=20)
    victims = [make_jwt(f"victim-{n}") for n in range(5)]
    for jwt in victims:
        for _ in range(2):  # seen twice: remembered
            assert (await send(client, jwt, b""))[0] == 200
    assert answers_of(client).repeats == 5
    attacker = make_jwt("mallory")
    for n in range(60):
        assert (await send(client, attacker, b"{" + b" " * n + b"}"))[0] == 200
    assert answers_of(client).repeats == 5 + REPEAT_SPELLINGS
    for jwt in victims:  # still one lookup each
        hits = answers_of(client).hits
        assert (await send(client, jwt, b""))[0] == 200
        assert answers_of(client).hits == hits + 1
        assert answers_of(client).repeats == 5 + REPEAT_SPELLINGS


async def test_a_long_body_is_not_remembered_as_a_repeat(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, policy_file=BOUND_POLICY)
    jwt = make_jwt("carol")
    topics = [f"devices/carol/{n:04d}/{'x' * 20}" for n in range(REPEAT_MAX_BODY // 20)]
    raw = json.dumps({"topics": topics}).encode()
    assert len(raw) > REPEAT_MAX_BODY
    for _ in range(3):
        status, _body = await send(client, jwt, raw)
        assert status == 200
    assert answers_of(client).repeats == 0
    assert answers_of(client).hits == 2  # still answered from the finished answers


async def test_a_flood_of_large_distinct_requests_stays_within_the_byte_bound(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    bound = 60_000
    client = await make_gateway(emulator, policy_file=BOUND_POLICY, answer_cache_bytes=bound)
    cache = answers_of(client)
    jwt = make_jwt("alice")
    small = b'{"clientId": "%s"}' % CLIENT.encode()
    for _ in range(2):  # remembered as a repeat too
        assert (await send(client, jwt, small))[0] == 200
    last: Any = None
    for n in range(25):
        topics = [f"devices/alice/r{n:03d}/t{k:03d}-{'x' * 30}" for k in range(60)]
        status, last = await send(client, jwt, json.dumps({"topics": topics}).encode())
        assert status == 200
        assert_consistent(cache)
        # The small answer sent between the large ones is kept or evicted whole.
        assert (await send(client, jwt, small))[0] == 200
        assert_consistent(cache)
    assert cache.bytes <= bound
    assert 2 <= len(cache) < 10  # each large answer is about 10 KB
    await client.server.app[appkeys.REVOKER].revoke_token(last["tokens"][0]["token"])
    assert_consistent(cache)
