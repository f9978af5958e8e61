"""The emulator with its MQTT listener on a free port, the gateway in front, paho devices."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authserver.emulator.app import EMULATOR_BROKER
from authserver.emulator.broker import TokenBroker
from tests.broker.devices import PahoDevice
from tests.fixtures.emulator import EmulatorHandle, MakeEmulator

MakeDevice = Callable[..., PahoDevice]
CHAT_POLICY = Path(__file__).with_name("chat-policy.yaml")


def broker_of(emulator: EmulatorHandle) -> TokenBroker:
    """The running broker of an emulator started with `mqtt_port=0`."""
    return emulator.runner.app[EMULATOR_BROKER]


@pytest.fixture
async def mqtt_emulator(make_emulator: MakeEmulator) -> EmulatorHandle:
    """An emulator whose MQTT listener is on (a free port), checking tokens every 50 ms."""
    return await make_emulator(mqtt_port=0, mqtt_check_interval=0.05)


@pytest.fixture
def device() -> Iterator[MakeDevice]:
    """Factory: `device("GID_test@@@a", clean_session=True)` -> a PahoDevice, closed at teardown."""
    made: list[PahoDevice] = []

    def make(client_id: str, clean_session: bool = True) -> PahoDevice:
        made.append(PahoDevice(client_id, clean_session))
        return made[-1]

    yield make
    for d in made:
        d.close()


async def credentials(client: Any, jwt: str, **body: Any) -> dict[str, Any]:
    """`POST /v1/token` with the device's JWT; the answer's JSON."""
    resp = await client.post("/v1/token", headers={"Authorization": f"Bearer {jwt}"}, json=body)
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


Credentials = Callable[..., Awaitable[dict[str, Any]]]
