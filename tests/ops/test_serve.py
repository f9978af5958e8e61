"""`authserver serve` for real: SIGTERM under load loses no accepted request, SIGHUP reloads,
`--workers 2` shares one port."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authserver.emulator.state import Fault
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import EXAMPLE_POLICY, bearer, make_jwt
from tests.ops.serving import serve

SHUTDOWN_DELAY = 1.5
# What a real ingress takes to stop routing to a pod whose readiness failed.
INGRESS_LAG = 0.4


async def test_sigterm_under_load_loses_no_accepted_request(emulator: EmulatorHandle) -> None:
    # Every cache miss spends 300 ms upstream, so requests are in flight at every moment.
    emulator.state.faults["ApplyToken"] = Fault(latency_ms=300)
    subjects = itertools.count()
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    closing_answers: list[str] = []
    answered_at: list[float] = []  # when each 200 came back
    readiness: list[tuple[float, int, Any]] = []
    ingress_stopped = asyncio.Event()
    sigterm_at = 0.0

    async with (
        serve(emulator, AUTHSERVER_SHUTDOWN_DELAY=str(SHUTDOWN_DELAY)) as gw,
        aiohttp.ClientSession() as session,
    ):
        await gw.wait_ready(session)

        async def device() -> None:
            while not ingress_stopped.is_set():
                subject = f"dev-{next(subjects) % 40}-{time.monotonic_ns() % 3}"
                try:
                    async with session.post(
                        gw.url + "/v1/token", headers=bearer(make_jwt(subject))
                    ) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                        if resp.status == 200:
                            answered_at.append(time.monotonic())
                        if sigterm_at and resp.headers.get("Connection", "").lower() == "close":
                            closing_answers.append(subject)
                except aiohttp.ClientError as err:
                    errors.append(f"{type(err).__name__}: {err}")

        async def ingress() -> None:
            """Stop routing new requests a little after readiness fails, like an ingress."""
            while True:
                try:
                    async with session.get(gw.url + "/readyz") as resp:
                        body = await resp.json()
                        readiness.append((time.monotonic(), resp.status, body))
                        if resp.status == 503:
                            await asyncio.sleep(INGRESS_LAG)
                            ingress_stopped.set()
                            return
                except aiohttp.ClientError as err:
                    errors.append(f"readyz {type(err).__name__}: {err}")
                    return
                await asyncio.sleep(0.05)

        load = [asyncio.create_task(device()) for _ in range(24)]
        watcher = asyncio.create_task(ingress())
        await asyncio.sleep(1.0)
        before = sum(statuses.values())
        assert before > 0
        sigterm_at = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(watcher, 5)
        await asyncio.wait_for(asyncio.gather(*load), 5)

        code = await asyncio.wait_for(gw.process.wait(), 10 + SHUTDOWN_DELAY)
        took = time.monotonic() - sigterm_at
        # After exit, nothing listens: a new connection is refused, it was never accepted.
        with contextlib.suppress(aiohttp.ClientConnectorError):
            async with session.get(gw.url + "/healthz") as resp:
                raise AssertionError(f"still answering after exit: {resp.status}")

    assert errors == []
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > before  # requests kept being served while draining
    assert closing_answers  # draining answers told clients to drop the connection
    failing = [(t, body) for t, status, body in readiness if status == 503]
    assert failing
    first_503 = failing[0][0]
    # Readiness turned false while the gateway still served: answers came after the first 503
    # (the ingress stops routing only a little after it), not only before it.
    assert any(at > first_503 for at in answered_at)
    assert failing[0][1]["checks"]["shutdown"] == "draining"
    assert code == 0
    assert took >= SHUTDOWN_DELAY  # it kept serving for the delay (the wait above bounds a hang)
    records = gw.records()
    # A normal shutdown is INFO: WARNING is kept for what an operator should look at.
    for prefix in ("draining: readiness", "shutting down after", "stopped (pid"):
        [level] = [r["level"] for r in records if r["message"].startswith(prefix)]
        assert level == "INFO", prefix


async def test_sighup_reloads_the_policy(emulator: EmulatorHandle, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    jwt = make_jwt("bob")
    async with (
        serve(
            emulator,
            AUTHSERVER_POLICY_FILE=str(policy),
            AUTHSERVER_POLICY_POLL_INTERVAL="3600",
            AUTHSERVER_SHUTDOWN_DELAY="0",
        ) as gw,
        aiohttp.ClientSession() as session,
    ):
        await gw.wait_ready(session)

        async def read_grants() -> list[str]:
            async with session.post(gw.url + "/v1/token", headers=bearer(jwt)) as resp:
                assert resp.status == 200
                body = await resp.json()
            return [r for t in body["tokens"] if t["type"] == "R" for r in t["resources"]]

        assert "alerts/#" not in await read_grants()
        policy.write_text(
            EXAMPLE_POLICY.read_text()
            + "\n  bob:\n    - topics: ['alerts/#']\n      actions: [R]\n"
        )
        gw.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "alerts/#" not in await read_grants():
            assert time.monotonic() < deadline, "\n".join(gw.lines)
            await asyncio.sleep(0.05)
        gw.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.process.wait(), 10) == 0
    assert any("SIGHUP" in r["message"] for r in gw.records())


def _listeners(port: int) -> int:
    """How many sockets LISTEN on 127.0.0.1:port (SO_REUSEPORT lets several)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_and_stop_together(
    emulator: EmulatorHandle, redis_url: str
) -> None:
    pids: list[int] = []
    try:
        async with (
            serve(
                emulator,
                "--workers",
                "2",
                AUTHSERVER_REDIS_URL=redis_url,
                AUTHSERVER_SHUTDOWN_DELAY="0",
            ) as gw,
            aiohttp.ClientSession() as session,
        ):
            await gw.wait_ready(session)
            started = [r for r in gw.records() if "started 2 workers" in r["message"]]
            assert started, gw.lines
            pids = [int(p) for p in started[0]["message"].rsplit("pids ", 1)[1].split()]
            assert len(pids) == 2
            assert all(_alive(pid) for pid in pids)
            deadline = time.monotonic() + 10
            while _listeners(gw.port) < 2:
                assert time.monotonic() < deadline, "both workers never listened"
                await asyncio.sleep(0.05)
            listening = [r for r in gw.records() if r["message"].startswith("listening on")]
            assert len(listening) >= 1

            async def fetch(i: int) -> int:
                async with (
                    aiohttp.ClientSession() as fresh,  # a new connection each time
                    fresh.post(gw.url + "/v1/token", headers=bearer(make_jwt(f"w{i % 5}"))) as r,
                ):
                    return r.status

            results = await asyncio.gather(*(fetch(i) for i in range(40)))
            assert set(results) == {200}
            # The workers share Redis: 5 subjects, 2 tokens each, minted once in all.
            assert emulator.state.stats()["success"]["ApplyToken"] == 10

            gw.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(gw.process.wait(), 15) == 0
            assert not any(_alive(pid) for pid in pids)
            assert _listeners(gw.port) == 0
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_without_redis_workers_are_warned_about(emulator: EmulatorHandle) -> None:
    async with serve(emulator, "--workers", "2", AUTHSERVER_SHUTDOWN_DELAY="0") as gw:
        deadline = time.monotonic() + 10
        while not any("without AUTHSERVER_REDIS_URL" in r["message"] for r in gw.records()):
            assert time.monotonic() < deadline, gw.lines
            await asyncio.sleep(0.05)
        gw.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.process.wait(), 15) == 0


@pytest.mark.parametrize(("setting", "loop"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_serve_runs_on_uvloop_unless_told_otherwise(
    emulator: EmulatorHandle, setting: str | None, loop: str
) -> None:
    # uvloop is a dependency (but on Windows): "auto" takes it on Linux.
    env = {"AUTHSERVER_SHUTDOWN_DELAY": "0"}
    if setting is not None:
        env["AUTHSERVER_EVENT_LOOP"] = setting
    async with serve(emulator, **env) as gw, aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
        async with session.post(gw.url + "/v1/token", headers=bearer(make_jwt("bob"))) as resp:
            assert resp.status == 200
        gw.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gw.process.wait(), 10) == 0
    [listening] = [r for r in gw.records() if r["message"].startswith("listening on")]
    assert f"{loop} event loop" in listening["message"]
