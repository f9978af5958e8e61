"""`authserver admin` for device credentials, Group IDs, SendMessage and the legacy reports."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from authserver.admin_cli import EXIT_NOT_CONFIRMED, EXIT_OK, EXIT_USAGE
from authserver.cloud.quota import DEFAULT_LIMITS
from authserver.emulator.state import SentMessage
from tests.admin.conftest import API_KEY
from tests.admin.test_cli import Gateway, Terminal
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway

CID = "GID_fleet@@@dev-1"
FAST = {**DEFAULT_LIMITS, **{a: 1000.0 for a in DEFAULT_LIMITS if a.startswith("OnsMqtt")}}


@pytest.fixture
async def gateway(
    emulator: EmulatorHandle, make_gateway: MakeGateway, api_keys_file: Path, tmp_path: Path
) -> Gateway:
    client = await make_gateway(
        emulator, admin_api_keys_file=api_keys_file, ons_endpoint=emulator.url, quota=FAST
    )
    key_file = tmp_path / "admin-key"
    key_file.write_text(API_KEY + "\n")
    return Gateway(str(client.make_url("")).rstrip("/"), client, key_file, [])


async def test_device_credential(gateway: Gateway, emulator: EmulatorHandle) -> None:
    emulator.state.register_credential(emulator.instance_id, CID)
    secret = emulator.state.credentials[(emulator.instance_id, CID)].access_key_secret
    shown = await gateway.admin("device-credential", CID)
    assert shown.code == EXIT_OK, shown.err
    assert "secret fingerprint:" in shown.out
    refused = await gateway.admin("device-credential", CID, "--refresh")
    assert (refused.code, refused.err) == (
        EXIT_NOT_CONFIRMED,
        "authserver admin: device-credential needs --yes when stdin is not a terminal; "
        "nothing was changed\n",
    )
    asked = await gateway.admin("device-credential", CID, "--refresh", stdin=Terminal("y\n"))
    assert asked.code == EXIT_OK
    assert f"Rotate the device secret of {CID} at " in asked.err
    assert emulator.state.credentials[(emulator.instance_id, CID)].access_key_secret != secret
    gone = await gateway.admin("--json", "device-credential", CID, "--unregister", "--yes")
    assert gone.json() == {"clientId": CID, "unregistered": True}
    assert emulator.state.credentials == {}
    assert all(secret not in text for text in gateway.printed)


async def test_groups_and_messages(gateway: Gateway, emulator: EmulatorHandle) -> None:
    assert (await gateway.admin("groups", "--create", "GID_fleet")).code == EXIT_OK
    listed = await gateway.admin("groups")
    assert "GID_fleet" in listed.out
    deleted = await gateway.admin("groups", "--delete", "GID_fleet", "--yes")
    assert (deleted.code, deleted.out) == (EXIT_OK, "deleted GID_fleet\n")
    seen: list[SentMessage] = []
    emulator.state.message_listeners.append(seen.append)
    payload = base64.b64encode(b"\x00\x01").decode()
    sent = await gateway.admin("--json", "send-message", "devices/d1/cmd", payload, "--base64")
    assert sent.json()["msgId"] == seen[0].msg_id
    assert seen[0].payload == payload.encode()


async def test_revoke_with_device_credentials(gateway: Gateway, emulator: EmulatorHandle) -> None:
    emulator.state.register_credential(emulator.instance_id, CID)
    result = await gateway.admin(
        "--json", "revoke", "--client-id", CID, "--device-credentials", "unregister", "--yes"
    )
    assert result.json()["deviceCredentials"]["clientIds"] == [CID]
    assert emulator.state.credentials == {}
    bad = await gateway.admin(
        "revoke", "--mqtt-token-file", "-", "--device-credentials", "refresh", "--yes"
    )
    assert bad.code == EXIT_USAGE


async def test_legacy_reports(gateway: Gateway, emulator: EmulatorHandle) -> None:
    state = emulator.state
    state.set_online([CID])
    start = state.online_log[-1][0]  # when the online set took effect
    state.subscriptions[CID] = {"fleet/+/cmd": 1}
    client = await gateway.admin("client", CID)
    assert "fleet/+/cmd" in client.out
    online = await gateway.admin("--json", "group-online", "GID_fleet")
    assert online.json() == {"groupId": "GID_fleet", "onlineCount": 1}
    history = await gateway.admin(
        "--json", "group-online", "GID_fleet", "--history", "--begin", str(start)
    )
    assert history.json()["points"][0] == {"time": start, "value": 1}
    topic = await gateway.admin("--json", "topic", "fleet/d1/cmd")
    assert topic.json() == {"topic": "fleet/d1/cmd", "onlineCount": 1}
    volume = await gateway.admin(
        "topic", "fleet", "--messages", "--begin", str(start), "--direction", "SUB"
    )
    assert volume.code == EXIT_OK, volume.err
    assert "TIME" in volume.out
    misuse = await gateway.admin("topic", "fleet", "--measure", "SUM")
    assert misuse.code == EXIT_USAGE
