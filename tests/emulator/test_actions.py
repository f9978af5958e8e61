"""The emulated actions: documented parameter checks, codes, JSON and XML shapes."""
# ruff: noqa: S314 - the XML parsed here is the emulator's own answer

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from authserver.clock import ManualClock
from authserver.emulator.state import EXPIRED_RETENTION_MS
from tests.emulator.conftest import IOT_VERSION, Caller
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.helpers import eventually

HOUR_MS = 3_600_000


def apply_params(caller: Caller, **overrides: str) -> dict[str, str]:
    params = {
        "Actions": "R",
        "ExpireTime": str(int(caller.now() * 1000) + HOUR_MS),
        "InstanceId": caller.emu.instance_id,
        "Resources": "a/+,b/#",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


async def apply(caller: Caller, **overrides: str) -> str:
    answer = await caller.v1("ApplyToken", apply_params(caller, **overrides))
    assert answer.status == 200, answer.text
    assert set(answer.json) == {"RequestId", "Token"}
    return str(answer.json["Token"])


async def token_status(caller: Caller, token: str, instance_id: str | None = None) -> bool:
    answer = await caller.v1(
        "QueryToken", {"InstanceId": instance_id or caller.emu.instance_id, "Token": token}
    )
    assert answer.status == 200, answer.text
    return bool(answer.json["TokenStatus"])


async def test_apply_query_revoke(caller: Caller, emulator: EmulatorHandle) -> None:
    token = await apply(caller, Actions="R,W")
    assert await token_status(caller, token)
    assert emulator.state.token_info(token) is not None
    revoke = await caller.v1("RevokeToken", {"InstanceId": emulator.instance_id, "Token": token})
    assert revoke.status == 200
    assert set(revoke.json) == {"RequestId"}
    assert emulator.state.is_revoked(token)
    assert not await token_status(caller, token)
    again = await caller.v1("RevokeToken", {"InstanceId": emulator.instance_id, "Token": token})
    assert again.status == 200, "revoking twice is idempotent"
    unknown = await caller.v1("RevokeToken", {"InstanceId": emulator.instance_id, "Token": "x"})
    assert unknown.status == 200, "revoking an unknown token succeeds"
    assert emulator.state.stats()["tokens"]["revoked"] == 1


async def test_tokens_are_distinct_and_opaque(caller: Caller) -> None:
    tokens = {await apply(caller) for _ in range(5)}
    assert len(tokens) == 5


async def test_token_of_another_instance_is_invalid(
    make_emulator: MakeEmulator, http: object
) -> None:
    emu = await make_emulator(instance_ids=["post-cn-test", "post-cn-other"])
    caller = Caller(http, emu)  # type: ignore[arg-type]
    token = await apply(caller)
    assert await token_status(caller, token, "post-cn-test")
    assert not await token_status(caller, token, "post-cn-other")


async def test_token_expires_by_the_clock(make_emulator: MakeEmulator, http: object) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    caller = Caller(http, emu)  # type: ignore[arg-type]
    token = await apply(caller, ExpireTime=str(int(clock.time() * 1000) + 120_000))
    assert await token_status(caller, token)
    assert emu.state.sweep_expired() == 0
    clock.advance(121)
    assert not await token_status(caller, token)
    assert emu.state.stats()["tokens"]["live"] == 0
    # Known as expired for a while (the broker tells expired from unknown), then forgotten by
    # the background sweeper, which runs on the emulator's clock.
    assert emu.state.sweep_expired() == 0
    clock.advance(EXPIRED_RETENTION_MS / 1000)
    await eventually(lambda: emu.state.stats()["tokens"]["stored"] == 0)


async def test_expire_time_is_capped_at_30_days(make_emulator: MakeEmulator, http: object) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    caller = Caller(http, emu)  # type: ignore[arg-type]
    now_ms = int(clock.time() * 1000)
    token = await apply(caller, ExpireTime=str(now_ms * 2))
    record = emu.state.token_info(token)
    assert record is not None
    assert record.expire_ms == now_ms + 30 * 24 * HOUR_MS


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"Actions": "RW"}, "InvalidParameter.Actions"),
        ({"Actions": "W,R"}, "InvalidParameter.Actions"),
        ({"Actions": "r"}, "InvalidParameter.Actions"),
        ({"Actions": None}, "MissingActions"),
        ({"ExpireTime": "soon"}, "InvalidParameter.ExpireTime"),
        ({"ExpireTime": "NOW+59"}, "InvalidParameter.ExpireTime"),
        ({"ExpireTime": None}, "MissingExpireTime"),
        ({"Resources": "b/#,a/+"}, "InvalidParameter.Resources"),
        ({"Resources": "a/b#"}, "InvalidParameter.Resources"),
        ({"Resources": "a/#/b"}, "InvalidParameter.Resources"),
        ({"Resources": "a+/b"}, "InvalidParameter.Resources"),
        ({"Resources": "a,,b"}, "InvalidParameter.Resources"),
        ({"Resources": ",".join(f"t/{i:03d}" for i in range(101))}, "InvalidParameter.Resources"),
        ({"Resources": None}, "MissingResources"),
        ({"InstanceId": None}, "MissingInstanceId"),
        ({"InstanceId": "post-cn-unknown"}, "InstancePermissionCheckFailed"),
    ],
)
async def test_apply_token_parameter_checks(
    caller: Caller, overrides: dict[str, str | None], code: str
) -> None:
    if overrides.get("ExpireTime") == "NOW+59":
        overrides = {"ExpireTime": str(int(caller.now() * 1000) + 59_000)}
    answer = await caller.v1("ApplyToken", apply_params(caller, **overrides))  # type: ignore[arg-type]
    assert (answer.status, answer.code) == (400, code), answer.text
    assert set(answer.json) >= {"RequestId", "Code", "Message"}


