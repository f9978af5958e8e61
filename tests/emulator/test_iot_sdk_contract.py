"""The IoT Platform's own SDK (alibabacloud-iot20180120) drives the emulator's QueryClientIds."""

from __future__ import annotations

import asyncio

import pytest
from alibabacloud_iot20180120 import models
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi.models import Config

from tests.fixtures.emulator import EmulatorHandle

pytestmark = pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "v2"])


def sdk(emu: EmulatorHandle, algorithm: str) -> Client:
    config = Config(
        access_key_id=emu.access_key_id,
        access_key_secret=emu.access_key_secret,
        endpoint=emu.endpoint,
        protocol="http",
        read_timeout=5000,
        connect_timeout=5000,
    )
    if algorithm == "v2":
        config.signature_algorithm = "v2"
    return Client(config)


async def test_query_client_ids(emulator: EmulatorHandle, algorithm: str) -> None:
    emulator.state.set_iot_client_ids("iot-1", ["GID_fleet@@@a", "GID_fleet@@@b"])
    client = sdk(emulator, algorithm)
    found = await asyncio.to_thread(
        client.query_client_ids, models.QueryClientIdsRequest(iot_id="iot-1")
    )
    body = found.body
    assert body.success is True
    assert body.data.iot_id == "iot-1"
    ids = [(c.client_id, c.create_time) for c in body.data.dynamic_reg_client_ids]
    assert [c for c, _ in ids] == ["GID_fleet@@@a", "GID_fleet@@@b"]
    assert all(isinstance(t, int) and t > 0 for _, t in ids)
    missing = await asyncio.to_thread(
        client.query_client_ids, models.QueryClientIdsRequest(iot_id="nope")
    )
    # The IoT Platform answers business errors with HTTP 200 and Success false.
    assert (missing.body.success, missing.body.code) == (False, "iot.device.NotExistedDevice")
