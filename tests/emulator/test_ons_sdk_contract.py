"""The older core SDK against the emulator: aliyun-python-sdk-ons 3.1.x and the calls of 001.

A different implementation of signature v1 (aliyunsdkcore) than the tea SDK's, with the
legacy product's requests (`v20190214`; 3.1.9 no longer has the OnsMqtt ones), in
both answer formats the documents show: JSON and XML.
"""
# ruff: noqa: S314 - the XML parsed here is the emulator's own answer

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import RpcRequest
from aliyunsdkons.request.v20190214 import (
    OnsMqttGroupIdCreateRequest,
    OnsMqttGroupIdDeleteRequest,
    OnsMqttGroupIdListRequest,
    OnsMqttQueryClientByClientIdRequest,
    OnsMqttQueryClientByGroupIdRequest,
    OnsMqttQueryClientByTopicRequest,
    OnsMqttQueryHistoryOnlineRequest,
    OnsMqttQueryMsgTransTrendRequest,
)

from tests.fixtures.emulator import EmulatorHandle

pytestmark = pytest.mark.parametrize("fmt", ["JSON", "XML"])
MINUTE_MS = 60_000


def sdk(emu: EmulatorHandle) -> AcsClient:
    return AcsClient(
        emu.access_key_id,
        emu.access_key_secret,
        "cn-hangzhou",
        auto_retry=False,
        port=emu.port,
        timeout=5,
        connect_timeout=5,
    )


async def send(emu: EmulatorHandle, fmt: str, request: RpcRequest, **params: Any) -> Any:
    """Call through the SDK in a worker thread; the parsed answer (dict, or XML element)."""
    request.set_endpoint("127.0.0.1")
    request.set_protocol_type("http")
    request.set_accept_format(fmt)
    for name, value in params.items():
        setter: Callable[[Any], None] = getattr(request, f"set_{name}")
        setter(value)
    if fmt == "JSON":
        return json.loads(await asyncio.to_thread(sdk(emu).do_action_with_exception, request))
    # do_action_with_exception forces JSON; get_response keeps the format asked for.
    status, _, raw = await asyncio.to_thread(sdk(emu).get_response, request)
    root = ET.fromstring(raw)
    if status >= 400:
        assert root.tag == "Error"
        raise ServerException(
            text(root, "Code"), text(root, "Message"), status, text(root, "RequestId")
        )
    return root


def text(root: Any, path: str) -> str:
    found = root.find(path)
    assert found is not None, path
    return str(found.text)


async def test_group_ids(emulator: EmulatorHandle, fmt: str) -> None:
    iid = emulator.instance_id
    await send(
        emulator,
        fmt,
        OnsMqttGroupIdCreateRequest.OnsMqttGroupIdCreateRequest(),
        GroupId="GID_legacy",
        InstanceId=iid,
        Topic="fleet",
    )
    listed = await send(
        emulator, fmt, OnsMqttGroupIdListRequest.OnsMqttGroupIdListRequest(), InstanceId=iid
    )
    if fmt == "JSON":
        [group] = listed["Data"]["MqttGroupIdDo"]
        assert (group["GroupId"], group["InstanceId"], group["IndependentNaming"]) == (
            "GID_legacy",
            iid,
            True,
        )
        assert isinstance(group["CreateTime"], int)
    else:
        assert listed.tag == "OnsMqttGroupIdListResponse"
        assert text(listed, "Data/MqttGroupIdDo/GroupId") == "GID_legacy"
        assert text(listed, "Data/MqttGroupIdDo/IndependentNaming") == "true"
        assert text(listed, "RequestId")
    with pytest.raises(ServerException) as dup:
        await send(
            emulator,
            fmt,
            OnsMqttGroupIdCreateRequest.OnsMqttGroupIdCreateRequest(),
            GroupId="GID_legacy",
            InstanceId=iid,
        )
    assert (dup.value.get_error_code(), dup.value.get_http_status()) == (
        "GroupIdAlreadyExsited",
        400,
    )
    assert dup.value.get_request_id()
    await send(
        emulator,
        fmt,
        OnsMqttGroupIdDeleteRequest.OnsMqttGroupIdDeleteRequest(),
        GroupId="GID_legacy",
        InstanceId=iid,
    )
    assert emulator.state.groups == {}


