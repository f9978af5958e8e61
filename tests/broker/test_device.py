"""The reference device (authserver.device) lives through several token lifetimes."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from authserver import background
from authserver.clock import ManualClock
from authserver.device import DeviceConfig, DeviceStopped, ReferenceDevice
from authserver.emulator.mqtt_auth import sign_client_id
from tests.admin.conftest import admin_headers
from tests.broker.conftest import CHAT_POLICY, MakeDevice, broker_of
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator
from tests.fixtures.gateway import MakeGateway, make_jwt
from tests.helpers import eventually


class GatedClock:
    """The shared manual time, but each sleep waits until the test lets it pass."""

    def __init__(self, shared: ManualClock) -> None:
        self.shared = shared
        self.sleepers: asyncio.Queue[tuple[float, asyncio.Event, asyncio.Task[Any] | None]] = (
            asyncio.Queue()
        )

    def time(self) -> float:
        return self.shared.time()

    def monotonic(self) -> float:
        return self.shared.monotonic()

    async def sleep(self, seconds: float) -> None:
        gate = asyncio.Event()
        await self.sleepers.put((seconds, gate, asyncio.current_task()))
        await gate.wait()

    async def let_pass(self) -> float:
        """Wait for the device's next live sleep, move time by it, and let the device go on."""
        while True:
            seconds, gate, sleeper = await asyncio.wait_for(self.sleepers.get(), 10)
            # A sleep whose task is being cancelled (the refresh wait of a connection that was
            # just cut off) is skipped: give the device's loop the turns its cancel and gather
            # take before judging, so the next live sleep is the one that follows them.
            for _ in range(50):
                if sleeper is None or sleeper.done():
                    break
                await asyncio.sleep(0)
            if sleeper is None or not sleeper.done():
                break
        self.shared.advance(seconds)
        gate.set()
        return seconds


async def signature_publisher(emulator: EmulatorHandle, device: MakeDevice) -> Any:
    """A paho client in Signature mode: it grants everything and never expires."""
    publisher = device("GID_test@@@publisher")
    username = f"Signature|{emulator.access_key_id}|{emulator.instance_id}"
    password = sign_client_id(emulator.access_key_secret, publisher.client_id)
    assert await publisher.connect(broker_of(emulator).port, username, password) == 0
    return publisher


async def test_the_device_keeps_its_subscription_for_several_token_lifetimes(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    shared = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(mqtt_port=0, clock=shared, mqtt_check_interval=0.05)
    gateway = await make_gateway(emulator, policy_file=CHAT_POLICY, clock=shared)
    clock = GatedClock(shared)
    received: list[tuple[str, bytes]] = []
    config = DeviceConfig(
        gateway_url=str(gateway.make_url("/")),
        jwt=make_jwt("alice", now=shared.time(), lifetime=30 * 86400),
        broker_host="127.0.0.1",
        broker_port=broker_of(emulator).port,
        client_id="GID_test@@@alice",
        subscriptions=("devices/alice/#",),
    )
    async with aiohttp.ClientSession() as http:
        alice = ReferenceDevice(
            config,
            http,
            clock=clock,
            rng=random.Random(7),
            on_message=lambda t, p: received.append((t, p)),
        )
        life = asyncio.create_task(alice.run())
        try:
            await asyncio.wait_for(alice.online.wait(), 10)
            publisher = await signature_publisher(emulator, device)
            started = shared.time()
            for lifetime in range(1, 4):
                # The device sleeps until refreshAt (plus jitter), refreshes and uploads.
                await clock.let_pass()
                await eventually(lambda n=lifetime: alice.stats.refreshes == n)
                # The next sleep reaches past the replaced tokens' expiry; the broker's
                # sweep sees it, and the subscription still delivers.
                await publisher.acked(f"devices/alice/{lifetime}", b"still subscribed")
                await eventually(lambda n=lifetime: len(received) == n)
            assert shared.time() - started > 2 * 3600  # three refreshes, over two lifetimes
            assert [t for t, _ in received] == [f"devices/alice/{n}" for n in (1, 2, 3)]
            assert alice.stats.connects == 1
            assert alice.stats.notices == []
            assert alice.stats.uploads == 6  # an R and a W token each time
        finally:
            await background.stop([life])


async def test_the_device_reconnects_after_a_revocation_and_stops_on_403(
    make_emulator: MakeEmulator,
    make_gateway: MakeGateway,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = await make_emulator(mqtt_port=0, mqtt_check_interval=0.05)
    policy = tmp_path / "policy.yaml"
    policy.write_text(CHAT_POLICY.read_text())
    gateway = await make_gateway(emulator, policy_file=policy)
    shared = ManualClock(start=time.time())
    clock = GatedClock(shared)
    config = DeviceConfig(
        gateway_url=str(gateway.make_url("/")),
        jwt=make_jwt("alice"),
        broker_host="127.0.0.1",
        broker_port=broker_of(emulator).port,
        client_id="GID_test@@@alice",
        subscriptions=("devices/alice/#",),
    )
    async with aiohttp.ClientSession() as http:
        alice = ReferenceDevice(config, http, clock=clock, rng=random.Random(3))
        life = asyncio.create_task(alice.run())
        try:
            await asyncio.wait_for(alice.online.wait(), 10)
            resp = await gateway.post(
                "/v1/admin/revoke",
                json={"subject": "alice", "blockIssuedBefore": False},
                headers=admin_headers(),
            )
            assert resp.status == 202, await resp.text()
            await eventually(lambda: [n["code"] for n in alice.stats.notices] == [3])
            # Cut off: it backs off (a jittered sleep), then reconnects with new credentials.
            backoff = await clock.let_pass()
            assert 0 <= backoff <= config.backoff_initial
            await eventually(lambda: alice.stats.connects == 2)
            await asyncio.wait_for(alice.online.wait(), 10)
        finally:
            await background.stop([life])

        # A subject the policy grants nothing: 403, and the device stops for good.
        nobody = ReferenceDevice(
            DeviceConfig(**{**config.__dict__, "jwt": make_jwt(None)}), http, clock=clock
        )
        with pytest.raises(DeviceStopped) as stopped:
            await asyncio.wait_for(nobody.run(), 10)
        assert stopped.value.status in (401, 403)
    # Even with DEBUG on, no token reaches the logs (amqtt's client logs its URI there).
    assert emulator.state.tokens
    for token in emulator.state.tokens:
        assert token not in caplog.text
        assert quote(token, safe="") not in caplog.text


async def test_the_device_command_prints_what_it_receives(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway, device: MakeDevice
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=CHAT_POLICY)
    env = {**os.environ, "DEVICE_JWT": make_jwt("alice"), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authserver", "device",
        "--gateway", str(gateway.make_url("")).rstrip("/"),
        "--broker", f"127.0.0.1:{broker_of(mqtt_emulator).port}",
        "--client-id", "GID_test@@@cli", "--subscribe", "devices/alice/#",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.decode().strip() == "device GID_test@@@cli: connected"
        await eventually(lambda: "devices/alice/#" in broker_of(mqtt_emulator).subscriptions)
        publisher = await signature_publisher(mqtt_emulator, device)
        await publisher.acked("devices/alice/door", b"open")
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.decode().strip() == "devices/alice/door open"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
