"""A device with a valid JWT trying to be another device: over real sockets, policies/iot-fleet.

The fleet policy binds clientIds to the signed device_id claim (``GID_fleet@@@{device_id}``)
and names the device's topics by ``{client_id}``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import IOT_FLEET_POLICY, MakeGateway, bearer, make_jwt

A = "GID_fleet@@@dev-a"
B = "GID_fleet@@@dev-b"


def device_jwt(device_id: object, *, subject: str = "dev-a", **claims: Any) -> str:
    """A device's app JWT in tenant acme."""
    return make_jwt(subject, tenant="acme", device_id=device_id, **claims)


def apply_calls(emulator: EmulatorHandle) -> int:
    """How many ApplyToken calls the emulator has seen."""
    calls: int = emulator.state.stats()["calls"].get("ApplyToken", 0)
    return calls


async def ask(
    client: TestClient[Any, Any], jwt: str, client_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /v1/token, naming `client_id` when given: (status, JSON body)."""
    body = None if client_id is None else {"clientId": client_id}
    resp = await client.post("/v1/token", headers=bearer(jwt), json=body)
    return resp.status, await resp.json(content_type=None)


def resources(answer: dict[str, Any]) -> set[str]:
    return {r for token in answer["tokens"] for r in token["resources"]}


@pytest.fixture
async def fleet(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator, policy_file=IOT_FLEET_POLICY)


async def test_a_device_gets_its_own_topics_under_its_own_client_id(
    fleet: TestClient[Any, Any],
) -> None:
    status, answer = await ask(fleet, device_jwt("dev-a"), A)
    assert status == 200, answer
    assert resources(answer) == {
        f"t/acme/dev/{A}/cmd/#",
        f"t/acme/dev/{A}/state",
        f"t/acme/dev/{A}/telemetry",
    }


# What device A might send to become device B, and the answer it must get.
IMPERSONATIONS = [
    (B, 403, "client_id_not_allowed"),  # another device, spelled right
    ("GID_FLEET@@@dev-a", 403, "client_id_not_allowed"),  # case variants
    ("GID_fleet@@@DEV-A", 403, "client_id_not_allowed"),
    ("GID-fleet@@@dev-a", 403, "client_id_not_allowed"),  # GID- for GID_
    ("GID_fleet@@@dev-a.", 403, "client_id_not_allowed"),
    ("GID_other@@@dev-a", 403, "client_id_not_allowed"),
    ("GID_fleet@@@dev-\u0430", 400, "bad_request"),  # Cyrillic a
    ("GID_fleet@@@dev-\uff41", 400, "bad_request"),  # fullwidth a
    ("GID_fleet@@@dev-a ", 400, "bad_request"),
    (" GID_fleet@@@dev-a", 400, "bad_request"),
    ("GID_fleet@@@dev-a\n", 400, "bad_request"),
    ("GID_fleet@@@dev-a\x00", 400, "bad_request"),
    ("GID_fleet@@@dev-a/+", 400, "bad_request"),
    ("GID_fleet@@@#", 400, "bad_request"),
    ("GID_fleet@@@dev-a@@@dev-b", 400, "bad_request"),
]


@pytest.mark.parametrize(("client_id", "status", "code"), IMPERSONATIONS)
async def test_a_device_cannot_name_another_client_id(
    fleet: TestClient[Any, Any], emulator: EmulatorHandle, client_id: str, status: int, code: str
) -> None:
    got, problem = await ask(fleet, device_jwt("dev-a"), client_id)
    assert (got, problem["code"]) == (status, code), problem
    # The answer names nothing the prober did not send: not the clientId it may use.
    assert "dev-a" not in problem["detail"].replace(repr(client_id), "").replace("'dev-a'", "")
    assert apply_calls(emulator) == 0


# A device_id claim the identity provider signed, and what it lets the device use.
HOSTILE_CLAIMS = [
    (["dev-a", "dev-b"], (A, B)),  # a list is no value: neither
    ({"id": "dev-b"}, (B,)),
    (True, ("GID_fleet@@@True", "GID_fleet@@@1")),
    ("dev-b@@@x", (B, "GID_fleet@@@dev-b@@@x")),
    ("dev-b ", (B,)),
    ("dev-\u0430", (A,)),
    ("", ("GID_fleet@@@",)),
    ("+", ("GID_fleet@@@+",)),
]


@pytest.mark.parametrize(("device_id", "refused"), HOSTILE_CLAIMS)
async def test_a_hostile_claim_gives_no_client_id(
    fleet: TestClient[Any, Any], device_id: object, refused: tuple[str, ...]
) -> None:
    jwt = device_jwt(device_id)
    for client_id in refused:
        got, problem = await ask(fleet, jwt, client_id)
        assert got in (400, 403), problem
        if got == 403:
            assert problem["code"] == "client_id_not_allowed"


async def test_a_numeric_claim_is_written_as_a_number(fleet: TestClient[Any, Any]) -> None:
    status, answer = await ask(fleet, device_jwt(42), "GID_fleet@@@42")
    assert status == 200, answer
    assert "t/acme/dev/GID_fleet@@@42/state" in resources(answer)


async def test_no_client_id_grants_no_client_id_topics(fleet: TestClient[Any, Any]) -> None:
    status, answer = await ask(fleet, device_jwt("dev-a", model="x200"))
    assert status == 200, answer
    assert resources(answer) == {"fw/model-x200/+"}


async def test_a_policy_without_client_ids_allows_no_client_id(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)  # policies/example.yaml lists no clientIds
    status, problem = await ask(client, make_jwt("bob"), "GID_fleet@@@bob")
    assert (status, problem["code"]) == (403, "client_id_not_allowed")
    assert (await ask(client, make_jwt("bob")))[0] == 200


async def test_a_cached_answer_is_never_served_to_another_device(
    fleet: TestClient[Any, Any], emulator: EmulatorHandle
) -> None:
    # One subject (a shared product identity), two devices: only the signed device_id differs.
    mine = device_jwt("dev-a", subject="product-1")
    theirs = device_jwt("dev-b", subject="product-1")
    for _ in range(2):  # the second answer comes from the answer cache
        status, answer = await ask(fleet, mine, A)
        assert status == 200, answer
    calls = apply_calls(emulator)
    status, problem = await ask(fleet, theirs, A)
    assert (status, problem["code"]) == (403, "client_id_not_allowed")
    status, answer = await ask(fleet, theirs, B)
    assert status == 200, answer
    assert f"t/acme/dev/{B}/state" in resources(answer)
    assert apply_calls(emulator) == calls + 2


async def test_a_client_id_block_binds_whatever_the_jwt_asks_next(
    fleet: TestClient[Any, Any],
) -> None:
    old = device_jwt("dev-a", model="x200")
    other = device_jwt("dev-b", subject="dev-b")
    assert (await ask(fleet, old, A))[0] == 200
    for _ in range(2):  # warms the answer caches for bodyless requests, repeats included
        assert (await ask(fleet, old))[0] == 200
    assert (await ask(fleet, other, B))[0] == 200

    resp = await fleet.post("/v1/admin/revoke", json={"clientId": A}, headers=admin_headers())
    assert resp.status == 202, await resp.text()

    for client_id in (A, B, None, "GID-fleet@@@dev-a", "GID_fleet@@@DEV-A"):
        status, problem = await ask(fleet, old, client_id)
        assert (status, problem["code"]) == (401, "token_revoked"), (client_id, problem)
    status, problem = await ask(fleet, old)  # the cached bodyless answer, once more
    assert (status, problem["code"]) == (401, "token_revoked")
    # Another device is untouched; the same device signing in again gets in.
    assert (await ask(fleet, other, B))[0] == 200
    fresh = device_jwt("dev-a", now=time.time() + 2)  # iat after the block
    assert (await ask(fleet, fresh, A))[0] == 200


async def test_admin_explain_shows_the_allowed_client_ids(fleet: TestClient[Any, Any]) -> None:
    resp = await fleet.post(
        "/v1/admin/explain",
        json={"claims": {"sub": "dev-a", "tenant": "acme", "device_id": "dev-a"}, "clientId": B},
        headers=admin_headers(),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["clientIds"] == [A]
    assert body["clientIdAllowed"] is False
    assert body["read"] == []
