"""A reference device: MQTT credentials from the gateway, a session that outlives its tokens.

What a well-behaved device does (README, "Connect a device"):

- asks `POST /v1/token` with its app JWT and connects with the answer;
- at `refreshAt` (plus a little jitter, so a fleet does not ask at once) asks again and
  publishes each new token to `$SYS/uploadToken` at QoS 1, waiting for each PUBACK, so the
  session and its subscriptions go on;
- after `$SYS/tokenInvalidNotice`, a lost connection or a refused CONNACK, fetches fresh
  credentials and reconnects with exponential backoff and full jitter;
- stops (DeviceStopped) when the gateway answers 401 or 403: the JWT or the policy says no,
  and asking again will not change that.

It uses amqtt's asyncio client (a dependency already, for the emulator's broker) and the
injected clock for every wait, so tests can run it through several token lifetimes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from amqtt.client import MQTTClient
from amqtt.errors import ClientError, ConnectError
from amqtt.mqtt.constants import QOS_1

from authserver import background
from authserver.clock import Clock, SystemClock
from authserver.logs import quiet_amqtt_debug

log = logging.getLogger(__name__)

UPLOAD_TOPIC = "$SYS/uploadToken"
INVALID_NOTICE_TOPIC = "$SYS/tokenInvalidNotice"
EXPIRE_NOTICE_TOPIC = "$SYS/tokenExpireNotice"


class DeviceStopped(Exception):
    """The gateway refused the device for good (401 or 403)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"the gateway answered {status} {code}")
        self.status = status
        self.code = code


class GatewayUnavailable(Exception):
    """The gateway could not answer now (5xx, 429, a network error): try again later."""


@dataclass(frozen=True)
class DeviceConfig:
    """Where the gateway and the broker are, who the device is, what it subscribes to."""

    gateway_url: str
    jwt: str
    broker_host: str
    broker_port: int
    client_id: str
    subscriptions: tuple[str, ...] = ()
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    refresh_jitter: float = 30.0


@dataclass
class DeviceStats:
    """What happened to the device, for tests and the CLI."""

    connects: int = 0
    refused: int = 0
    disconnects: int = 0
    refreshes: int = 0
    uploads: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)
    expire_notices: int = 0


