"""`authserver emulator --enforce-groups`: a CONNECT needs its GroupId on the instance.

Everything over real sockets: the signed OpenAPI (CreateGroupId, DeleteGroupId, ApplyToken,
RegisterDeviceCredential) over HTTP, the connects from paho devices to the emulator's broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from authserver.emulator.mqtt_auth import sign_client_id
from tests.broker.conftest import MakeDevice, broker_of
from tests.emulator.conftest import Caller
from tests.fixtures.emulator import EMULATOR_INSTANCE_ID, EmulatorHandle, MakeEmulator

GROUP = "GID_fleet"
CLIENT_ID = f"{GROUP}@@@unit1"
HOUR_MS = 3_600_000

# One login per mode: (username, password) for CLIENT_ID on the emulator, over the OpenAPI.
Login = Callable[[Caller], Awaitable[tuple[str, str]]]


async def call(caller: Caller, action: str, **params: str) -> dict[str, Any]:
    """A signed OpenAPI call on the emulator's instance; its JSON answer (200 expected)."""
    answer = await caller.v1(action, {"InstanceId": caller.emu.instance_id, **params})
    assert answer.status == 200, answer.text
    result: dict[str, Any] = answer.json
    return result


async def token_login(caller: Caller) -> tuple[str, str]:
    expire = str(int(caller.now() * 1000) + HOUR_MS)
    token = (await call(caller, "ApplyToken", Actions="R", Resources="a/#", ExpireTime=expire))[
        "Token"
    ]
    return f"Token|{caller.emu.access_key_id}|{caller.emu.instance_id}", f"R|{token}"


async def signature_login(caller: Caller) -> tuple[str, str]:
    username = f"Signature|{caller.emu.access_key_id}|{caller.emu.instance_id}"
    return username, sign_client_id(caller.emu.access_key_secret, CLIENT_ID)


async def credential_login(caller: Caller) -> tuple[str, str]:
    credential = (await call(caller, "RegisterDeviceCredential", ClientId=CLIENT_ID))[
        "DeviceCredential"
    ]
    username = f"DeviceCredential|{credential['DeviceAccessKeyId']}|{caller.emu.instance_id}"
    return username, sign_client_id(credential["DeviceAccessKeySecret"], CLIENT_ID)


MODES = pytest.mark.parametrize(
    "login",
    [token_login, signature_login, credential_login],
    ids=["token", "signature", "device-credential"],
)


async def refused_by_reason(emulator: EmulatorHandle) -> dict[str, int]:
    """`GET /_emulator/stats` over HTTP: the broker's refusals by reason."""
    async with aiohttp.ClientSession() as http, http.get(f"{emulator.url}/_emulator/stats") as r:
        stats: dict[str, Any] = await r.json()
    refused: dict[str, int] = stats["broker"]["refused"]
    return refused


async def connects(device: MakeDevice, port: int, username: str, password: str) -> bool:
    """Whether a fresh device with CLIENT_ID is accepted; refused means CONNACK 5."""
    d = device(CLIENT_ID)
    code = await d.connect(port, username, password)
    if code == 0:
        d.close()
        return True
    assert str(code) == "Not authorized"
    await d.gone()
    return False


@MODES
async def test_enforced_groups_follow_create_and_delete(
    make_emulator: MakeEmulator, device: MakeDevice, login: Login
) -> None:
    emulator = await make_emulator(mqtt_port=0, enforce_groups=True)
    port = broker_of(emulator).port
    async with aiohttp.ClientSession() as http:
        caller = Caller(http, emulator)
        username, password = await login(caller)
        assert not await connects(device, port, username, password)
        assert await refused_by_reason(emulator) == {"group": 1}
        await call(caller, "CreateGroupId", GroupId=GROUP)
        assert await connects(device, port, username, password)
        await call(caller, "DeleteGroupId", GroupId=GROUP)
        assert not await connects(device, port, username, password)
    assert await refused_by_reason(emulator) == {"group": 2}


async def test_a_group_of_another_instance_does_not_count(
    make_emulator: MakeEmulator, device: MakeDevice
) -> None:
    emulator = await make_emulator(
        mqtt_port=0, enforce_groups=True, instance_ids=[EMULATOR_INSTANCE_ID, "post-cn-other"]
    )
    port = broker_of(emulator).port
    async with aiohttp.ClientSession() as http:
        caller = Caller(http, emulator)
        username, password = await signature_login(caller)
        answer = await caller.v1("CreateGroupId", {"InstanceId": "post-cn-other", "GroupId": GROUP})
        assert answer.status == 200, answer.text
        assert not await connects(device, port, username, password)
    assert await refused_by_reason(emulator) == {"group": 1}


async def test_bad_credentials_are_refused_for_them_before_the_group(
    make_emulator: MakeEmulator, device: MakeDevice
) -> None:
    # Only a client that proved its credentials learns whether its group exists.
    emulator = await make_emulator(mqtt_port=0, enforce_groups=True)
    port = broker_of(emulator).port
    username = f"Signature|{emulator.access_key_id}|{emulator.instance_id}"
    assert not await connects(device, port, username, "AAAA")
    assert await refused_by_reason(emulator) == {"signature": 1}


@MODES
async def test_without_the_flag_no_group_is_needed(
    mqtt_emulator: EmulatorHandle, device: MakeDevice, login: Login
) -> None:
    port = broker_of(mqtt_emulator).port
    async with aiohttp.ClientSession() as http:
        username, password = await login(Caller(http, mqtt_emulator))
    assert await connects(device, port, username, password)
    assert await refused_by_reason(mqtt_emulator) == {}