async def test_apply_token_accepts_the_edges(caller: Caller) -> None:
    await apply(caller, Resources=",".join(f"t/{i:03d}" for i in range(100)))
    await apply(caller, ExpireTime=str(int(caller.now() * 1000) + 61_000), Actions="W")
    await apply(caller, Resources="#")
    await apply(caller, Resources="+/+/x")


@pytest.mark.parametrize(
    ("action", "version", "status", "code"),
    [
        ("NoSuchAction", "2020-04-20", 404, "InvalidAction.NotFound"),
        ("QueryMqttTraceDevice", "2020-04-20", 404, "ApiNotSupport"),
        ("QueryToken", "2019-01-01", 400, "InvalidVersion"),
        ("QueryClientIds", "2020-04-20", 404, "InvalidAction.NotFound"),
    ],
)
async def test_unknown_actions(
    caller: Caller, action: str, version: str, status: int, code: str
) -> None:
    answer = await caller.v1(action, {"InstanceId": caller.emu.instance_id}, version=version)
    assert (answer.status, answer.code) == (status, code)


async def test_xml_answers(caller: Caller, emulator: EmulatorHandle) -> None:
    answer = await caller.v1("ApplyToken", {**apply_params(caller), "Format": "XML"})
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(answer.text)
    assert root.tag == "ApplyTokenResponse"
    assert {child.tag for child in root} == {"RequestId", "Token"}
    token = root.findtext("Token")
    query = await caller.v1(
        "QueryToken", {"InstanceId": emulator.instance_id, "Token": token or "", "Format": "XML"}
    )
    assert ET.fromstring(query.text).findtext("TokenStatus") == "true"
    emulator.state.set_online(["GID_test@@@1"])
    batch = await caller.v1(
        "BatchQuerySessionByClientIds",
        {
            "InstanceId": emulator.instance_id,
            "ClientIdList.1": "GID_test@@@1",
            "ClientIdList.2": "GID_test@@@2",
            "Format": "XML",
        },
    )
    assert batch.status == 200, batch.text
    items = ET.fromstring(batch.text).findall("OnlineStatusList")
    assert [(i.findtext("ClientId"), i.findtext("OnlineStatus")) for i in items] == [
        ("GID_test@@@1", "true"),
        ("GID_test@@@2", "false"),
    ]
    error = await caller.v1("ApplyToken", {**apply_params(caller, Actions="X"), "Format": "XML"})
    assert error.status == 400
    err = ET.fromstring(error.text)
    assert err.tag == "Error"
    assert err.findtext("Code") == "InvalidParameter.Actions"
    assert err.findtext("RequestId")


