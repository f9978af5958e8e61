"""QPS limits, statistics, fault injection, reset, and 100,000 tokens in memory."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import aiohttp
import pytest

from authserver.clock import ManualClock
from tests.emulator.conftest import Caller
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator


def revoke_params(emu: EmulatorHandle) -> dict[str, str]:
    return {"InstanceId": emu.instance_id, "Token": "t"}


async def test_qps_overflow_and_stats(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock)
    caller = Caller(http, emu)
    answers = [await caller.v1("RevokeToken", revoke_params(emu)) for _ in range(7)]
    assert [a.status for a in answers] == [200] * 5 + [400] * 2
    assert answers[-1].code == "RevokeTokenOverflow"
    clock.advance(0.5)
    assert (await caller.v1("RevokeToken", revoke_params(emu))).code == "RevokeTokenOverflow"
    clock.advance(0.6)
    assert (await caller.v1("RevokeToken", revoke_params(emu))).status == 200

    async with http.get(f"{emu.url}/_emulator/stats") as resp:
        stats = await resp.json()
    assert stats == emu.state.stats()
    assert stats["calls"]["RevokeToken"] == 9
    assert stats["success"]["RevokeToken"] == 6
    assert stats["errors"] == {"RevokeTokenOverflow": 3}
    assert stats["errorsByAction"]["RevokeToken"] == {"RevokeTokenOverflow": 3}
    assert stats["maxPerSecond"]["RevokeToken"] == 8
    assert stats["account"]["calls"] == 9


@pytest.mark.parametrize(
    ("action", "code"),
    [
        ("ApplyToken", "ApplyTokenOverflow"),
        ("QueryToken", "QueryTokenOverflow"),
        ("QuerySessionByClientId", "Throttling.User"),
    ],
)
async def test_configured_limits(
    make_emulator: MakeEmulator, http: aiohttp.ClientSession, action: str, code: str
) -> None:
    clock = ManualClock()
    emu = await make_emulator(clock=clock, qps={action: 2})
    caller = Caller(http, emu)
    params = {
        "ApplyToken": {
            "Actions": "R",
            "ExpireTime": str(int(clock.time() * 1000) + 3_600_000),
            "InstanceId": emu.instance_id,
            "Resources": "a",
        },
        "QueryToken": revoke_params(emu),
        "QuerySessionByClientId": {"InstanceId": emu.instance_id, "ClientId": "GID_test@@@a"},
    }[action]
    answers = [await caller.v1(action, params) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 400]
    assert answers[-1].code == code


async def test_reset_zeroes_stats(
    caller: Caller, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    await caller.v1("RevokeToken", revoke_params(emulator))
    async with http.post(f"{emulator.url}/_emulator/reset") as resp:
        assert resp.status == 200
    assert emulator.state.stats()["calls"] == {}


async def set_fault(http: aiohttp.ClientSession, emu: EmulatorHandle, **fault: object) -> None:
    async with http.post(f"{emu.url}/_emulator/faults", json=fault) as resp:
        assert resp.status == 200, await resp.text()


async def test_fault_error_code(
    caller: Caller, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    await set_fault(http, emulator, action="QueryToken", errorCode="InternalError", rate=1.0)
    answer = await caller.v1("QueryToken", revoke_params(emulator))
    assert (answer.status, answer.code) == (500, "InternalError")
    other = await caller.v1("RevokeToken", revoke_params(emulator))
    assert other.status == 200, "a fault for one action leaves the others alone"
    await set_fault(http, emulator, action="*", errorCode="SystemOverflow", rate=0.0)
    await set_fault(http, emulator, clear=True)
    assert (await caller.v1("QueryToken", revoke_params(emulator))).status == 200
    assert emulator.state.stats()["errors"] == {"InternalError": 1}


async def test_fault_rate_is_partial(
    caller: Caller, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    emulator.state.rng.seed(7)
    await set_fault(http, emulator, action="*", errorCode="SystemOverflow", rate=0.5)
    statuses = [(await caller.v1("QueryToken", revoke_params(emulator))).status for _ in range(40)]
    assert 5 < statuses.count(500) < 35
    assert statuses.count(200) + statuses.count(500) == 40


async def test_fault_latency(
    caller: Caller, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    await set_fault(http, emulator, action="QueryToken", latencyMs=300)
    started = time.monotonic()
    answer = await caller.v1("QueryToken", revoke_params(emulator))
    assert answer.status == 200
    assert time.monotonic() - started >= 0.3


async def test_fault_outage_drops_the_connection(
    caller: Caller, emulator: EmulatorHandle, http: aiohttp.ClientSession
) -> None:
    await set_fault(http, emulator, action="*", outage=True)
    with pytest.raises(aiohttp.ClientError):
        await caller.v1("QueryToken", revoke_params(emulator))
    await set_fault(http, emulator, clear=True)
    assert (await caller.v1("QueryToken", revoke_params(emulator))).status == 200


async def test_concurrent_calls_counted_per_second(
    caller: Caller, emulator: EmulatorHandle
) -> None:
    answers = await asyncio.gather(
        *(caller.v1("QueryToken", revoke_params(emulator)) for _ in range(150))
    )
    statuses = [a.status for a in answers]
    assert statuses.count(200) == 100
    assert {a.code for a in answers if a.status != 200} == {"QueryTokenOverflow"}
    assert emulator.state.stats()["maxPerSecond"]["QueryToken"] == 150


def test_holds_100k_tokens() -> None:
    """100,000 tokens fit comfortably: measured with tracemalloc (about 47 MB on CPython 3.11)."""
    from authserver.clock import SystemClock
    from authserver.emulator.state import EmulatorState

    state = EmulatorState(
        access_keys={}, instance_ids=["i"], qps={}, clock=SystemClock(), timestamp_tolerance=900
    )
    expire = state.now_ms() + 3_600_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tokens = [
        state.issue_token("i", "R,W", (f"devices/{n}/#", f"up/{n}"), expire) for n in range(100_000)
    ]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"100k tokens: {used / 1e6:.1f} MB")
    assert used < 150e6
    assert all(state.token_valid(t, "i") for t in tokens[::100])
    assert state.stats()["tokens"]["live"] == 100_000
