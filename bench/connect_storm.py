"""Benchmark: a storm of devices connecting through the gateway and the emulator's broker.

Not a test. The emulator (OpenAPI and MQTT broker) runs as a subprocess, the gateway and the
devices in this process (two processes for the two cores). Every device at once: app JWT ->
`POST /v1/token` -> MQTT CONNECT with the answer -> CONNACK. Then every device subscribes to
its subject's tree and publishes `--messages` QoS 0 messages into it, which the broker fans
out to the subject's other devices. Reports:

- time until every device is connected (JWT -> credentials -> CONNACK), and percentiles;
- gateway requests per second during the storm;
- ApplyToken calls, which must equal the distinct token keys (two per subject: R and W);
- messages per second the broker routes (deliveries to subscribers).

Run from the repository root: `python bench/connect_storm.py [--devices 1000] [--subjects 100]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import jwt  # noqa: E402
from aiohttp import web  # noqa: E402
from amqtt.client import MQTTClient  # noqa: E402
from amqtt.mqtt.constants import QOS_0, QOS_1  # noqa: E402

from authserver.app import create_app  # noqa: E402
from authserver.cloud.credentials import Credentials  # noqa: E402
from authserver.identity import JWTSettings  # noqa: E402
from authserver.logs import quiet_amqtt_debug  # noqa: E402
from authserver.settings import Settings  # noqa: E402

KEY_ID, SECRET, INSTANCE = "LTAIstorm", "storm-secret", "post-cn-storm"
JWT_SECRET = "storm-jwt-secret-that-is-long-enough!"
JWT_ISSUER = "https://storm.example.test"
POLICY = """version: 1
defaults:
  ttlSeconds: 3600
everyone:
  - topics: ["devices/{sub}/#"]
    actions: [R, W]
  - topics: ["broadcast/#"]
    actions: [R]
"""


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str) -> None:
    """Until the emulator answers."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("the emulator did not start")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    """Run the storm; the figures."""
    quiet_amqtt_debug()
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # one warning per disconnect otherwise
    http_port, mqtt_port = free_port(), free_port()
    emulator = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
        [
            sys.executable, "-m", "authserver.emulator.cli", "--port", str(http_port),
            "--mqtt-port", str(mqtt_port), "--access-key-id", KEY_ID,
            "--access-key-secret", SECRET, "--instance-id", INSTANCE,
            "--qps-apply-token", str(args.apply_qps),
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    emulator_url = f"http://127.0.0.1:{http_port}"
    tmp = tempfile.TemporaryDirectory()
    policy = Path(tmp.name) / "policy.yaml"
    policy.write_text(POLICY)
    runner: web.AppRunner | None = None
    try:
        await wait_http(f"{emulator_url}/_emulator/stats")
        settings = Settings(
            credentials=Credentials(KEY_ID, SECRET),
            jwt=JWTSettings(algorithms=("HS256",), issuer=JWT_ISSUER, secret=JWT_SECRET),
            instance_id=INSTANCE,
            policy_file=policy,
            mqtt_endpoint=emulator_url,
            host="127.0.0.1",
            rate_limit_subject=0.0,
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        gateway_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", gateway_port).start()
        gateway = f"http://127.0.0.1:{gateway_port}/v1/token"
        now = int(time.time())
        subjects = [f"s{i}" for i in range(args.subjects)]
        jwts = {
            s: jwt.encode(
                {"sub": s, "iss": JWT_ISSUER, "iat": now, "exp": now + 3600}, JWT_SECRET, "HS256"
            )
            for s in subjects
        }
        devices = [(f"GID_storm@@@d{i}", subjects[i % len(subjects)]) for i in range(args.devices)]
        clients: dict[int, MQTTClient] = {}
        answered: list[float] = []
        connected: list[float] = []
        connector = aiohttp.TCPConnector(limit=args.http_concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            start = time.perf_counter()

            async def one(index: int, client_id: str, subject: str) -> None:
                headers = {"Authorization": f"Bearer {jwts[subject]}"}
                async with http.post(gateway, headers=headers) as resp:
                    resp.raise_for_status()
                    creds = await resp.json()
                answered.append(time.perf_counter() - start)
                client = MQTTClient(client_id=client_id, config={"auto_reconnect": False})
                user = quote(creds["username"], safe="")
                password = quote(creds["password"], safe="")
                await client.connect(f"mqtt://{user}:{password}@127.0.0.1:{mqtt_port}")
                connected.append(time.perf_counter() - start)
                clients[index] = client

            await asyncio.gather(*(one(i, c, s) for i, (c, s) in enumerate(devices)))
            all_connected = time.perf_counter() - start
            async with http.get(f"{emulator_url}/_emulator/stats") as resp:
                after_storm = await resp.json()

            # Routing: every device subscribes to its subject's tree, then publishes into it.
            await asyncio.gather(
                *(
                    clients[i].subscribe([(f"devices/{s}/#", QOS_1)])
                    for i, (_, s) in enumerate(devices)
                )
            )
            per_subject = args.devices / args.subjects
            expected = int(args.devices * args.messages * per_subject)
            before = after_storm["broker"]["messages"]["delivered"]
            route_start = time.perf_counter()
            await asyncio.gather(
                *(
                    clients[i].publish(f"devices/{s}/{cid}", b"x" * 64, qos=QOS_0)
                    for i, (cid, s) in enumerate(devices)
                    for _ in range(args.messages)
                )
            )
            delivered = 0
            while time.perf_counter() - route_start < args.route_timeout:
                async with http.get(f"{emulator_url}/_emulator/stats") as resp:
                    delivered = (await resp.json())["broker"]["messages"]["delivered"] - before
                if delivered >= expected:
                    break
                await asyncio.sleep(0.05)
            route_time = time.perf_counter() - route_start
            await asyncio.gather(
                *(c.disconnect() for c in clients.values()), return_exceptions=True
            )
        apply_calls = after_storm["success"].get("ApplyToken", 0)
        return {
            "devices": args.devices,
            "subjects": args.subjects,
            "all_connected_s": round(all_connected, 2),
            "connect_p50_s": round(statistics.median(connected), 3),
            "connect_p99_s": round(percentile(connected, 99), 3),
            "gateway_requests_per_s": round(len(answered) / max(answered), 1),
            "apply_token_calls": apply_calls,
            "distinct_keys": 2 * args.subjects,
            "broker_accepted": after_storm["broker"]["accepted"],
            "broker_refused": after_storm["broker"]["refused"],
            "routed_messages": delivered,
            "expected_routed": expected,
            "routed_per_s": round(delivered / route_time, 1),
        }
    finally:
        if runner is not None:
            await runner.cleanup()
        emulator.terminate()
        emulator.wait(timeout=10)
        tmp.cleanup()


def main() -> None:
    """Parse flags, run once, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--messages", type=int, default=5, help="QoS 0 publishes per device")
    parser.add_argument("--apply-qps", type=float, default=100, help="the emulator's limit")
    parser.add_argument("--http-concurrency", type=int, default=200)
    parser.add_argument("--route-timeout", type=float, default=60)
    args = parser.parse_args()
    if args.devices % args.subjects:
        parser.error("--devices must be a multiple of --subjects")
    figures = asyncio.run(storm(args))
    print(json.dumps(figures, indent=2))
    if figures["apply_token_calls"] != figures["distinct_keys"]:
        raise SystemExit("ApplyToken calls != distinct keys")
    if figures["broker_accepted"] != figures["devices"]:
        raise SystemExit("not every device was accepted")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