async def test_sessions(caller: Caller, emulator: EmulatorHandle, http: object) -> None:
    import aiohttp

    assert isinstance(http, aiohttp.ClientSession)
    async with http.post(
        f"{emulator.url}/_emulator/sessions", json={"online": ["GID_test@@@a"]}
    ) as r:
        assert r.status == 200
    params = {"InstanceId": emulator.instance_id}
    one = await caller.v1("QuerySessionByClientId", {**params, "ClientId": "GID_test@@@a"})
    other = await caller.v1("QuerySessionByClientId", {**params, "ClientId": "GID_test@@@b"})
    assert (one.json["OnlineStatus"], other.json["OnlineStatus"]) == (True, False)
    bad = await caller.v1("QuerySessionByClientId", {**params, "ClientId": "no-group"})
    assert bad.code == "InvalidParameter.ClientId"
    batch = await caller.v3(
        "BatchQuerySessionByClientIds",
        {**params, "ClientIdList.1": "GID_test@@@a", "ClientIdList.2": "GID_test@@@b"},
    )
    assert batch.json["OnlineStatusList"] == [
        {"ClientId": "GID_test@@@a", "OnlineStatus": True},
        {"ClientId": "GID_test@@@b", "OnlineStatus": False},
    ]
    eleven = {f"ClientIdList.{i}": f"GID_test@@@{i}" for i in range(1, 12)}
    too_many = await caller.v1("BatchQuerySessionByClientIds", {**params, **eleven})
    assert too_many.code == "InvalidParameter.ClientIdList"
    none = await caller.v1("BatchQuerySessionByClientIds", params)
    assert none.code == "MissingClientIdList"


async def test_device_credentials_and_paging(caller: Caller, emulator: EmulatorHandle) -> None:
    params = {"InstanceId": emulator.instance_id}
    created = []
    for i in range(5):
        answer = await caller.v1(
            "RegisterDeviceCredential", {**params, "ClientId": f"GID_group@@@d{i}"}
        )
        assert answer.status == 200, answer.text
        created.append(answer.json["DeviceCredential"])
    await caller.v1("RegisterDeviceCredential", {**params, "ClientId": "GID_other@@@x"})
    assert set(created[0]) == {
        "ClientId",
        "InstanceId",
        "DeviceAccessKeyId",
        "DeviceAccessKeySecret",
        "CreateTime",
        "UpdateTime",
    }
    got = await caller.v1("GetDeviceCredential", {**params, "ClientId": "GID_group@@@d0"})
    assert got.json["DeviceCredential"] == created[0]
    refreshed = await caller.v1("RefreshDeviceCredential", {**params, "ClientId": "GID_group@@@d0"})
    new_secret = refreshed.json["DeviceCredential"]["DeviceAccessKeySecret"]
    assert new_secret != created[0]["DeviceAccessKeySecret"]

    listing = {**params, "GroupId": "GID_group", "PageNo": "1", "PageSize": "2"}
    first = (await caller.v1("ListDeviceCredentialClientId", listing)).json
    page = first["DeviceCredentialClientIdList"]
    assert page["Total"] == "5"
    assert (page["PageNo"], page["PageSize"]) == ("1", "2")
    seen = list(page["ClientIdList"])
    while "NextToken" in page:
        answer = await caller.v1(
            "ListDeviceCredentialClientId", {**listing, "NextToken": page["NextToken"]}
        )
        page = answer.json["DeviceCredentialClientIdList"]
        seen += page["ClientIdList"]
    assert seen == [f"GID_group@@@d{i}" for i in range(5)]
    page3 = await caller.v1("ListDeviceCredentialClientId", {**listing, "PageNo": "3"})
    assert page3.json["DeviceCredentialClientIdList"]["ClientIdList"] == ["GID_group@@@d4"]
    for size in ("0", "101", "x"):
        bad = await caller.v1("ListDeviceCredentialClientId", {**listing, "PageSize": size})
        assert bad.code == "InvalidParameter.PageSize"
    bad_next = await caller.v1("ListDeviceCredentialClientId", {**listing, "NextToken": "zz"})
    assert bad_next.code == "InvalidParameter.NextToken"

    gone = await caller.v1("UnRegisterDeviceCredential", {**params, "ClientId": "GID_group@@@d0"})
    assert gone.status == 200
    missing = await caller.v1("GetDeviceCredential", {**params, "ClientId": "GID_group@@@d0"})
    assert missing.code == "ParameterCheckFailed"


async def test_iot_query_client_ids(caller: Caller, emulator: EmulatorHandle) -> None:
    emulator.state.set_iot_client_ids("iot-1", ["cid-a", "cid-b"])
    answer = await caller.v1("QueryClientIds", {"IotId": "iot-1"}, version=IOT_VERSION)
    assert answer.status == 200, answer.text
    assert answer.json["Success"] is True
    data = answer.json["Data"]
    assert data["IotId"] == "iot-1"
    assert [c["ClientId"] for c in data["DynamicRegClientIds"]] == ["cid-a", "cid-b"]
    unknown = await caller.v3("QueryClientIds", {"IotId": "nope"}, version=IOT_VERSION)
    assert unknown.status == 200
    assert unknown.json["Success"] is False
    assert unknown.json["Code"] == "iot.device.NotExistedDevice"
