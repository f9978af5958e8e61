"""POST /v1/admin/revoke and GET /v1/admin/revocations through the HTTP layer."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver.emulator.state import Fault
from authserver.fingerprint import fingerprint
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import IOT_FLEET_POLICY, MakeGateway, bearer, make_jwt
from tests.helpers import eventually

BOB_1 = {"clientId": "GID_fleet@@@bob-1"}
BOB_2 = {"clientId": "GID_fleet@@@bob-2"}


async def issue(
    client: TestClient[Any, Any], subject: str, **body: Any
) -> tuple[str, dict[str, Any]]:
    """An app JWT for `subject` and the credentials the gateway gave it."""
    jwt = make_jwt(subject)
    resp = await client.post("/v1/token", headers=bearer(jwt), json=body)
    assert resp.status == 200, await resp.text()
    return jwt, await resp.json()


async def revoke(client: TestClient[Any, Any], body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/admin/revoke, expecting 202."""
    resp = await client.post("/v1/admin/revoke", json=body, headers=admin_headers())
    assert resp.status == 202, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def revoked_upstream(emulator: EmulatorHandle, tokens: list[str]) -> None:
    """Wait until the emulator reports every token revoked."""
    await eventually(lambda: all(emulator.state.is_revoked(t) for t in tokens))


async def test_revoke_one_token(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await make_gateway(emulator)
    jwt, creds = await issue(client, "bob")
    token = creds["tokens"][0]["token"]
    other = creds["tokens"][1]["token"]

    answer = await revoke(client, {"token": token})
    assert answer["revokedLocally"] == 1
    assert answer["queued"] == 1
    assert answer["blockedIssuedBefore"] is None
    assert answer["fingerprints"] == [fingerprint(token)]

    query = await client.post("/v1/admin/query", json={"token": token}, headers=admin_headers())
    assert (await query.json())["reason"] == "revoked"
    await revoked_upstream(emulator, [token])
    assert not emulator.state.is_revoked(other)

    # No block: the same app JWT gets a fresh token in place of the revoked one.
    again = await (await client.post("/v1/token", headers=bearer(jwt))).json()
    assert token not in again["password"]
    assert other in again["password"]


async def test_revoke_subject_blocks_older_jwts(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    client = await make_gateway(emulator, redis_url=redis_url)
    old_jwt, creds = await issue(client, "alice")
    tokens = [t["token"] for t in creds["tokens"]]

    answer = await revoke(client, {"subject": "alice"})
    assert answer["revokedLocally"] == 2
    assert answer["queued"] == 2
    assert isinstance(answer["blockedIssuedBefore"], int)
    assert sorted(answer["fingerprints"]) == sorted(fingerprint(t) for t in tokens)
    listed = await client.get("/v1/admin/subjects/alice/tokens", headers=admin_headers())
    assert (await listed.json())["tokens"] == []

    refused = await client.post("/v1/token", headers=bearer(old_jwt))
    assert refused.status == 401
    assert (await refused.json())["code"] == "token_revoked"
    newer = make_jwt("alice", now=time.time() + 2)
    fresh = await client.post("/v1/token", headers=bearer(newer))
    assert fresh.status == 200, await fresh.text()
    assert not set(tokens) & {t["token"] for t in (await fresh.json())["tokens"]}
    await revoked_upstream(emulator, tokens)


async def test_revoke_subject_without_block(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator)
    jwt, _ = await issue(client, "bob")
    answer = await revoke(client, {"subject": "bob", "blockIssuedBefore": False})
    assert answer["blockedIssuedBefore"] is None
    assert answer["revokedLocally"] == 2
    assert (await client.post("/v1/token", headers=bearer(jwt))).status == 200


async def test_revoke_client_id(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    # One person, two devices: each device's JWT carries its own signed device_id.
    client = await make_gateway(emulator, redis_url=redis_url, policy_file=IOT_FLEET_POLICY)
    phone = make_jwt("bob", tenant="acme", device_id="bob-1")
    tablet = make_jwt("bob", tenant="acme", device_id="bob-2")
    one = await (await client.post("/v1/token", headers=bearer(phone), json=BOB_1)).json()
    two = await (await client.post("/v1/token", headers=bearer(tablet), json=BOB_2)).json()

    answer = await revoke(client, BOB_1)
    assert answer["revokedLocally"] == len(one["tokens"])
    assert isinstance(answer["blockedIssuedBefore"], int)
    await revoked_upstream(emulator, [t["token"] for t in one["tokens"]])
    assert not any(emulator.state.is_revoked(t["token"]) for t in two["tokens"])

    blocked = await client.post("/v1/token", headers=bearer(phone), json=BOB_1)
    assert blocked.status == 401
    assert (await blocked.json())["code"] == "token_revoked"
    # The phone's JWT may only ever be GID_fleet@@@bob-1: naming the tablet's clientId
    # does not step round the block.
    dodged = await client.post("/v1/token", headers=bearer(phone), json=BOB_2)
    assert dodged.status == 401
    still = await client.post("/v1/token", headers=bearer(tablet), json=BOB_2)
    assert still.status == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"blockIssuedBefore": True},
        {"token": "t", "subject": "s"},
        {"subject": "s", "clientId": "GID_fleet@@@a"},
        {"token": "t", "blockIssuedBefore": True},
        {"subject": "s", "blockIssuedBefore": "yes"},
        {"subject": "s", "blockIssuedBefore": None},
        {"subject": ""},
        {"subject": None},
        {"token": 42},
        {"clientId": "not-a-client"},
        {"subject": "s", "reason": "because"},
    ],
)
async def test_revoke_body_is_strict(
    emulator: EmulatorHandle, make_gateway: MakeGateway, body: dict[str, Any]
) -> None:
    client = await make_gateway(emulator)
    resp = await client.post("/v1/admin/revoke", json=body, headers=admin_headers())
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    status = await (await client.get("/v1/admin/revocations", headers=admin_headers())).json()
    assert status["depth"] == 0


