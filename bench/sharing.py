"""Token sharing: how many ApplyToken calls a tenant-level fleet costs, with and without it.

    python bench/sharing.py [--devices 10000] [--tenants 10]

Starts the emulator and the gateway (memory store) on loopback, once per
AUTHSERVER_TOKEN_SHARING mode, and has every device of the fleet ask for its tokens once
over HTTP, with its own app JWT and its own clientId, under policies/tenant-broadcast.yaml
(every device of a tenant is granted the same: read its tenant's broadcasts, write its
tenant's uplink). It prints the ApplyToken calls the emulator answered and what they cost
of the default 100/s ApplyToken quota. The quotas are raised for the run so it measures
calls, not pacing; the counts do not depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from authserver.app import create_app  # noqa: E402
from authserver.cloud.credentials import Credentials  # noqa: E402
from authserver.cloud.quota import DEFAULT_LIMITS  # noqa: E402
from authserver.emulator.app import EMULATOR_STATE, EmulatorConfig, create_emulator_app  # noqa: E402
from authserver.identity import JWTSettings  # noqa: E402
from authserver.settings import TOKEN_SHARING_MODES, Settings  # noqa: E402

POLICY = ROOT / "policies" / "tenant-broadcast.yaml"
SECRET = "bench-sharing-secret-long-enough-for-hs256"
ISSUER, AUDIENCE = "https://bench.example", "mqtt-gateway"
KEY_ID, KEY_SECRET, INSTANCE = "LTAIbench", "bench-access-key-secret", "post-cn-bench"
FAST = 100_000.0  # calls per second: nothing waits on a quota during the run
CONCURRENCY = 64


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Run `app` on a free loopback port; its runner and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def fleet(devices: int, tenants: int) -> list[tuple[str, dict[str, str]]]:
    """(app JWT, request body) per device: device n belongs to tenant n % tenants."""
    now = int(time.time())
    out = []
    for n in range(devices):
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
            "sub": f"device-{n}",
            "tenant": f"tenant-{n % tenants}",
            "device_id": f"d{n}",
        }
        out.append(
            (jwt.encode(claims, SECRET, algorithm="HS256"), {"clientId": f"GID_fleet@@@d{n}"})
        )
    return out


async def one_mode(mode: str, devices: list[tuple[str, dict[str, str]]]) -> tuple[int, int, float]:
    """(ApplyToken calls, distinct tokens answered, seconds) for one sharing mode."""
    emulator_app = create_emulator_app(
        EmulatorConfig(
            access_keys={KEY_ID: KEY_SECRET},
            instance_ids=[INSTANCE],
            qps=dict.fromkeys(DEFAULT_LIMITS, FAST),
        )
    )
    emulator_runner, emulator_url = await serve(emulator_app)
    settings = Settings(
        credentials=Credentials(KEY_ID, KEY_SECRET),
        jwt=JWTSettings(algorithms=("HS256",), secret=SECRET, issuer=ISSUER, audience=AUDIENCE),
        instance_id=INSTANCE,
        policy_file=POLICY,
        mqtt_endpoint=emulator_url,
        host="127.0.0.1",
        rate_limit_subject=0.0,
        mint_budget=0.0,
        quota=dict.fromkeys(DEFAULT_LIMITS, FAST),
        account_quota=FAST,
        token_sharing=mode,
        log_level="WARNING",
    )
    gateway_runner, gateway_url = await serve(create_app(settings))
    seen: set[str] = set()
    gate = asyncio.Semaphore(CONCURRENCY)
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(token: str, body: dict[str, str]) -> None:
                async with (
                    gate,
                    session.post(
                        f"{gateway_url}/v1/token",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp,
                ):
                    answer = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status}: {answer}")
                    seen.update(t["token"] for t in answer["tokens"])

            await asyncio.gather(*(ask(token, body) for token, body in devices))
        elapsed = time.perf_counter() - started
        stats = emulator_app[EMULATOR_STATE].stats()
        return int(stats["success"].get("ApplyToken", 0)), len(seen), elapsed
    finally:
        await gateway_runner.cleanup()
        await emulator_runner.cleanup()


async def main() -> int:
    """Run both modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=10)
    args = parser.parse_args()
    devices = fleet(args.devices, args.tenants)
    quota = DEFAULT_LIMITS["ApplyToken"]
    print(f"{args.devices} devices in {args.tenants} tenants, policies/{POLICY.name}, one ask each")
    print()
    print(
        "| AUTHSERVER_TOKEN_SHARING | ApplyToken calls | distinct tokens | quota at 100/s | run |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in TOKEN_SHARING_MODES:
        calls, distinct, elapsed = await one_mode(mode, devices)
        print(f"| {mode} | {calls} | {distinct} | {calls / quota:.1f} s | {elapsed:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
