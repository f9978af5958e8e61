"""MQTT clients nobody here wrote (paho-mqtt, mosquitto_pub/sub) driven from async tests."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.helpers import eventually

WAIT = 10.0  # generous: the suite runs on a loaded 2-core machine


@dataclass
class Received:
    """One message a device got."""

    topic: str
    payload: bytes

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


@dataclass
class PahoDevice:
    """A paho-mqtt 2.x client on its own network thread, with what happened to it recorded."""

    client_id: str
    clean_session: bool = True
    client: paho.Client = field(init=False)
    connack: list[Any] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: list[Received] = field(default_factory=list)
    subacks: list[list[int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=self.clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack.append(reason)

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload)))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
        self.subacks.append([int(r.value) for r in reasons])

    async def connect(self, port: int, username: str, password: str) -> Any:
        """Connect and wait for the CONNACK; its reason code (paho's ReasonCode)."""
        self.client.username_pw_set(username, password)
        # connect_async, then the thread connects: paho 2.2's connect() before loop_start()
        # makes a wake-up socket pair that loop_start() replaces without closing.
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()
        await eventually(lambda: self.connack or self.disconnected.is_set())
        return self.connack[0] if self.connack else None

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Send a SUBSCRIBE (no wait)."""
        self.client.subscribe(topic, qos)

    async def subscribed(self, topic: str, qos: int = 1) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK."""
        before = len(self.subacks)
        self.client.subscribe(topic, qos)
        await eventually(lambda: len(self.subacks) > before)
        return self.subacks[before]

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> paho.MQTTMessageInfo:
        """PUBLISH; with QoS 1 the info is published once the PUBACK came."""
        return self.client.publish(topic, payload, qos)

    async def acked(self, topic: str, payload: bytes | str) -> None:
        """PUBLISH at QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, 1)
        await eventually(info.is_published)

    def on(self, topic: str) -> list[Received]:
        """The messages received on `topic`."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    async def got(self, topic: str, count: int = 1) -> list[Received]:
        """Wait until `count` messages arrived on `topic`."""
        await eventually(lambda: len(self.on(topic)) >= count)
        return self.on(topic)

    async def gone(self) -> None:
        """Wait until the broker closed the connection."""
        await eventually(self.disconnected.is_set)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
        # paho 2.2 leaves its wake-up socket pair open when the broker closed the connection
        # first (refused CONNACK, a notice and disconnect): no public call closes it.
        self.client._reset_sockets()
