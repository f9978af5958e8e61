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

from authserver.emulator.state import Fault
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
