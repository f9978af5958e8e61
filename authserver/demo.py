"""`authserver demo`: the emulator and the gateway in one process, for trying it out locally."""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import logging
import secrets
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from authserver.app import create_app
from authserver.cloud.credentials import Credentials
from authserver.emulator.app import EmulatorConfig, start_emulator
from authserver.identity import JWTSettings
from authserver.jwt_cli import mint
from authserver.serve import configure_logging
from authserver.settings import Settings
from authserver.web.admin_auth import AUDIT_LOGGER

DEMO_INSTANCE = "post-cn-demo"
DEMO_ISSUER = "authserver-demo"


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
            device = mint(
                jwt_secret, DEMO_ISSUER, "alice", lifetime=24 * 3600, claims=DEVICE_CLAIMS
            )
            admin = mint(jwt_secret, DEMO_ISSUER, "admin", claims={"scope": "authserver:admin"})
            print(_banner(host, bound, emulator_url, device, admin, jwt_secret), flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()
            await emulator_runner.cleanup()


DEVICE_CLAIMS = {"groups": ["ops"], "tenant": "t1"}


def _banner(host: str, port: int, emulator_url: str, device: str, admin: str, secret: str) -> str:
    base = f"http://{'127.0.0.1' if host in {'0.0.0.0', ''} else host}:{port}"  # noqa: S104
    claims = json.dumps(DEVICE_CLAIMS)
    return f"""\
==================== authserver DEMO (local only, not for production) ====================
Gateway:   {base}   (in-memory token store, example policy, random HS256 secret)
Emulator:  {emulator_url}   (stand-in for the vendor OpenAPI; random demo access key)

Paste these lines into another terminal (in this directory):

DEVICE_JWT={device}
ADMIN_JWT={admin}
export AUTHSERVER_JWT_SECRET={secret} AUTHSERVER_JWT_ISSUER={DEMO_ISSUER}
export AUTHSERVER_ADMIN_URL={base} AUTHSERVER_ADMIN_TOKEN="$ADMIN_JWT"

(The device JWT: subject alice, groups [ops], tenant t1, valid 24 h; the admin JWT:
scope authserver:admin, valid 1 h.) Then:

curl -s -X POST {base}/v1/token -H "Authorization: Bearer $DEVICE_JWT"
.venv/bin/authserver admin tokens alice                  # alice's tokens (admin API)
.venv/bin/authserver admin revoke --subject alice --yes  # revoke them; DEVICE_JWT now gets 401
DEVICE_JWT=$(.venv/bin/authserver jwt --subject alice --claims '{claims}')
export AUTHSERVER_ADMIN_TOKEN=$(.venv/bin/authserver jwt --subject admin --admin)  # a new admin JWT

Admin requests are audited below (one line each, logger authserver.audit).
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
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)  # show the admin audit trail

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
