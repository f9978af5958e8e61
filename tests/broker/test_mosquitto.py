"""Debian's mosquitto_pub / mosquitto_sub (libmosquitto 2.0) against the emulator's broker.

scripts/test installs `mosquitto-clients` when missing; without them these tests fail.
"""

from __future__ import annotations

import asyncio

from tests.broker.conftest import CHAT_POLICY, broker_of, credentials
from tests.broker.devices import WAIT
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, make_jwt
from tests.helpers import eventually


def mosquitto(tool: str, port: int, client_id: str, creds: dict[str, str], *args: str) -> list[str]:
    """The command line of `tool` (mosquitto_pub or mosquitto_sub) with the device's creds."""
    return [
        tool,
        "-h", "127.0.0.1",
        "-p", str(port),
        "-V", "mqttv311",
        "-i", client_id,
        "-u", creds["username"],
        "-P", creds["password"],
        *args,
    ]  # fmt: skip


async def run(command: list[str]) -> tuple[int, str]:
    """Run to completion; exit code and combined output (bounded, so a hang fails the test)."""
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode()


async def test_mosquitto_sub_receives_what_mosquitto_pub_sends(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=CHAT_POLICY)
    port = broker_of(mqtt_emulator).port
    bob = await credentials(gateway, make_jwt("bob"))
    alice = await credentials(gateway, make_jwt("alice"))
    sub = await asyncio.create_subprocess_exec(
        *mosquitto("mosquitto_sub", port, "GID_test@@@bob", bob, "-t", "chat/#", "-q", "1",
                   "-C", "1", "-v"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        broker = broker_of(mqtt_emulator)
        await eventually(lambda: "chat/#" in broker.subscriptions)
        code, out = await run(
            mosquitto("mosquitto_pub", port, "GID_test@@@alice", alice,
                      "-t", "chat/room", "-m", "hello from mosquitto", "-q", "1")
        )  # fmt: skip
        assert code == 0, out
        printed, _ = await asyncio.wait_for(sub.communicate(), WAIT)
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    assert sub.returncode == 0
    assert printed.decode().strip() == "chat/room hello from mosquitto"


async def test_mosquitto_pub_with_a_forged_password_is_not_authorised(
    mqtt_emulator: EmulatorHandle, make_gateway: MakeGateway
) -> None:
    gateway = await make_gateway(mqtt_emulator, policy_file=CHAT_POLICY)
    creds = await credentials(gateway, make_jwt("alice"))
    forged = {**creds, "password": creds["password"].replace("R|", "R|x", 1)}
    code, out = await run(
        mosquitto("mosquitto_pub", broker_of(mqtt_emulator).port, "GID_test@@@alice", forged,
                  "-t", "chat/room", "-m", "x", "-q", "1")
    )  # fmt: skip
    assert code != 0
    assert "not authorised" in out.lower(), out
    assert mqtt_emulator.state.stats()["broker"]["refused"] == {"forged": 1}
