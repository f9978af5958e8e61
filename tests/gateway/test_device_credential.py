"""POST /v1/device-credential: a policy-granted device gets its device-credential MQTT login."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authserver.emulator.mqtt_auth import ConnectRefused, authenticate
from authserver.fingerprint import fingerprint
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt

POLICY = Path(__file__).resolve().parent.parent / "fixtures" / "credential-policy.yaml"
SENSOR = {"groups": ["sensors"]}


async def gateway(emulator: EmulatorHandle, make_gateway: MakeGateway) -> TestClient[Any, Any]:
    return await make_gateway(emulator, policy_file=POLICY)


async def ask(client: TestClient[Any, Any], subject: str, body: Any, **claims: Any) -> Any:
    return await client.post(
        "/v1/device-credential", json=body, headers=bearer(make_jwt(subject, **claims))
    )


def expected_password(emulator: EmulatorHandle, client_id: str) -> str:
    secret = emulator.state.credentials[(emulator.instance_id, client_id)].access_key_secret
    digest = hmac.new(secret.encode(), client_id.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def test_registers_then_reads(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await gateway(emulator, make_gateway)
    cid = "GID_fleet@@@s1"
    first = await ask(client, "s1", {"clientId": cid}, **SENSOR)
    assert first.status == 200, await first.text()
    assert first.headers["Cache-Control"] == "no-store"
    answer = await first.json()
    stored = emulator.state.credentials[(emulator.instance_id, cid)]
    assert answer == {
        "clientId": cid,
        "instanceId": emulator.instance_id,
        "username": f"DeviceCredential|{stored.access_key_id}|{emulator.instance_id}",
        "password": expected_password(emulator, cid),
        "deviceAccessKeyId": stored.access_key_id,
        "updateTime": stored.update_ms,
        "registered": True,
    }
    assert stored.access_key_secret not in await first.text()
    again = await (await ask(client, "s1", {"clientId": cid}, **SENSOR)).json()
    assert again == {**answer, "registered": False}
    stats = emulator.state.stats()["calls"]
    assert stats["RegisterDeviceCredential"] == 1
    assert stats["GetDeviceCredential"] == 2


async def test_a_rotation_changes_the_password(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    cid = "GID_lab@@@carol-bench"
    before = await (await ask(client, "carol", {"clientId": cid})).json()
    resp = await client.post(f"/v1/admin/device-credentials/{cid}/refresh", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    after = await (await ask(client, "carol", {"clientId": cid})).json()
    assert after["username"] == before["username"]
    assert after["password"] != before["password"]
    assert after["password"] == expected_password(emulator, cid)


@pytest.mark.parametrize(
    ("subject", "claims", "body", "status", "code"),
    [
        ("bob", {}, {"clientId": "GID_fleet@@@bob"}, 403, "device_credential_not_allowed"),
        ("s1", SENSOR, {"clientId": "GID_fleet@@@s2"}, 403, "client_id_not_allowed"),
        ("s1", {"groups": ["ops"]}, {"clientId": "GID_fleet@@@s1"}, 403,
         "device_credential_not_allowed"),
        ("s1", SENSOR, {}, 400, "bad_request"),
        ("s1", SENSOR, {"clientId": "not-a-client-id"}, 400, "bad_request"),
        ("s1", SENSOR, {"clientId": "GID_fleet@@@s1", "topics": ["x"]}, 400, "bad_request"),
        ("s1", SENSOR, ["GID_fleet@@@s1"], 400, "bad_request"),
    ],
)  # fmt: skip
async def test_refusals(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    subject: str,
    claims: dict[str, Any],
    body: Any,
    status: int,
    code: str,
) -> None:
    client = await gateway(emulator, make_gateway)
    resp = await ask(client, subject, body, **claims)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code
    assert emulator.state.credentials == {}
    assert "GetDeviceCredential" not in emulator.state.stats()["calls"]


async def test_needs_a_valid_jwt(emulator: EmulatorHandle, make_gateway: MakeGateway) -> None:
    client = await gateway(emulator, make_gateway)
    for headers in ({}, bearer("not.a.jwt"), bearer(make_jwt("s1", secret="wrong" * 8))):
        resp = await client.post(
            "/v1/device-credential", json={"clientId": "GID_fleet@@@s1"}, headers=headers
        )
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
    assert emulator.state.credentials == {}


async def test_a_revoked_client_id_is_refused(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    cid = "GID_fleet@@@s1"
    resp = await client.post("/v1/admin/revoke", json={"clientId": cid}, headers=admin_headers())
    assert resp.status == 202
    resp = await ask(client, "s1", {"clientId": cid}, iat=0, **SENSOR)
    assert resp.status == 401
    assert (await resp.json())["code"] == "token_revoked"


async def test_the_secret_is_never_logged(
    emulator: EmulatorHandle, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway(emulator, make_gateway)
    cid = "GID_fleet@@@s1"
    with caplog.at_level(logging.DEBUG):
        resp = await ask(client, "s1", {"clientId": cid}, **SENSOR)
        assert resp.status == 200
        path = f"/v1/admin/device-credentials/{cid}"
        for method, suffix in (("GET", ""), ("POST", "/refresh")):
            answered = await client.request(method, path + suffix, headers=admin_headers())
            assert answered.status == 200
    stored = emulator.state.credentials[(emulator.instance_id, cid)]
    assert stored.access_key_secret not in caplog.text
    assert "registered" in caplog.text  # the endpoint's own line is there, without it
    audit = [r.audit for r in caplog.records if r.name == "authserver.audit"]
    assert [line["action"] for line in audit] == ["device_credential", "device_credential_refresh"]
    assert audit[0]["secretFingerprint"] != audit[1]["secretFingerprint"]
    assert audit[1]["secretFingerprint"] == fingerprint(stored.access_key_secret)


async def test_the_login_opens_the_emulated_broker_until_rotated_or_dropped(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await gateway(emulator, make_gateway)
    cid = "GID_fleet@@@s1"
    login = await (await ask(client, "s1", {"clientId": cid}, **SENSOR)).json()
    state = emulator.state

    def login_ok(client_id: str, username: str, password: str) -> bool:
        # The emulated broker's own CONNECT check.
        try:
            authenticate(state, client_id, username, password)
        except ConnectRefused:
            return False
        return True

    assert login_ok(cid, login["username"], login["password"])
    assert not login_ok("GID_fleet@@@s2", login["username"], login["password"])
    assert not login_ok(cid, login["username"].replace("|", "x", 1), login["password"])
    resp = await client.post(f"/v1/admin/device-credentials/{cid}/refresh", headers=admin_headers())
    assert resp.status == 200
    assert not login_ok(cid, login["username"], login["password"])
    fresh = await (await ask(client, "s1", {"clientId": cid}, **SENSOR)).json()
    assert login_ok(cid, fresh["username"], fresh["password"])
    resp = await client.delete(f"/v1/admin/device-credentials/{cid}", headers=admin_headers())
    assert resp.status == 200
    assert not login_ok(cid, fresh["username"], fresh["password"])
