"""`authserver demo`: the emulator and the gateway in one process, for trying it out locally."""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import secrets
import signal
import sys
import time
from collections.abc import Sequence

import jwt
from aiohttp import web

from authserver.app import create_app
from authserver.cloud.credentials import Credentials
from authserver.emulator.app import EmulatorConfig, start_emulator
from authserver.identity import JWTSettings
from authserver.serve import configure_logging
from authserver.settings import Settings

DEMO_INSTANCE = "post-cn-demo"
DEMO_ISSUER = "authserver-demo"


def demo_jwt(secret: str, subject: str, lifetime: int = 24 * 3600, **claims: object) -> str:
    """An HS256 JWT as the demo's made-up application would issue it."""
    now = int(time.time())
    payload = {"sub": subject, "iss": DEMO_ISSUER, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def run_demo(host: str, port: int, emulator_port: int, stop: asyncio.Event) -> None:
    """Start both servers, print how to use them, and run until `stop` is set."""
    access_key_id = "LTAIdemo" + secrets.token_hex(4)
    access_key_secret = secrets.token_urlsafe(24)
    jwt_secret = secrets.token_urlsafe(32)
    emulator_runner, emulator_url = await start_emulator(
        EmulatorConfig(
            access_keys={access_key_id: access_key_secret}, instance_ids=[DEMO_INSTANCE]
        ),
        "127.0.0.1",
        emulator_port,
    )
    policy_ref = importlib.resources.files("authserver") / "data" / "example-policy.yaml"
    with importlib.resources.as_file(policy_ref) as policy_path:
        settings = Settings(
            credentials=Credentials(access_key_id, access_key_secret),
            jwt=JWTSettings(algorithms=("HS256",), secret=jwt_secret, issuer=DEMO_ISSUER),
            instance_id=DEMO_INSTANCE,
            policy_file=policy_path,
            host=host,
            port=port,
            mqtt_endpoint=emulator_url,
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound = runner.addresses[0][1]
            device = demo_jwt(jwt_secret, "alice", groups=["ops"], tenant="t1")
            admin = demo_jwt(jwt_secret, "admin", lifetime=3600, scope="authserver:admin")
            print(_banner(host, bound, emulator_url, device, admin), flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()
            await emulator_runner.cleanup()


def _banner(host: str, port: int, emulator_url: str, device: str, admin: str) -> str:
    base = f"http://{'127.0.0.1' if host in {'0.0.0.0', ''} else host}:{port}"  # noqa: S104
    return f"""\
==================== authserver DEMO (local only, not for production) ====================
Gateway:   {base}   (in-memory token store, example policy, random HS256 secret)
Emulator:  {emulator_url}   (stand-in for the vendor OpenAPI; random demo access key)

Device JWT (subject alice, groups [ops], tenant t1; valid 24 h):
DEVICE_JWT={device}

Admin JWT (scope authserver:admin; valid 1 h):
ADMIN_JWT={admin}

Try it:
curl -s -X POST {base}/v1/token -H "Authorization: Bearer {device}"
==========================================================================================
Ctrl-C stops the demo."""


def demo_main(argv: Sequence[str]) -> int:
    """Run the demo until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="authserver demo",
        description="Emulator + gateway in one process with an in-memory store, the example "
        "policy and a random HS256 secret. Prints a device JWT, an admin JWT and a curl line.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="gateway address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default %(default)s)")
    parser.add_argument(
        "--emulator-port", type=int, default=0, help="emulator port (default: a free one)"
    )
    args = parser.parse_args(list(argv))
    configure_logging("WARNING")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_demo(args.host, args.port, args.emulator_port, stop)

    try:
        asyncio.run(main())
    except OSError as err:
        print(f"authserver demo: {err}", file=sys.stderr)
        return 1
    return 0