async def test_client_queries(emulator: EmulatorHandle, fmt: str) -> None:
    iid, state = emulator.instance_id, emulator.state
    state.set_online(["GID_fleet@@@d1", "GID_fleet@@@d2"])
    state.subscriptions["GID_fleet@@@d1"] = {"fleet/+/cmd": 1}
    state.client_sessions["GID_fleet@@@d1"].address = "/10.0.0.7:50255"
    by_group = await send(
        emulator,
        fmt,
        OnsMqttQueryClientByGroupIdRequest.OnsMqttQueryClientByGroupIdRequest(),
        GroupId="GID_fleet",
        InstanceId=iid,
    )
    by_topic = await send(
        emulator,
        fmt,
        OnsMqttQueryClientByTopicRequest.OnsMqttQueryClientByTopicRequest(),
        ParentTopic="fleet",
        SubTopic="/d9/cmd",
        InstanceId=iid,
    )
    detail = await send(
        emulator,
        fmt,
        OnsMqttQueryClientByClientIdRequest.OnsMqttQueryClientByClientIdRequest(),
        ClientId="GID_fleet@@@d1",
        InstanceId=iid,
    )
    if fmt == "JSON":
        assert by_group["MqttClientSetDo"]["OnlineCount"] == 2
        assert by_topic["MqttClientSetDo"]["OnlineCount"] == 1
        info = detail["MqttClientInfoDo"]
        assert (info["ClientId"], info["Online"], info["SocketChannel"]) == (
            "GID_fleet@@@d1",
            True,
            "/10.0.0.7:50255",
        )
        assert info["SubScriptonData"]["SubscriptionDo"] == [
            {"ParentTopic": "fleet", "SubTopic": "/+/cmd", "Qos": 1}
        ]
    else:
        assert text(by_group, "MqttClientSetDo/OnlineCount") == "2"
        assert text(by_topic, "MqttClientSetDo/OnlineCount") == "1"
        assert text(detail, "MqttClientInfoDo/Online") == "true"
        assert text(detail, "MqttClientInfoDo/SubScriptonData/SubscriptionDo/SubTopic") == "/+/cmd"


async def test_reports(emulator: EmulatorHandle, fmt: str) -> None:
    iid, state = emulator.instance_id, emulator.state
    state.set_online(["GID_fleet@@@d1"])
    start = state.online_log[-1][0]  # when the online set took effect
    state.subscriptions["GID_fleet@@@d1"] = {"fleet/#": 0}
    state.send_message(iid, "fleet/d1/cmd", b"x")
    history = await send(
        emulator,
        fmt,
        OnsMqttQueryHistoryOnlineRequest.OnsMqttQueryHistoryOnlineRequest(),
        GroupId="GID_fleet",
        InstanceId=iid,
        BeginTime=start,
        EndTime=start + MINUTE_MS,
    )
    trend = await send(
        emulator,
        fmt,
        OnsMqttQueryMsgTransTrendRequest.OnsMqttQueryMsgTransTrendRequest(),
        InstanceId=iid,
        ParentTopic="fleet",
        BeginTime=start,
        EndTime=start + MINUTE_MS - 1,
        TpsType="SUM",
        TransType="SUB",
    )
    if fmt == "JSON":
        points = history["Data"]["Records"]["StatsDataDo"]
        assert [(p["X"], p["Y"]) for p in points] == [(start, 1), (start + MINUTE_MS, 1)]
        assert history["Data"]["Title"] == "客户端连接数"
        assert trend["Data"]["Records"]["StatsDataDo"] == [{"X": start, "Y": 1}]
    else:
        assert [x.text for x in history.iter("X")] == [str(start), str(start + MINUTE_MS)]
        assert text(history, "Data/XUnit") == "时间"
        assert text(trend, "Data/Records/StatsDataDo/Y") == "1.0"
    with pytest.raises(ServerException) as bad:
        await send(
            emulator,
            fmt,
            OnsMqttQueryMsgTransTrendRequest.OnsMqttQueryMsgTransTrendRequest(),
            InstanceId=iid,
            ParentTopic="fleet",
            BeginTime=start,
            EndTime=start,
            TpsType="AVG",
            TransType="PUB",
        )
    assert bad.value.get_error_code() == "InvalidParameter.TpsType"
