"""The client's management actions against the emulator: device credentials, groups, messages."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator

import pytest

from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.credentials import Credentials
from authserver.cloud.errors import CloudRejected
from authserver.cloud.quota import DEFAULT_LIMITS
from authserver.cloud.resources import device_credential_password
from authserver.emulator.state import SentMessage
from tests.fixtures.emulator import EmulatorHandle

DEVICE = "GID_fleet@@@dev-1"


@pytest.fixture
async def client(emulator: EmulatorHandle) -> AsyncIterator[CloudClient]:
    """A client of the emulator over one real session."""
    http = make_session()
    yield CloudClient(
        http,
        Credentials(emulator.access_key_id, emulator.access_key_secret),
        endpoint=emulator.url,
        backoff_base=0.01,
    )
    await http.close()


async def test_device_credential_lifecycle(client: CloudClient, emulator: EmulatorHandle) -> None:
    iid = emulator.instance_id
    with pytest.raises(CloudRejected) as absent:
        await client.get_device_credential(iid, DEVICE)
    assert absent.value.vendor_code == "ParameterCheckFailed"
    made = await client.register_device_credential(iid, DEVICE)
    stored = emulator.state.credentials[(iid, DEVICE)]
    assert (made.client_id, made.instance_id) == (DEVICE, iid)
    assert made.access_key_id == stored.access_key_id
    assert made.access_key_secret == stored.access_key_secret
    assert stored.access_key_secret not in repr(made)
    assert made.username == f"DeviceCredential|{stored.access_key_id}|{iid}"
    expected = base64.b64encode(
        hmac.new(stored.access_key_secret.encode(), DEVICE.encode(), hashlib.sha1).digest()
    ).decode()
    assert made.password == expected == device_credential_password(stored.access_key_secret, DEVICE)
    assert await client.get_device_credential(iid, DEVICE) == made
    again = await client.register_device_credential(iid, DEVICE)
    assert again.access_key_secret == made.access_key_secret, "registering twice keeps the pair"
    fresh = await client.refresh_device_credential(iid, DEVICE)
    assert fresh.access_key_id == made.access_key_id
    assert fresh.access_key_secret != made.access_key_secret
    assert fresh.password != made.password
    await client.unregister_device_credential(iid, DEVICE)
    assert (iid, DEVICE) not in emulator.state.credentials
    await client.unregister_device_credential(iid, DEVICE)  # idempotent
    with pytest.raises(CloudRejected):
        await client.refresh_device_credential(iid, DEVICE)


async def test_invalid_client_id_is_refused_upstream(
    client: CloudClient, emulator: EmulatorHandle
) -> None:
    with pytest.raises(CloudRejected) as info:
        await client.register_device_credential(emulator.instance_id, "no-group")
    assert info.value.vendor_code == "InvalidParameter.ClientId"


async def test_group_ids(client: CloudClient, emulator: EmulatorHandle) -> None:
    iid = emulator.instance_id
    assert await client.list_group_ids(iid) == []
    await client.create_group_id(iid, "GID_one")
    await client.create_group_id(iid, "GID-two")
    with pytest.raises(CloudRejected) as dup:
        await client.create_group_id(iid, "GID_one")
    assert dup.value.vendor_code == "GroupIdAlreadyExsited"
    for bad in ("GROUP_x", "GID_ab", "GID_" + "x" * 61, "GID_a b", "GID_ü1234"):
        with pytest.raises(CloudRejected) as info:
            await client.create_group_id(iid, bad)
        assert info.value.vendor_code == "ParameterFieldCheckFailed", bad
    await client.create_group_id(iid, "GID_" + "x" * 60)  # 64 characters: the edge
    listed = {g.group_id: g for g in await client.list_group_ids(iid)}
    assert set(listed) == {"GID_one", "GID-two", "GID_" + "x" * 60}
    assert all(g.instance_id == iid and g.create_time_ms > 0 for g in listed.values())
    await client.delete_group_id(iid, "GID_one")
    await client.delete_group_id(iid, "GID_one")  # idempotent
    assert {g.group_id for g in await client.list_group_ids(iid)} == {"GID-two", "GID_" + "x" * 60}


async def test_send_message_reaches_the_listeners(
    client: CloudClient, emulator: EmulatorHandle
) -> None:
    seen: list[SentMessage] = []
    emulator.state.message_listeners.append(seen.append)
    msg_id = await client.send_message(emulator.instance_id, "devices/d1/cmd", "come back")
    assert len(msg_id) == 32
    assert [(m.msg_id, m.topic, m.payload) for m in seen] == [
        (msg_id, "devices/d1/cmd", b"come back")
    ]
    refused = [
        ("devices/+/cmd", "p", "InvalidParameter.MqttTopic"),
        ("devices/#", "p", "InvalidParameter.MqttTopic"),
        ("devices/d1/cmd", "", "MissingPayload"),
    ]
    for topic, payload, code in refused:
        with pytest.raises(CloudRejected) as info:
            await client.send_message(emulator.instance_id, topic, payload)
        assert info.value.vendor_code == code
    assert len(seen) == 1


def test_documented_quotas() -> None:
    # 002 section 8
    assert {a: DEFAULT_LIMITS[a] for a in ("CreateGroupId", "DeleteGroupId", "ListGroupId")} == {
        "CreateGroupId": 10,
        "DeleteGroupId": 10,
        "ListGroupId": 10,
    }
    assert DEFAULT_LIMITS["SendMessage"] == 1000


async def test_group_calls_are_spaced_by_the_governor(
    client: CloudClient, emulator: EmulatorHandle
) -> None:
    # The emulator allows 10/s; 12 back-to-back calls pass only because the governor spaces them.
    for n in range(12):
        await client.create_group_id(emulator.instance_id, f"GID_g{n:03d}", deadline=5.0)
    assert emulator.state.stats()["errors"] == {}
    assert len(emulator.state.groups) == 12
