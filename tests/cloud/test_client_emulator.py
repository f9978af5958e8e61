"""The client against the emulator over real sockets: every action, faults, the quota."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from authserver.clock import ManualClock
from authserver.cloud.circuit import CircuitBreaker
from authserver.cloud.client import CloudClient, make_session
from authserver.cloud.credentials import Credentials
from authserver.cloud.errors import (
    CloudRejected,
    CloudThrottled,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from authserver.cloud.quota import QuotaGovernor
from authserver.emulator.state import DEFAULT_QPS
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator

MakeClient = Callable[..., CloudClient]


def in_an_hour_ms() -> int:
    """An ExpireTime one hour ahead."""
    return int((time.time() + 3600) * 1000)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The client's long-lived HTTP session."""
    http = make_session()
    yield http
    await http.close()


def client_of(session: aiohttp.ClientSession, emu: EmulatorHandle, **kwargs: Any) -> CloudClient:
    """A client of the emulator, signing with the emulator's test key."""
    kwargs.setdefault("backoff_base", 0.01)
    creds = kwargs.pop("credentials", Credentials(emu.access_key_id, emu.access_key_secret))
    return CloudClient(session, creds, endpoint=emu.url, iot_endpoint=emu.url, **kwargs)


async def emulator_stats(session: aiohttp.ClientSession, emu: EmulatorHandle) -> Any:
    """`GET /_emulator/stats`."""
    async with session.get(f"{emu.url}/_emulator/stats") as response:
        return await response.json()


async def set_fault(session: aiohttp.ClientSession, emu: EmulatorHandle, **fault: Any) -> None:
    """`POST /_emulator/faults`."""
    async with session.post(f"{emu.url}/_emulator/faults", json=fault) as response:
        assert response.status == 200


async def test_token_lifecycle(session: aiohttp.ClientSession, emulator: EmulatorHandle) -> None:
    client = client_of(session, emulator)
    applied = await client.apply_token(
        emulator.instance_id, ["devices/1/#", "devices/1/status"], "R,W", in_an_hour_ms()
    )
    assert applied.token
    assert applied.request_id
    record = emulator.state.token_info(applied.token)
    assert record is not None
    assert record.resources == ("devices/1/#", "devices/1/status")
    assert await client.query_token(emulator.instance_id, applied.token)
    await client.revoke_token(emulator.instance_id, applied.token)
    assert not await client.query_token(emulator.instance_id, applied.token)