class ReferenceDevice:
    """One device's life: fetch credentials, connect, subscribe, refresh, reconnect."""

    def __init__(
        self,
        config: DeviceConfig,
        http: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """`http` is the caller's long-lived session; `on_message` gets every app message."""
        self.config = config
        self.http = http
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.on_message = on_message
        self.stats = DeviceStats()
        self.online = asyncio.Event()
        quiet_amqtt_debug()

    async def run(self) -> None:
        """Live until cancelled; DeviceStopped when the gateway refuses the device."""
        failures = 0
        while True:
            try:
                credentials = await self.fetch()
                await self._session(credentials)
                failures = 0
            except (ConnectError, ClientError, GatewayUnavailable, OSError, TimeoutError) as err:
                failures += 1
                if isinstance(err, ConnectError):
                    self.stats.refused += 1
                log.info("device %s: %s; retrying", self.config.client_id, err)
            await self.clock.sleep(self.backoff(failures))

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**failures)]."""
        cap = min(self.config.backoff_max, self.config.backoff_initial * 2**failures)
        return self.rng.uniform(0, cap)

    async def fetch(self) -> dict[str, Any]:
        """`POST /v1/token`: the MQTT credentials, DeviceStopped or GatewayUnavailable."""
        url = f"{self.config.gateway_url.rstrip('/')}/v1/token"
        headers = {"Authorization": f"Bearer {self.config.jwt}"}
        try:
            async with self.http.post(url, headers=headers) as resp:
                if resp.status in (401, 403):
                    problem = await resp.json(content_type=None)
                    raise DeviceStopped(resp.status, str(problem.get("code", "")))
                if resp.status != 200:
                    raise GatewayUnavailable(f"the gateway answered {resp.status}")
                answer: dict[str, Any] = await resp.json()
                return answer
        except (aiohttp.ClientError, TimeoutError) as err:
            raise GatewayUnavailable(str(err)) from err

    def _uri(self, credentials: dict[str, Any]) -> str:
        user = quote(credentials["username"], safe="")
        password = quote(credentials["password"], safe="")
        return f"mqtt://{user}:{password}@{self.config.broker_host}:{self.config.broker_port}"

    async def _session(self, credentials: dict[str, Any]) -> None:
        client = MQTTClient(client_id=self.config.client_id, config={"auto_reconnect": False})
        await client.connect(self._uri(credentials))
        self.stats.connects += 1
        try:
            if self.config.subscriptions:
                await client.subscribe([(topic, QOS_1) for topic in self.config.subscriptions])
            self.online.set()
            refresher = asyncio.create_task(self._refresh(client, credentials))
            receiver = asyncio.create_task(self._receive(client))
            try:
                done, _ = await asyncio.wait(
                    {refresher, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # DeviceStopped and the like propagate
            finally:
                # Not cut short when this device is stopped the same way: its tasks would
                # be left running, its MQTT connection open.
                with background.finishing():
                    await background.stop([refresher, receiver])
        finally:
            self.online.clear()
            self.stats.disconnects += 1
            with contextlib.suppress(Exception), background.finishing():
                await client.disconnect()

    async def _receive(self, client: MQTTClient) -> None:
        while True:
            message = await client.deliver_message()
            if message is None:
                return  # the broker closed the connection
            payload = bytes(message.data or b"")
            if message.topic == INVALID_NOTICE_TOPIC:
                with contextlib.suppress(ValueError):
                    self.stats.notices.append(json.loads(payload))
            elif message.topic == EXPIRE_NOTICE_TOPIC:
                self.stats.expire_notices += 1
            elif self.on_message is not None:
                self.on_message(message.topic, payload)

    async def _refresh(self, client: MQTTClient, credentials: dict[str, Any]) -> None:
        refresh_at_ms = int(credentials["refreshAt"])
        while True:
            wait = max(0.0, refresh_at_ms / 1000 - self.clock.time())
            await self.clock.sleep(wait + self.rng.uniform(0.001, self.config.refresh_jitter))
            try:
                fresh = await self.fetch()
            except GatewayUnavailable as err:
                log.info("device %s: refresh failed (%s)", self.config.client_id, err)
                await self.clock.sleep(self.backoff(1))
                continue
            for token in fresh["tokens"]:
                document = {"token": token["token"], "type": token["type"]}
                # QoS 1: publish() returns once the PUBACK came, and the broker swaps the
                # token in before it acknowledges.
                await client.publish(UPLOAD_TOPIC, json.dumps(document).encode(), qos=QOS_1)
                self.stats.uploads += 1
            self.stats.refreshes += 1
            refresh_at_ms = max(int(fresh["refreshAt"]), refresh_at_ms + 1000)


def device_main(argv: list[str]) -> int:
    """`authserver device`: run one reference device, print what it receives; Ctrl-C stops."""
    parser = argparse.ArgumentParser(
        prog="authserver device",
        description="A reference MQTT device: credentials from the gateway (app JWT in "
        "DEVICE_JWT), one session kept across token lifetimes through $SYS/uploadToken.",
    )
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    parser.add_argument("--client-id", required=True, help="GID_group@@@device")
    parser.add_argument(
        "--subscribe", action="append", default=[], help="a topic filter; repeat for more"
    )
    args = parser.parse_args(argv)
    device_jwt = os.environ.get("DEVICE_JWT", "")
    if not device_jwt:
        parser.error("set DEVICE_JWT to the device's app JWT (not a flag: ps shows flags)")
    host, _, port = args.broker.rpartition(":")
    config = DeviceConfig(
        gateway_url=args.gateway,
        jwt=device_jwt,
        broker_host=host or "127.0.0.1",
        broker_port=int(port),
        client_id=args.client_id,
        subscriptions=tuple(args.subscribe),
    )

    def show(topic: str, payload: bytes) -> None:
        print(topic, payload.decode(errors="replace"), flush=True)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            device = ReferenceDevice(config, http, on_message=show)
            life = asyncio.create_task(device.run())
            online = asyncio.create_task(device.online.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({online, life, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if device.online.is_set():
                print(f"device {config.client_id}: connected", flush=True)
            await asyncio.wait({life, stopping}, return_when=asyncio.FIRST_COMPLETED)
            await background.stop([life, online, stopping])
        ended = life.exception() if life.done() and not life.cancelled() else None
        if isinstance(ended, DeviceStopped):
            print(f"device {config.client_id}: {ended}; stopped", flush=True)
            return 1
        return 0

    return asyncio.run(main())
