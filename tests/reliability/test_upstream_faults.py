"""The upstream fails (errors, latency, throttling, outage): answers in time, quota respected."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient

from authserver import appkeys
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually


async def set_fault(client: TestClient[Any, Any], emulator: EmulatorHandle, **fault: Any) -> None:
    """POST /_emulator/faults."""
    async with client.session.post(f"{emulator.url}/_emulator/faults", json=fault) as resp:
        assert resp.status == 200, await resp.text()


async def timed(client: TestClient[Any, Any], subject: str) -> tuple[int, float, dict[str, Any]]:
    """POST /v1/token for a subject: status, seconds taken, body."""
    started = time.monotonic()
    async with client.post("/v1/token", headers=bearer(make_jwt(subject))) as resp:
        body = await resp.json()
        if resp.status != 200:
            assert resp.content_type == "application/problem+json"
        if resp.status in (429, 503):  # a 502 passes the vendor's own error on as it was
            assert int(resp.headers.get("Retry-After", "0")) >= 1, (resp.status, body)
        return resp.status, time.monotonic() - started, body


async def many(client: TestClient[Any, Any], subjects: list[str]) -> list[tuple[int, float, Any]]:
    """Every subject at once."""
    return list(await asyncio.gather(*(timed(client, s) for s in subjects)))


async def test_twenty_percent_internal_errors_are_retried_within_quota(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    quota = 30.0
    emulator = await make_emulator(qps={"ApplyToken": quota})
    client = await make_gateway(emulator, request_deadline=3.0, quota={"ApplyToken": quota})
    await set_fault(client, emulator, action="ApplyToken", errorCode="InternalError", rate=0.2)

    answers = await many(client, [f"flaky-{n}" for n in range(25)])

    statuses = Counter(status for status, _t, _b in answers)
    assert statuses[200] >= 22, statuses  # four attempts each: a failure is 0.2**4 unlikely
    assert set(statuses) <= {200, 502, 503}
    stats = emulator.state.stats()
    assert stats["calls"]["ApplyToken"] <= 25 * 4, "at most four attempts a request"
    print(f"\n20% InternalError: {dict(statuses)}, upstream {stats['errors']}, "
          f"max {stats['maxPerSecond']['ApplyToken']}/s")  # fmt: skip
    assert stats["errors"].get("InternalError", 0) > 0  # the fault was felt, and retried
    assert stats["maxPerSecond"]["ApplyToken"] <= quota  # retries included
    assert stats["errors"].get("ApplyTokenOverflow", 0) == 0


async def test_two_seconds_of_latency_meet_a_one_second_deadline(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, request_deadline=1.0)
    assert (await timed(client, "cached"))[0] == 200
    await set_fault(client, emulator, action="ApplyToken", latencyMs=2000)

    answers = await many(client, [f"slow-{n}" for n in range(4)])
    cached = await timed(client, "cached")

    assert {status for status, _t, _b in answers} == {503}
    # One attempt per token (two a request), cut at the deadline: no retry after it.
    assert emulator.state.stats()["calls"]["ApplyToken"] == 2 + 4 * 2
    # The cached answer did not wait for the slow upstream.
    assert cached[0] == 200
    assert client.app[appkeys.CLOUD].stats()["attempts"]["ApplyToken"] == 2 + 4 * 2


async def test_throttling_never_pushes_the_upstream_over_its_quota(
    make_emulator: MakeEmulator, make_gateway: MakeGateway
) -> None:
    quota = 10.0
    emulator = await make_emulator(qps={"ApplyToken": quota})
    client = await make_gateway(emulator, request_deadline=2.0, quota={"ApplyToken": quota})
    await set_fault(client, emulator, action="ApplyToken", errorCode="ApplyTokenOverflow")

    answers = await many(client, [f"throttled-{n}" for n in range(12)])

    assert {status for status, _t, _b in answers} == {503}
    codes = {body["code"] for _s, _t, body in answers}
    print(f"\nthrottled: {Counter(codes)}, slowest {max(t for _s, t, _b in answers):.2f} s, "
          f"upstream {emulator.state.stats()['calls']}")  # fmt: skip
    assert codes <= {"upstream_throttled", "upstream_unavailable"}
    assert emulator.state.stats()["maxPerSecond"]["ApplyToken"] <= quota


async def test_a_full_outage_opens_the_circuit_and_recovery_closes_it(
    emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    client = await make_gateway(emulator, request_deadline=1.0)
    circuit = client.app[appkeys.CLOUD].circuit
    circuit.reset_timeout = 1.0  # 10 s in production; the behaviour is the same
    cached_before = (await timed(client, "cached"))[2]["password"]
    await set_fault(client, emulator, outage=True)

    answers = [await timed(client, f"dark-{n}") for n in range(4)]
    assert {status for status, _t, _b in answers} == {503}
    assert circuit.state == "open"
    async with client.get("/readyz") as resp:  # the upstream is every replica's: still ready
        assert resp.status == 200
        assert (await resp.json())["checks"]["upstream"] == "circuit open"
    # While open, a miss is answered without trying the upstream; cached tokens are served.
    sent = emulator.state.stats()["calls"]["ApplyToken"]
    status, _took, body = await timed(client, "dark-fast")
    assert (status, body["code"]) == (503, "upstream_unavailable")
    assert emulator.state.stats()["calls"]["ApplyToken"] == sent
    status, _took, body = await timed(client, "cached")
    assert (status, body["password"]) == (200, cached_before)

    await set_fault(client, emulator, clear=True)
    await eventually(lambda: circuit.state == "half_open")
    assert (await timed(client, "back"))[0] == 200  # the probe goes through and closes it
    assert circuit.state == "closed"
    async with client.get("/readyz") as resp:
        assert resp.status == 200