async def test_revocations_status(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    emulator.state.faults["RevokeToken"] = Fault(error_code="InternalError")
    client = await make_gateway(emulator)
    _, creds = await issue(client, "bob")
    tokens = [t["token"] for t in creds["tokens"]]
    empty = await (await client.get("/v1/admin/revocations", headers=admin_headers())).json()
    assert empty == {
        "mode": "memory",
        "depth": 0,
        "delayed": 0,
        "oldestPendingAgeSeconds": None,
        "recentFailures": [],
    }
    await revoke(client, {"subject": "bob"})

    status: dict[str, Any] = {}

    async def failed_once() -> bool:
        nonlocal status
        resp = await client.get("/v1/admin/revocations", headers=admin_headers())
        assert resp.status == 200
        status = await resp.json()
        return bool(status["recentFailures"])

    status: dict[str, Any] = {}
    await eventually(failed_once)
    assert status["depth"] == 2
    assert status["oldestPendingAgeSeconds"] >= 0
    failure = status["recentFailures"][0]
    assert failure["fingerprint"] in {fingerprint(t) for t in tokens}
    assert not any(t in json.dumps(status) for t in tokens)

    emulator.state.faults.clear()
    await revoked_upstream(emulator, tokens)


async def test_unreachable_store_refuses_revocation(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, redis_url="redis://127.0.0.1:1/0")
    resp = await client.post("/v1/admin/revoke", json={"token": "abc"}, headers=admin_headers())
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "store_unavailable"


async def test_one_audit_line_without_token_values(
    emulator: EmulatorHandle, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway(emulator)
    _, creds = await issue(client, "bob")
    token = creds["tokens"][0]["token"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        await revoke(client, {"token": token})
        await client.post("/v1/admin/query", json={"token": token}, headers=admin_headers())
        bad = await client.post("/v1/admin/revoke", json={}, headers=admin_headers())
        assert bad.status == 400
        denied = await client.post(
            "/v1/admin/revoke", json={"subject": "bob"}, headers=bearer(make_jwt("bob"))
        )
        assert denied.status == 403
        # The worker revokes upstream while the log is captured.
        await eventually(lambda: emulator.state.is_revoked(token))
    assert token not in caplog.text
    lines = [r.audit for r in caplog.records if r.name == "authserver.audit"]
    assert [(line["action"], line["result"]) for line in lines] == [
        ("revoke", 202),
        ("query", 200),
        ("revoke", 400),
        ("revoke", 403),
    ]
    revoked, queried, malformed, refused = lines
    assert revoked["actor"] == "admin@example.test"
    assert revoked["fingerprints"] == [fingerprint(token)]
    assert queried["fingerprints"] == revoked["fingerprints"]
    assert queried["reason"] == "revoked"
    assert malformed["error"] == "bad_request"
    assert refused["actor"] == "bob"
    assert refused["error"] == "admin_scope_required"
