"""The older core SDK of the 2020-04-20 API (aliyun-python-sdk-onsmqtt) against the emulator.

aliyunsdkcore signs v1 with its own implementation, putting the parameters in the query
string of a POST. Its 1.0.5 release has no ListDeviceCredentialClientId request (nor the IoT
Platform's QueryClientIds, another product): those are driven by the tea SDK's tests only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkonsmqtt.request.v20200420 import (
    ApplyTokenRequest,
    BatchQuerySessionByClientIdsRequest,
    CreateGroupIdRequest,
    DeleteGroupIdRequest,
    GetDeviceCredentialRequest,
    ListGroupIdRequest,
    QueryTokenRequest,
    RefreshDeviceCredentialRequest,
    RegisterDeviceCredentialRequest,
    RevokeTokenRequest,
    SendMessageRequest,
    UnRegisterDeviceCredentialRequest,
)

from authserver.emulator.state import SentMessage
from tests.fixtures.emulator import EmulatorHandle

CID = "GID_test@@@sensor-1"


async def send(emu: EmulatorHandle, request: RpcRequest, **params: Any) -> Any:
    """One call through the core SDK in a worker thread; the parsed JSON answer."""
    request.set_endpoint("127.0.0.1")
    request.set_protocol_type("http")
    for name, value in params.items():
        setter: Callable[[Any], None] = getattr(request, f"set_{name}")
        setter(value)
    client = AcsClient(
        emu.access_key_id, emu.access_key_secret, "cn-hangzhou", auto_retry=False, port=emu.port
    )
    return json.loads(await asyncio.to_thread(client.do_action_with_exception, request))


async def test_tokens_and_sessions(emulator: EmulatorHandle) -> None:
    iid = emulator.instance_id
    applied = await send(
        emulator,
        ApplyTokenRequest.ApplyTokenRequest(),
        InstanceId=iid,
        Resources="a/+,b/#",
        Actions="R",
        ExpireTime=int(time.time() * 1000) + 3_600_000,
    )
    token = applied["Token"]
    queried = await send(
        emulator, QueryTokenRequest.QueryTokenRequest(), InstanceId=iid, Token=token
    )
    assert queried["TokenStatus"] is True
    await send(emulator, RevokeTokenRequest.RevokeTokenRequest(), InstanceId=iid, Token=token)
    assert emulator.state.is_revoked(token)
    emulator.state.set_online([CID])
    batch = await send(
        emulator,
        BatchQuerySessionByClientIdsRequest.BatchQuerySessionByClientIdsRequest(),
        InstanceId=iid,
        ClientIdLists=[CID, "GID_test@@@off"],
    )
    assert {s["ClientId"]: s["OnlineStatus"] for s in batch["OnlineStatusList"]} == {
        CID: True,
        "GID_test@@@off": False,
    }


async def test_device_credentials(emulator: EmulatorHandle) -> None:
    iid = emulator.instance_id
    made = (
        await send(
            emulator,
            RegisterDeviceCredentialRequest.RegisterDeviceCredentialRequest(),
            InstanceId=iid,
            ClientId=CID,
        )
    )["DeviceCredential"]
    assert made["DeviceAccessKeySecret"] == emulator.state.credentials[(iid, CID)].access_key_secret
    got = await send(
        emulator,
        GetDeviceCredentialRequest.GetDeviceCredentialRequest(),
        InstanceId=iid,
        ClientId=CID,
    )
    assert got["DeviceCredential"] == made
    fresh = await send(
        emulator,
        RefreshDeviceCredentialRequest.RefreshDeviceCredentialRequest(),
        InstanceId=iid,
        ClientId=CID,
    )
    assert fresh["DeviceCredential"]["DeviceAccessKeySecret"] != made["DeviceAccessKeySecret"]
    await send(
        emulator,
        UnRegisterDeviceCredentialRequest.UnRegisterDeviceCredentialRequest(),
        InstanceId=iid,
        ClientId=CID,
    )
    with pytest.raises(ServerException) as absent:
        await send(
            emulator,
            GetDeviceCredentialRequest.GetDeviceCredentialRequest(),
            InstanceId=iid,
            ClientId=CID,
        )
    assert (absent.value.get_error_code(), absent.value.get_http_status()) == (
        "ParameterCheckFailed",
        400,
    )


async def test_groups_and_send_message(emulator: EmulatorHandle) -> None:
    iid = emulator.instance_id
    await send(
        emulator, CreateGroupIdRequest.CreateGroupIdRequest(), InstanceId=iid, GroupId="GID_one"
    )
    with pytest.raises(ServerException) as dup:
        await send(
            emulator, CreateGroupIdRequest.CreateGroupIdRequest(), InstanceId=iid, GroupId="GID_one"
        )
    assert dup.value.get_error_code() == "GroupIdAlreadyExsited"
    listed = await send(emulator, ListGroupIdRequest.ListGroupIdRequest(), InstanceId=iid)
    assert [g["GroupId"] for g in listed["Data"]] == ["GID_one"]
    await send(
        emulator, DeleteGroupIdRequest.DeleteGroupIdRequest(), InstanceId=iid, GroupId="GID_one"
    )
    assert emulator.state.groups == {}
    seen: list[SentMessage] = []
    emulator.state.message_listeners.append(seen.append)
    sent = await send(
        emulator,
        SendMessageRequest.SendMessageRequest(),
        InstanceId=iid,
        MqttTopic="devices/d1/cmd",
        Payload="aGk+Lz0=",
    )
    assert [(m.msg_id, m.payload) for m in seen] == [(sent["MsgId"], b"aGk+Lz0=")]