async def test_sts_credentials_are_accepted(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    creds = Credentials(emulator.access_key_id, emulator.access_key_secret, "sts-token")
    client = client_of(session, emulator, credentials=creds)
    assert not await client.query_token(emulator.instance_id, "never-issued")


async def test_a_bad_secret_is_rejected_not_retried(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator, credentials=Credentials(emulator.access_key_id, "bad"))
    with pytest.raises(CloudRejected) as caught:
        await client.query_token(emulator.instance_id, "x")
    assert caught.value.vendor_code == "SignatureDoesNotMatch"
    assert caught.value.request_id
    assert (await emulator_stats(session, emulator))["calls"]["QueryToken"] == 1


async def test_parameter_errors_come_back_typed(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator)
    past = int((time.time() - 10) * 1000)
    with pytest.raises(CloudRejected) as caught:
        await client.apply_token(emulator.instance_id, ["a/b"], "R", past)
    assert caught.value.http_status == 400
    assert not caught.value.retryable
    with pytest.raises(CloudRejected):
        await client.apply_token("post-cn-unknown", ["a/b"], "R", in_an_hour_ms())
    stats = await emulator_stats(session, emulator)
    assert stats["calls"]["ApplyToken"] == 2, "parameter errors are not retried"
    assert client.circuit.state == "closed"


async def test_sessions_single_and_batched(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator)
    ids = [f"GID_test@@@dev{n:02d}" for n in range(23)]
    online = set(ids[::3])
    emulator.state.set_online(online)
    assert await client.query_session(emulator.instance_id, ids[0])
    assert not await client.query_session(emulator.instance_id, ids[1])
    answer = await client.batch_query_sessions(emulator.instance_id, ids)
    assert answer == {c: c in online for c in ids}
    assert await client.batch_query_sessions(emulator.instance_id, []) == {}
    stats = await emulator_stats(session, emulator)
    assert stats["calls"]["BatchQuerySessionByClientIds"] == 3, "chunks of 10"


async def test_device_credentials_page_by_page(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator)
    group = "GID_test"
    for n in range(5):
        emulator.state.register_credential(emulator.instance_id, f"{group}@@@dev{n}")
    first = await client.list_device_credential_client_ids(emulator.instance_id, group, page_size=3)
    assert first.total == 5
    assert first.page_no == 1
    assert first.page_size == 3
    assert len(first.client_ids) == 3
    assert first.next_token
    second = await client.list_device_credential_client_ids(
        emulator.instance_id, group, page_size=3, next_token=first.next_token
    )
    assert second.next_token is None
    assert sorted(first.client_ids + second.client_ids) == [f"{group}@@@dev{n}" for n in range(5)]


async def test_iot_query_client_ids(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator)
    emulator.state.set_iot_client_ids("iot-dev-1", ["cid-a", "cid-b"])
    found = await client.query_client_ids("iot-dev-1")
    assert [c.client_id for c in found] == ["cid-a", "cid-b"]
    assert all(c.create_time_ms > 0 for c in found)
    with pytest.raises(CloudRejected):
        await client.query_client_ids("iot-unknown")


async def test_injected_internal_errors_are_retried(
    session: aiohttp.ClientSession, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    emu.state.rng.seed(3)
    client = client_of(session, emu, max_attempts=20)
    await set_fault(session, emu, action="QueryToken", errorCode="InternalError", rate=0.5)
    for _ in range(10):
        assert not await client.query_token(emu.instance_id, "x")
    stats = await emulator_stats(session, emu)
    assert stats["errors"]["InternalError"] > 0
    assert stats["success"]["QueryToken"] == 10


async def test_the_emulator_throttling_until_the_deadline(
    session: aiohttp.ClientSession, make_emulator: MakeEmulator
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    client = client_of(session, emu, max_attempts=50, clock=clock, rng=random.Random(1))
    await set_fault(session, emu, action="ApplyToken", errorCode="ApplyTokenOverflow")
    end = clock.monotonic() + 0.5
    with pytest.raises(UpstreamThrottled) as caught:
        await client.apply_token(emu.instance_id, ["a"], "R", in_an_hour_ms(), deadline=0.5)
    assert isinstance(caught.value.__cause__, CloudThrottled)
    assert caught.value.__cause__.vendor_code == "ApplyTokenOverflow"
    # Retried while the deadline allowed, on the client's clock, and no attempt after it.
    attempts = client.stats()["attempts"]["ApplyToken"]
    assert attempts > 3
    assert (await emulator_stats(session, emu))["calls"]["ApplyToken"] == attempts
    assert clock.monotonic() <= end


@pytest.mark.parametrize(
    ("left", "attempts"),
    [
        # 30 ms left when the retry's quota slot comes: too little to start it at all.
        (0.03, 1),
        # 80 ms left: the retry starts and the deadline cuts it short (the answer takes
        # 100 ms); the upstream's last word was still "throttled".
        (0.08, 2),
    ],
)
async def test_a_deadline_that_runs_out_on_a_throttled_call_reports_throttling(
    session: aiohttp.ClientSession, make_emulator: MakeEmulator, left: float, attempts: int
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    # ApplyToken slots 0.4 s apart: the retry's slot comes with `left` of the deadline.
    governor = QuotaGovernor({"ApplyToken": 2.5}, margin=0.0, clock=clock)
    client = client_of(session, emu, clock=clock, governor=governor, max_attempts=50)
    await set_fault(
        session, emu, action="ApplyToken", errorCode="ApplyTokenOverflow", latencyMs=100
    )
    with pytest.raises(UpstreamThrottled) as caught:
        await client.apply_token(emu.instance_id, ["a"], "R", in_an_hour_ms(), deadline=0.4 + left)
    assert isinstance(caught.value.__cause__, CloudThrottled)
    assert client.stats()["attempts"]["ApplyToken"] == attempts
    assert governor.stats()["refused"] == {}


async def test_latency_beyond_the_deadline(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    client = client_of(session, emulator)
    await set_fault(session, emulator, action="QueryToken", latencyMs=1000)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.query_token(emulator.instance_id, "x", deadline=0.4)
    assert isinstance(caught.value.__cause__, TimeoutError)
    # The one attempt had the whole deadline; none was started after it ran out.
    assert client.stats()["attempts"]["QueryToken"] == 1


async def test_an_outage_opens_the_circuit(
    session: aiohttp.ClientSession, make_emulator: MakeEmulator
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    circuit = CircuitBreaker(failure_threshold=3, reset_timeout=0.3, clock=clock)
    client = client_of(session, emu, circuit=circuit, clock=clock)
    await set_fault(session, emu, outage=True)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.query_token(emu.instance_id, "x")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert circuit.state == "open"
    with pytest.raises(UpstreamUnavailable, match="circuit is open"):
        await client.query_token(emu.instance_id, "x")
    assert (await emulator_stats(session, emu))["calls"]["QueryToken"] == 3, "not sent"
    await set_fault(session, emu, clear=True)
    clock.advance(0.3)
    assert circuit.state == "half_open"
    assert not await client.query_token(emu.instance_id, "x")
    assert circuit.state == "closed"


async def revoke_many(
    session: aiohttp.ClientSession, emu: EmulatorHandle, count: int, limit: float
) -> dict[str, Any]:
    """Revoke `count` tokens at once through a governor at `limit`/s; the emulator's stats."""
    governor = QuotaGovernor({"RevokeToken": limit})
    client = client_of(session, emu, governor=governor, default_deadline=count / limit * 2 + 5)
    tokens = [
        emu.state.issue_token(emu.instance_id, "R", ("a/b",), in_an_hour_ms()) for _ in range(count)
    ]
    await asyncio.gather(*(client.revoke_token(emu.instance_id, t) for t in tokens))
    assert not any(emu.state.token_valid(t) for t in tokens)
    return await emulator_stats(session, emu)


async def test_a_thousand_concurrent_revocations_stay_under_the_limit(
    session: aiohttp.ClientSession, make_emulator: MakeEmulator
) -> None:
    # At the real 5/s this would take 200 s; the same code at 200/s takes about 5 s.
    emu = await make_emulator(qps={**DEFAULT_QPS, "RevokeToken": 200})
    stats = await revoke_many(session, emu, 1000, 200)
    assert stats["calls"]["RevokeToken"] == 1000, "no call was throttled and retried"
    assert stats["success"]["RevokeToken"] == 1000
    assert stats["maxPerSecond"]["RevokeToken"] <= 200
    assert stats["account"]["maxPerSecond"] <= 300


async def test_concurrent_revocations_at_the_default_five_per_second(
    session: aiohttp.ClientSession, emulator: EmulatorHandle
) -> None:
    stats = await revoke_many(session, emulator, 30, 5)
    assert stats["calls"]["RevokeToken"] == 30
    assert stats["maxPerSecond"]["RevokeToken"] <= 5
    assert "RevokeTokenOverflow" not in stats["errors"]
