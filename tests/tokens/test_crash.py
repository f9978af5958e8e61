"""Nothing lost: SIGKILL a gateway while it drains revocations or mints a token."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp

from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import bearer, make_jwt
from tests.helpers import eventually
from tests.ops.serving import serve


async def test_sigkill_while_draining_loses_no_revocation(
    emulator: EmulatorHandle, redis_url: str
) -> None:
    tokens = [
        emulator.state.issue_token(emulator.instance_id, "R", ("a/#",), 1_900_000_000_000)
        for _ in range(30)
    ]
    env = {"AUTHSERVER_REDIS_URL": redis_url, "AUTHSERVER_REVOCATION_CLAIM_IDLE": "1"}
    async with aiohttp.ClientSession() as session:
        async with serve(emulator, **env) as first:
            await first.wait_ready(session)
            for token in tokens:
                async with session.post(
                    first.url + "/v1/admin/revoke", json={"token": token}, headers=admin_headers()
                ) as resp:
                    assert resp.status == 202, await resp.text()
            # Kill it mid-drain: RevokeToken runs at 5/s, so most jobs are still pending.
            await eventually(
                lambda: sum(emulator.state.is_revoked(t) for t in tokens) >= 3,
            )
            first.process.send_signal(signal.SIGKILL)
            await first.process.wait()
        done_before = sum(emulator.state.is_revoked(t) for t in tokens)
        assert done_before < len(tokens)

        async with serve(emulator, **env) as second:
            await second.wait_ready(session)
            await eventually(lambda: all(emulator.state.is_revoked(t) for t in tokens), within=30)
            async with session.get(
                second.url + "/v1/admin/revocations", headers=admin_headers()
            ) as resp:
                status = await resp.json()
    assert status["mode"] == "redis-stream"
    assert emulator.state.stats()["maxPerSecond"]["RevokeToken"] <= 5


async def test_sigkill_during_issuance_leaves_no_stuck_lock(
    emulator: EmulatorHandle, redis_url: str
) -> None:
    env = {"AUTHSERVER_REDIS_URL": redis_url, "AUTHSERVER_REQUEST_DEADLINE": "2"}
    jwt = make_jwt("kim")
    async with (
        aiohttp.ClientSession() as session,
        serve(emulator, **env) as first,
        serve(emulator, **env) as second,
    ):
        await first.wait_ready(session)
        await second.wait_ready(session)
        async with session.post(
            f"{emulator.url}/_emulator/faults", json={"action": "ApplyToken", "latencyMs": 1500}
        ) as resp:
            assert resp.status == 200
        pending = asyncio.create_task(session.post(first.url + "/v1/token", headers=bearer(jwt)))
        await eventually(
            lambda: emulator.state.stats()["calls"].get("ApplyToken", 0) >= 1,
        )
        first.process.send_signal(signal.SIGKILL)  # dies holding the issuance lock
        await first.process.wait()
        with contextlib.suppress(aiohttp.ClientError):
            await pending
        async with session.post(f"{emulator.url}/_emulator/faults", json={"clear": True}):
            pass
        # The lock expires (deadline + 2 s) and the next request gets its token.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            async with session.post(second.url + "/v1/token", headers=bearer(jwt)) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    break
                assert resp.status == 503, await resp.text()
                assert resp.headers["Retry-After"]
            assert loop.time() < deadline, "issuance lock never expired"
            await asyncio.sleep(0.2)
    assert body["username"].startswith("Token|")
