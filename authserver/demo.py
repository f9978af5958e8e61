"""`authserver demo`: emulator, MQTT broker and gateway in one process, for trying it locally."""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from authserver.app import create_app
from authserver.cloud.credentials import Credentials
from authserver.emulator.app import EMULATOR_BROKER, EmulatorConfig, start_emulator
from authserver.identity import JWTSettings
from authserver.serve import configure_logging
from authserver.settings import Settings

DEMO_INSTANCE = "post-cn-demo"
DEMO_ISSUER = "authserver-demo"
DEMO_GROUP = "GID_demo"
DEFAULT_MQTT_PORT = 1883


def demo_jwt(secret: str, subject: str, lifetime: int = 24 * 3600, **claims: object) -> str:
    """An HS256 JWT as the demo's made-up application would issue it."""
    now = int(time.time())
    payload = {"sub": subject, "iss": DEMO_ISSUER, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def run_demo(
    host: str,
    port: int,
    emulator_port: int,
    stop: asyncio.Event,
    mqtt_port: int = DEFAULT_MQTT_PORT,
) -> None:
    """Start both servers and the MQTT broker, print how to use them, run until `stop`."""
    access_key_id = "LTAIdemo" + secrets.token_hex(4)
    access_key_secret = secrets.token_urlsafe(24)
    jwt_secret = secrets.token_urlsafe(32)
    emulator_runner, emulator_url = await start_emulator(
        EmulatorConfig(
            access_keys={access_key_id: access_key_secret},
            instance_ids=[DEMO_INSTANCE],
            mqtt_port=mqtt_port,
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
            base = f"http://{'127.0.0.1' if host in {'0.0.0.0', ''} else host}:{bound}"  # noqa: S104
            credentials = await _fetch_credentials(base, device)
            broker_port = emulator_runner.app[EMULATOR_BROKER].port
            print(_banner(base, emulator_url, device, admin), flush=True)
            print(_mqtt_banner(broker_port, credentials), flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()
            await emulator_runner.cleanup()


async def _fetch_credentials(base: str, device_jwt: str) -> dict[str, Any]:
    """What `POST /v1/token` answers the demo device: the MQTT lines are printed with it."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{base}/v1/token", headers={"Authorization": f"Bearer {device_jwt}"}) as resp,
    ):
        resp.raise_for_status()
        answer: dict[str, Any] = await resp.json()
        return answer


def _banner(base: str, emulator_url: str, device: str, admin: str) -> str:
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
"""


def _mqtt_banner(port: int, credentials: dict[str, Any]) -> str:
    """Ready mosquitto_sub / mosquitto_pub lines and the paho-mqtt equivalent, as printed."""
    user, password = credentials["username"], credentials["password"]
    common = f"-h 127.0.0.1 -p {port} -V mqttv311 -u {shlex.quote(user)} -P {shlex.quote(password)}"
    expires = time.strftime("%H:%M UTC", time.gmtime(credentials["expireTime"] / 1000))
    return f"""
MQTT broker: mqtt://127.0.0.1:{port}  (MQTT 3.1.1, token mode, checks the emulator's tokens)
alice's MQTT credentials (what that curl answers), valid until {expires}; curl again for new ones.
Debian's mosquitto-clients (two terminals: subscribe, then publish):
mosquitto_sub {common} -i {DEMO_GROUP}@@@alice-sub -t 'devices/alice/#' -v
mosquitto_pub {common} -i {DEMO_GROUP}@@@alice-pub -t devices/alice/hello -m 'hello' -q 1
Outside the grants (devices/bob/#) the broker sends $SYS/tokenInvalidNotice code 4 and
disconnects. Python (pip install paho-mqtt):
{python_example(port, user, password)}
==========================================================================================
Ctrl-C stops the demo."""


def python_example(port: int, username: str, password: str) -> str:
    """A paho-mqtt 2.x script that subscribes, publishes, prints what comes back, and exits."""
    return f"""\
python3 - <<'EOF'
import paho.mqtt.client as mqtt

def on_connect(client, userdata, flags, reason, properties):
    client.subscribe("devices/alice/#", qos=1)

def on_subscribe(client, userdata, mid, reasons, properties):
    client.publish("devices/alice/hello", "hello from paho", qos=1)

def on_message(client, userdata, message):
    print(message.topic, message.payload.decode())
    if not message.topic.startswith("$SYS/"):
        client.disconnect()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="{DEMO_GROUP}@@@alice-py")
client.username_pw_set({username!r}, {password!r})
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect("127.0.0.1", {port})
client.loop_forever()
EOF"""


def demo_main(argv: Sequence[str]) -> int:
    """Run the demo until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="authserver demo",
        description="Emulator (with its MQTT broker) + gateway in one process with an in-memory "
        "store, the example policy and a random HS256 secret. Prints a device JWT, an admin JWT, "
        "a curl line, and mosquitto_sub/mosquitto_pub lines and a paho-mqtt script that work.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="gateway address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default %(default)s)")
    parser.add_argument(
        "--emulator-port", type=int, default=0, help="emulator port (default: a free one)"
    )
    parser.add_argument(
        "--mqtt-port",
        type=int,
        default=DEFAULT_MQTT_PORT,
        help="the emulator's MQTT broker port (default %(default)s; 0: a free one)",
    )
    args = parser.parse_args(list(argv))
    configure_logging("WARNING")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_demo(args.host, args.port, args.emulator_port, stop, args.mqtt_port)

    try:
        asyncio.run(main())
    except OSError as err:
        print(f"authserver demo: {err}", file=sys.stderr)
        return 1
    return 0
