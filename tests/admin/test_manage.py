"""Admin management routes against the emulator: device credentials, Group IDs, SendMessage."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver.emulator.state import Fault, SentMessage
from tests.admin.conftest import admin_headers
from tests.admin.test_openapi import call_and_check
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

POLICY = Path(__file__).resolve().parent.parent / "fixtures" / "credential-policy.yaml"
CID = "GID_fleet@@@s1"
CRED = f"/v1/admin/device-credentials/{CID}"


async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator, policy_file=POLICY)


def secret_of(emulator: EmulatorHandle, client_id: str = CID) -> str:
    return emulator.state.credentials[(emulator.instance_id, client_id)].access_key_secret


async def test_device_credential_get_refresh_unregister(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    status, body = await call_and_check(
        client, "GET", CRED, "/v1/admin/device-credentials/{clientId}"
    )
    assert (status, body["code"]) == (404, "not_found")
    status, _ = await call_and_check(
        client, "POST", CRED + "/refresh", "/v1/admin/device-credentials/{clientId}/refresh"
    )
    assert status == 404
    emulator.state.register_credential(emulator.instance_id, CID)
    old = secret_of(emulator)
    status, got = await call_and_check(
        client, "GET", CRED, "/v1/admin/device-credentials/{clientId}"
    )
    assert status == 200
    assert got["clientId"] == CID
    assert old not in json.dumps(got)
    status, rotated = await call_and_check(
        client, "POST", CRED + "/refresh", "/v1/admin/device-credentials/{clientId}/refresh"
    )
    assert status == 200
    assert secret_of(emulator) != old
    assert rotated["deviceAccessKeyId"] == got["deviceAccessKeyId"]
    assert rotated["secretFingerprint"] != got["secretFingerprint"]
    status, gone = await call_and_check(
        client, "DELETE", CRED, "/v1/admin/device-credentials/{clientId}"
    )
    assert (status, gone) == (200, {"clientId": CID, "unregistered": True})
    assert emulator.state.credentials == {}
    status, _ = await call_and_check(
        client, "DELETE", CRED, "/v1/admin/device-credentials/{clientId}"
    )
    assert status == 200, "unregistering twice is fine"


async def test_device_credential_routes_check_the_client_id(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    for method, path in (
        ("GET", "/v1/admin/device-credentials/nope"),
        ("DELETE", "/v1/admin/device-credentials/nope"),
        ("POST", "/v1/admin/device-credentials/nope/refresh"),
    ):
        resp = await client.request(method, path, headers=admin_headers())
        assert resp.status == 400, path
        assert (await resp.json())["field"] == "clientId"
    resp = await client.post(CRED + "/refresh", json={"x": 1}, headers=admin_headers())
    assert resp.status == 400
    assert emulator.state.stats()["calls"] == {}


async def test_upstream_failures_are_problems(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    emulator.state.faults["*"] = Fault(error_code="InstancePermissionCheckFailed")
    for method, path, kwargs in (
        ("GET", CRED, {}),
        ("GET", "/v1/admin/groups", {}),
        ("POST", "/v1/admin/groups", {"json": {"groupId": "GID_new"}}),
        ("POST", "/v1/admin/messages", {"json": {"topic": "a/b", "payload": "x"}}),
    ):
        resp = await client.request(method, path, headers=admin_headers(), **kwargs)
        assert resp.status == 502, (path, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["upstream_code"] == "InstancePermissionCheckFailed"


async def test_groups(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await gateway(emulator, make_gateway)
    status, created = await call_and_check(
        client, "POST", "/v1/admin/groups", "/v1/admin/groups", json={"groupId": "GID_fleet"}
    )
    assert (status, created) == (201, {"groupId": "GID_fleet", "created": True})
    status, dup = await call_and_check(
        client, "POST", "/v1/admin/groups", "/v1/admin/groups", json={"groupId": "GID_fleet"}
    )
    assert (status, dup["code"], dup["upstream_code"]) == (
        409,
        "group_exists",
        "GroupIdAlreadyExsited",
    )
    for bad in (
        {"groupId": "fleet"},
        {"groupId": "GID_ab"},
        {"groupId": "GID_" + "x" * 61},
        {},
        {"groupId": "GID_ok1", "x": 1},
    ):
        resp = await client.post("/v1/admin/groups", json=bad, headers=admin_headers())
        assert resp.status == 400, bad
    await call_and_check(
        client, "POST", "/v1/admin/groups", "/v1/admin/groups", json={"groupId": "GID-two"}
    )
    status, listing = await call_and_check(client, "GET", "/v1/admin/groups", "/v1/admin/groups")
    assert status == 200
    assert sorted(g["groupId"] for g in listing["groups"]) == ["GID-two", "GID_fleet"]
    status, deleted = await call_and_check(
        client, "DELETE", "/v1/admin/groups/GID_fleet", "/v1/admin/groups/{groupId}"
    )
    assert (status, deleted) == (200, {"groupId": "GID_fleet", "deleted": True})
    resp = await client.delete("/v1/admin/groups/nope", headers=admin_headers())
    assert resp.status == 400
    assert list(emulator.state.groups) == [(emulator.instance_id, "GID-two")]
    calls = emulator.state.stats()["calls"]
    assert (calls["CreateGroupId"], calls["DeleteGroupId"], calls["ListGroupId"]) == (3, 1, 1)


async def test_send_message_text_and_base64(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    seen: list[SentMessage] = []
    emulator.state.message_listeners.append(seen.append)
    binary = base64.b64encode(b"\x00\xffcome back").decode()
    for body in (
        {"topic": "devices/d1/cmd", "payload": "come back for new credentials"},
        {"topic": "devices/d1/cmd", "payload": binary, "encoding": "base64"},
    ):
        status, sent = await call_and_check(
            client, "POST", "/v1/admin/messages", "/v1/admin/messages", json=body
        )
        assert status == 202
        assert sent["msgId"] == seen[-1].msg_id
    assert [m.payload for m in seen] == [b"come back for new credentials", binary.encode()]
    assert base64.b64decode(seen[1].payload) == b"\x00\xffcome back"
    for bad in (
        {"topic": "devices/+/cmd", "payload": "x"},
        {"topic": "devices/#", "payload": "x"},
        {"topic": "", "payload": "x"},
        {"topic": "a", "payload": ""},
        {"topic": "a", "payload": "not base64!", "encoding": "base64"},
        {"topic": "a", "payload": "eA", "encoding": "base64"},
        {"topic": "a", "payload": "x", "encoding": "hex"},
        {"topic": "a"},
    ):
        status, problem = await call_and_check(
            client, "POST", "/v1/admin/messages", "/v1/admin/messages", json=bad
        )
        assert (status, problem["code"]) == (400, "bad_request"), bad
    assert len(seen) == 2


async def test_revoke_can_unregister_or_rotate_device_credentials(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    ok = await client.post(
        "/v1/device-credential",
        json={"clientId": CID},
        headers=bearer(make_jwt("s1", groups=["sensors"])),
    )
    assert ok.status == 200
    emulator.state.register_credential(emulator.instance_id, "GID_fleet@@@s2")
    old = secret_of(emulator)
    status, answer = await call_and_check(
        client,
        "POST",
        "/v1/admin/revoke",
        "/v1/admin/revoke",
        json={"clientId": CID, "deviceCredentials": "refresh"},
    )
    assert status == 202
    assert answer["deviceCredentials"] == {
        "action": "refresh",
        "clientIds": [CID],
        "absent": [],
        "failed": [],
    }
    assert secret_of(emulator) != old
    status, answer = await call_and_check(
        client,
        "POST",
        "/v1/admin/revoke",
        "/v1/admin/revoke",
        json={"subject": "s1", "deviceCredentials": "unregister"},
    )
    assert status == 202
    assert answer["deviceCredentials"]["clientIds"] == [CID]
    assert list(emulator.state.credentials) == [(emulator.instance_id, "GID_fleet@@@s2")]
    status, answer = await call_and_check(
        client,
        "POST",
        "/v1/admin/revoke",
        "/v1/admin/revoke",
        json={"subject": "s1", "deviceCredentials": "refresh"},
    )
    assert answer["deviceCredentials"]["absent"] == [CID]
    status, plain = await call_and_check(
        client, "POST", "/v1/admin/revoke", "/v1/admin/revoke", json={"subject": "s2"}
    )
    assert status == 202
    assert "deviceCredentials" not in plain
    assert (emulator.instance_id, "GID_fleet@@@s2") in emulator.state.credentials
    for bad in (
        {"subject": "s2", "deviceCredentials": "delete"},
        {"token": "t", "deviceCredentials": "unregister"},
    ):
        resp = await client.post("/v1/admin/revoke", json=bad, headers=admin_headers())
        assert resp.status == 400, bad
        assert (await resp.json())["field"] == "deviceCredentials"


async def test_a_failed_credential_call_does_not_hide_the_revocation(
    emulator: EmulatorHandle, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway(emulator, make_gateway)
    emulator.state.faults["UnRegisterDeviceCredential"] = Fault(
        error_code="InstancePermissionCheckFailed"
    )
    with caplog.at_level(logging.INFO, logger="authserver.audit"):
        resp = await client.post(
            "/v1/admin/revoke",
            json={"clientId": CID, "deviceCredentials": "unregister"},
            headers=admin_headers(),
        )
    assert resp.status == 202
    swept = (await resp.json())["deviceCredentials"]
    assert swept["failed"] == [{"clientId": CID, "code": "InstancePermissionCheckFailed"}]
    [line] = [r.audit for r in caplog.records if r.name == "authserver.audit"]
    assert line["deviceCredentials"]["failed"] == swept["failed"]
