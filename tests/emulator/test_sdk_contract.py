"""The official SDK (alibabacloud-onsmqtt20200420) against the emulator over a real port.

The SDK is blocking, so every call runs in a worker thread (`asyncio.to_thread`) and the
emulator keeps serving on the test's event loop. Both of the SDK's signing modes are covered:
its default ACS3-HMAC-SHA256, and signature v1 with `signature_algorithm='v2'`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from alibabacloud_onsmqtt20200420 import models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException
from alibabacloud_tea_openapi.models import Config

from authserver.emulator.state import Fault, SentMessage
from tests.fixtures.emulator import EmulatorHandle

T = TypeVar("T")

pytestmark = pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "v2"])


def sdk(emu: EmulatorHandle, algorithm: str, secret: str | None = None) -> Client:
    config = Config(
        access_key_id=emu.access_key_id,
        access_key_secret=secret or emu.access_key_secret,
        endpoint=emu.endpoint,
        protocol="http",
        read_timeout=5000,
        connect_timeout=5000,
    )
    if algorithm == "v2":
        config.signature_algorithm = "v2"
    return Client(config)


async def call(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def test_token_lifecycle(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    applied = await call(
        client.apply_token,
        models.ApplyTokenRequest(
            actions="R,W",
            expire_time=int(time.time() * 1000) + 3_600_000,
            instance_id=emulator.instance_id,
            resources="devices/+/state,devices/a/#",
        ),
    )
    token = applied.body.token
    assert token
    assert applied.body.request_id
    assert emulator.state.token_valid(token)

    query = models.QueryTokenRequest(instance_id=emulator.instance_id, token=token)
    assert (await call(client.query_token, query)).body.token_status is True
    revoked = await call(
        client.revoke_token,
        models.RevokeTokenRequest(instance_id=emulator.instance_id, token=token),
    )
    assert revoked.body.request_id
    assert emulator.state.is_revoked(token)
    assert (await call(client.query_token, query)).body.token_status is False


async def test_sessions(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    emulator.state.set_online(["GID_test@@@on"])
    one = await call(
        client.query_session_by_client_id,
        models.QuerySessionByClientIdRequest(
            instance_id=emulator.instance_id, client_id="GID_test@@@on"
        ),
    )
    assert one.body.online_status is True
    batch = await call(
        client.batch_query_session_by_client_ids,
        models.BatchQuerySessionByClientIdsRequest(
            instance_id=emulator.instance_id,
            client_id_list=["GID_test@@@on", "GID_test@@@off"],
        ),
    )
    statuses = {s.client_id: s.online_status for s in batch.body.online_status_list}
    assert statuses == {"GID_test@@@on": True, "GID_test@@@off": False}


async def test_list_device_credential_client_ids(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    for n in range(3):
        await call(
            client.register_device_credential,
            models.RegisterDeviceCredentialRequest(
                instance_id=emulator.instance_id, client_id=f"GID_test@@@d{n}"
            ),
        )
    request = models.ListDeviceCredentialClientIdRequest(
        instance_id=emulator.instance_id, group_id="GID_test", page_no="1", page_size="2"
    )
    first = (await call(client.list_device_credential_client_id, request)).body
    listing = first.device_credential_client_id_list
    assert (listing.total, listing.page_no, listing.page_size) == ("3", "1", "2")
    assert listing.client_id_list == ["GID_test@@@d0", "GID_test@@@d1"]
    assert listing.next_token
    request.next_token = listing.next_token
    second = (await call(client.list_device_credential_client_id, request)).body
    assert second.device_credential_client_id_list.client_id_list == ["GID_test@@@d2"]
    assert second.device_credential_client_id_list.next_token is None


async def test_bad_parameter_surfaces_the_vendor_code(
    emulator: EmulatorHandle, algorithm: str
) -> None:
    client = sdk(emulator, algorithm)
    request = models.ApplyTokenRequest(
        actions="R",
        expire_time=int(time.time() * 1000) + 3_600_000,
        instance_id=emulator.instance_id,
        resources="b,a",
    )
    with pytest.raises(ClientException) as info:
        await call(client.apply_token, request)
    assert info.value.code == "InvalidParameter.Resources"
    assert info.value.status_code == 400
    assert info.value.request_id


async def test_bad_signature_surfaces_the_vendor_code(
    emulator: EmulatorHandle, algorithm: str
) -> None:
    client = sdk(emulator, algorithm, secret="not-the-secret")
    request = models.QueryTokenRequest(instance_id=emulator.instance_id, token="t")
    with pytest.raises(ClientException) as info:
        await call(client.query_token, request)
    assert (info.value.code, info.value.status_code) == ("SignatureDoesNotMatch", 400)


async def test_server_error_and_throttling_surface_the_vendor_code(
    emulator: EmulatorHandle, algorithm: str
) -> None:
    client = sdk(emulator, algorithm)
    request = models.RevokeTokenRequest(instance_id=emulator.instance_id, token="t")
    for _ in range(5):
        await call(client.revoke_token, request)
    with pytest.raises(ClientException) as throttled:
        await call(client.revoke_token, request)
    assert throttled.value.code == "RevokeTokenOverflow"
    emulator.state.faults["QueryToken"] = Fault(error_code="InternalError")
    query = models.QueryTokenRequest(instance_id=emulator.instance_id, token="t")
    with pytest.raises(ServerException) as failed:
        await call(client.query_token, query)
    assert (failed.value.code, failed.value.status_code) == ("InternalError", 500)


async def test_device_credential_actions(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    iid, cid = emulator.instance_id, "GID_test@@@sensor-1"
    registered = await call(
        client.register_device_credential,
        models.RegisterDeviceCredentialRequest(instance_id=iid, client_id=cid),
    )
    made = registered.body.device_credential
    stored = emulator.state.credentials[(iid, cid)]
    assert (made.client_id, made.instance_id) == (cid, iid)
    assert (made.device_access_key_id, made.device_access_key_secret) == (
        stored.access_key_id,
        stored.access_key_secret,
    )
    assert made.create_time == made.update_time == stored.create_ms
    got = await call(
        client.get_device_credential,
        models.GetDeviceCredentialRequest(instance_id=iid, client_id=cid),
    )
    assert got.body.device_credential.device_access_key_secret == made.device_access_key_secret
    refreshed = await call(
        client.refresh_device_credential,
        models.RefreshDeviceCredentialRequest(instance_id=iid, client_id=cid),
    )
    assert refreshed.body.device_credential.device_access_key_id == made.device_access_key_id
    assert (
        refreshed.body.device_credential.device_access_key_secret != made.device_access_key_secret
    )
    gone = await call(
        client.un_register_device_credential,
        models.UnRegisterDeviceCredentialRequest(instance_id=iid, client_id=cid),
    )
    assert gone.body.request_id
    assert (iid, cid) not in emulator.state.credentials
    with pytest.raises(ClientException) as absent:
        await call(
            client.get_device_credential,
            models.GetDeviceCredentialRequest(instance_id=iid, client_id=cid),
        )
    assert (absent.value.code, absent.value.status_code) == ("ParameterCheckFailed", 400)


async def test_group_actions(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    iid = emulator.instance_id
    for group_id in ("GID_one", "GID-two"):
        created = await call(
            client.create_group_id, models.CreateGroupIdRequest(group_id=group_id, instance_id=iid)
        )
        assert created.body.request_id
    with pytest.raises(ClientException) as dup:
        await call(
            client.create_group_id, models.CreateGroupIdRequest(group_id="GID_one", instance_id=iid)
        )
    assert (dup.value.code, dup.value.status_code) == ("GroupIdAlreadyExsited", 400)
    with pytest.raises(ClientException) as bad:
        await call(
            client.create_group_id,
            models.CreateGroupIdRequest(group_id="TEST_one", instance_id=iid),
        )
    assert bad.value.code == "ParameterFieldCheckFailed"
    listed = await call(client.list_group_id, models.ListGroupIdRequest(instance_id=iid))
    data = {g.group_id: g for g in listed.body.data}
    assert set(data) == {"GID_one", "GID-two"}
    assert all(g.instance_id == iid and g.independent_naming is True for g in data.values())
    assert all(isinstance(g.create_time, int) and g.update_time for g in data.values())
    deleted = await call(
        client.delete_group_id, models.DeleteGroupIdRequest(group_id="GID_one", instance_id=iid)
    )
    assert deleted.body.request_id
    listed = await call(client.list_group_id, models.ListGroupIdRequest(instance_id=iid))
    assert [g.group_id for g in listed.body.data] == ["GID-two"]


async def test_send_message(emulator: EmulatorHandle, algorithm: str) -> None:
    client = sdk(emulator, algorithm)
    seen: list[SentMessage] = []
    emulator.state.message_listeners.append(seen.append)
    payload = "aGVsbG8gK/8="  # base64, as the vendor advises: '+', '/' and '=' travel intact
    sent = await call(
        client.send_message,
        models.SendMessageRequest(
            instance_id=emulator.instance_id, mqtt_topic="devices/d1/cmd", payload=payload
        ),
    )
    assert sent.body.request_id
    [message] = seen
    assert (sent.body.msg_id, message.topic, message.payload) == (
        message.msg_id,
        "devices/d1/cmd",
        payload.encode(),
    )
    with pytest.raises(ClientException) as wildcard:
        await call(
            client.send_message,
            models.SendMessageRequest(
                instance_id=emulator.instance_id, mqtt_topic="devices/+/cmd", payload="x"
            ),
        )
    assert wildcard.value.code == "InvalidParameter.MqttTopic"
