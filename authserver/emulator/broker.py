"""The emulator's MQTT 3.1.1 listener: amqtt's broker taught the vendor's token rules.

Built on amqtt 0.12.1 (pinned in pyproject.toml), asyncio-native, so it runs in the
emulator's process on the emulator's state: the tokens ApplyToken issues and RevokeToken
revokes are the tokens it checks (the rules themselves live in `mqtt_auth`). amqtt's plugin
API cannot do what the vendor's broker does (its auth plugins keep no per-client state, a
topic plugin drops a refused PUBLISH silently, clients may not publish to `$SYS`, QoS 1
PUBACKs go out before any processing, and nothing pushes to, or disconnects, one client), so
this module subclasses it and overrides these methods, all read against 0.12.1:

- `Broker._handle_client_session`: authenticate before amqtt touches its session table
  (amqtt records even a refused client there, which would hide a live client with the same
  ClientId), answer a refusal with CONNACK 5 itself, and take over a live ClientId;
- `Broker._authenticate`: answers what `_handle_client_session` decided;
- `Broker._delete_session`: leaves a live client alone until its takeover is authenticated;
- `Broker._topic_filtering`: delivery (RECEIVE) needs a live R resource; SUBSCRIBE and PUBLISH
  were judged already, by the handler, before their acknowledgement;
- `Broker._handle_message_delivery`: routes `<parent>/p2p/<ClientId>` to that client only;
- `BrokerProtocolHandler.handle_publish` / `handle_subscribe`: judge each PUBLISH and SUBSCRIBE
  as it arrives, swap an uploaded token in before the PUBACK, and cut a client off with
  `$SYS/tokenInvalidNotice` instead of silently dropping its packet.

A watcher task re-checks every live session: at once when RevokeToken revokes a token, else
every `check_interval` seconds (expiry notices, expiry), on the emulator's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, Server
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.subscribe import SubscribePacket
from amqtt.session import Session

from authserver import background
from authserver.emulator import mqtt_auth
from authserver.emulator.mqtt_auth import ConnectRefused, Grants, Refusal
from authserver.emulator.state import BrokerStats, EmulatorState, SentMessage
from authserver.fingerprint import fingerprint
from authserver.logs import quiet_amqtt_debug

log = logging.getLogger(__name__)

UPLOAD_TOPIC = "$SYS/uploadToken"
INVALID_NOTICE_TOPIC = "$SYS/tokenInvalidNotice"
EXPIRE_NOTICE_TOPIC = "$SYS/tokenExpireNotice"
DEFAULT_EXPIRE_NOTICE_SECONDS = 300.0
DEFAULT_CHECK_INTERVAL = 0.25
_GRANTS = "authserver.grants"
TAKEOVER_WAIT = 5.0


def p2p_target(topic: str) -> str | None:
    """The ClientId a `<parent>/p2p/<ClientId>` topic is addressed to, else None."""
    levels = topic.split("/")
    if len(levels) == 3 and levels[1] == "p2p" and levels[0] and levels[2]:
        return levels[2]
    return None


class TokenHandler(BrokerProtocolHandler):
    """amqtt's per-connection handler, judging each PUBLISH and SUBSCRIBE as it arrives."""

    broker: TokenBroker
    grants: Grants
    ending: bool
    finished: asyncio.Event

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        """Upload, refuse (notice, disconnect) or hand the PUBLISH to amqtt (queue, PUBACK)."""
        topic = publish_packet.topic_name
        if self.ending or topic is None:
            return
        if topic == UPLOAD_TOPIC:
            await self._upload(publish_packet)
            return
        refusal = self.grants.judge(self.broker.state, mqtt_auth.PUBLISH, topic)
        if refusal is not None:
            await self.broker.cut_off(self, refusal)
            return
        await super().handle_publish(publish_packet)

    async def handle_subscribe(self, subscribe: SubscribePacket) -> None:
        """Refuse the whole SUBSCRIBE (notice, disconnect) if any filter is outside the grants."""
        if self.ending:
            return
        for topic_filter, _qos in subscribe.payload.topics if subscribe.payload else []:
            refusal = self.grants.judge(self.broker.state, mqtt_auth.SUBSCRIBE, topic_filter)
            if refusal is not None:
                await self.broker.cut_off(self, refusal)
                return
        await super().handle_subscribe(subscribe)
        client_id = self.session.client_id if self.session else None
        if client_id:  # what the legacy API's client queries report (001 section 6)
            held = self.broker.state.subscriptions.setdefault(client_id, {})
            for topic_filter, qos in subscribe.payload.topics if subscribe.payload else []:
                held[topic_filter] = min(int(qos), QOS_1)

    async def _upload(self, packet: PublishPacket) -> None:
        # The vendor's demos upload with QoS 1 and wait for the PUBACK; QoS 2 is not offered.
        qos = packet.qos or QOS_0
        refusal = (
            self.grants.upload(self.broker.state, packet.data or b"")
            if qos in (QOS_0, QOS_1) and not self.grants.full
            else Refusal(mqtt_auth.FORGED, "")
        )
        if refusal is not None:
            await self.broker.cut_off(self, refusal)
            return
        self.broker.stats.uploads += 1
        packet_id = packet.packet_id
        if qos == QOS_1 and packet_id is not None:
            # Only now: the next PUBLISH/SUBSCRIBE is judged by the uploaded token.
            await self._send_packet(PubackPacket.build(packet_id))


class TokenBroker(Broker):
    """An amqtt broker that honours the emulator's tokens as the vendor's broker does."""

    def __init__(
        self,
        state: EmulatorState,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        expire_notice_seconds: float = DEFAULT_EXPIRE_NOTICE_SECONDS,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        enforce_groups: bool = False,
    ) -> None:
        """Configure one TCP listener on host:port (0: a free port); `start()` opens it.

        `enforce_groups`: refuse a CONNECT whose GroupId the instance does not have.
        """
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__({"listeners": {"default": {"type": "tcp", "bind": bind}}, "plugins": {}})
        self.state = state
        state.broker_stats = BrokerStats()
        self.expire_notice_seconds = expire_notice_seconds
        self.check_interval = check_interval
        self.enforce_groups = enforce_groups
        self._live: dict[str, TokenHandler] = {}
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._cutting: set[asyncio.Task[None]] = set()
        quiet_amqtt_debug()

    @property
    def stats(self) -> BrokerStats:
        """The counters `GET /_emulator/stats` reports (reset with the emulator's)."""
        stats = self.state.broker_stats
        if stats is None:
            stats = self.state.broker_stats = BrokerStats()
        return stats

    @property
    def port(self) -> int:
        """The TCP port the listener is bound to."""
        instance = self._servers["default"].instance
        assert isinstance(instance, asyncio.Server)  # a tcp listener
        return int(instance.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Open the listener, start watching tokens, and report into the emulator's state."""
        await super().start()
        self.state.revoke_listeners.append(self._on_revoke)
        self.state.message_listeners.append(self._on_message)
        self._watcher = asyncio.create_task(self._watch(), name="emulator-broker-watch")

    async def stop(self) -> None:
        """Close every session and the listener; cancel the broker's own tasks."""
        with contextlib.suppress(ValueError):
            self.state.revoke_listeners.remove(self._on_revoke)
        with contextlib.suppress(ValueError):
            self.state.message_listeners.remove(self._on_message)
        await background.stop([self._watcher, *self._cutting])
        await self.shutdown()
        self.state.connected.clear()

    # -- sessions ------------------------------------------------------------------------
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        """One TCP connection, from the first byte to a closed socket, whatever amqtt did."""
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            # amqtt's writer adapter skips the close when its drain fails on a peer that
            # hung up first (a refused client often does): close the transport regardless.
            writer.close()

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Server,
        listener_name: str,
    ) -> None:
        client_id = client_session.client_id
        try:
            grants = mqtt_auth.authenticate(
                self.state,
                client_id,
                client_session.username,
                client_session.password,
                enforce_groups=self.enforce_groups,
            )
        except ConnectRefused as refused:
            self.stats.refused[refused.reason] += 1
            log.info("mqtt connect refused (%s) for %r", refused.reason, client_id)
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return
        assert client_id is not None  # authenticate refuses a missing ClientId
        token_handler = self._adopt(handler, grants)
        client_session.attributes[_GRANTS] = grants
        await self._take_over(client_id, token_handler, client_session)
        self.stats.accepted += 1
        self.state.connected.add(client_id)
        self.state.log_online()
        self.state.touch_session(
            client_id, f"/{client_session.remote_address}:{client_session.remote_port}"
        )
        try:
            await super()._handle_client_session(
                reader, writer, client_session, handler, server, listener_name
            )
        finally:
            if self._live.get(client_id) is token_handler:
                del self._live[client_id]
                self.state.connected.discard(client_id)
                self.state.log_online()
                self.state.touch_session(client_id)
                if client_session.clean_session:
                    self.state.subscriptions.pop(client_id, None)
            # amqtt leaves the socket open when its message loop ends on a bad PUBLISH.
            await self._stop_handler(handler)
            token_handler.finished.set()

    def _adopt(self, handler: BrokerProtocolHandler, grants: Grants) -> TokenHandler:
        # amqtt builds the handler itself (`BrokerProtocolHandler.init_from_connect`) with no
        # hook for a subclass; TokenHandler adds behaviour and three attributes, no state of
        # amqtt's, so re-classing the fresh handler is safe against 0.12.1.
        handler.__class__ = TokenHandler
        assert isinstance(handler, TokenHandler)  # just re-classed
        handler.broker = self
        handler.grants = grants
        handler.ending = False
        handler.finished = asyncio.Event()
        return handler

    async def _take_over(self, client_id: str, handler: TokenHandler, session: Session) -> None:
        old = self._live.get(client_id)
        self._live[client_id] = handler
        if old is None:
            return
        self.stats.takeovers += 1
        old.ending = True
        if old.session is not None and old.session is not session:
            # A clean session: amqtt keeps the old one's subscriptions under the same ClientId
            # and would take them for the new client's; drop them and close the old socket.
            await self._del_all_subscriptions(old.session)
            await old.handle_connection_closed()
            return
        # A persistent session is one object for both connections. amqtt's own takeover lets
        # the old connection's end mark that shared session disconnected while the new one
        # is live (and deliveries to it stop); so end the old connection first, wholly.
        await old.handle_connection_closed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.finished.wait(), TAKEOVER_WAIT)

    async def _authenticate(self, session: Session, _: ListenerConfig) -> bool:
        return _GRANTS in session.attributes

    async def _delete_session(self, client_id: str) -> None:
        if client_id in self._live:
            return  # only an authenticated takeover may end a live client
        await super()._delete_session(client_id)

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        if action != Action.RECEIVE:
            return True  # judged by TokenHandler before the SUBACK / PUBACK
        grants = session.attributes.get(_GRANTS)
        if not isinstance(grants, Grants):
            return False
        if grants.judge(self.state, mqtt_auth.RECEIVE, topic) is not None:
            return False
        self.stats.delivered += 1
        return True

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        message = wait_deliver.result()
        if message is not None and message.topic:
            self.stats.published += 1
            target_id = p2p_target(message.topic)
            if target_id is not None:
                target = self._live.get(target_id)
                if target is not None and not target.ending:
                    self.stats.p2p += 1
                    qos = min(message.qos or QOS_0, QOS_1)
                    # The broadcast loop owns, reaps and cancels the tasks in this queue.
                    self._tasks_queue.append(
                        asyncio.ensure_future(
                            target.mqtt_publish(message.topic, message.data, qos, retain=False)
                        )
                    )
                return True
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    # -- notices ---------------------------------------------------------------------------
    async def cut_off(self, handler: TokenHandler, refusal: Refusal) -> None:
        """`$SYS/tokenInvalidNotice` {code, type} to one client, then disconnect it."""
        if handler.ending:
            return
        handler.ending = True
        self.stats.notices[str(refusal.code)] += 1
        client_id = handler.session.client_id if handler.session else None
        log.info("mqtt client %r cut off, notice code %d", client_id, refusal.code)
        await self._push(handler, INVALID_NOTICE_TOPIC, refusal.notice())
        await handler.handle_connection_closed()

    async def _push(self, handler: TokenHandler, topic: str, payload: bytes) -> None:
        # Pushed without a subscription, at QoS 0 ("delivery not guaranteed", section 7).
        with contextlib.suppress(AMQTTError, OSError):
            await handler.mqtt_publish(topic, payload, QOS_0, retain=False)

    def _on_message(self, message: SentMessage) -> None:
        # SendMessage (002 section 12): to every subscriber whose grants let it receive the
        # topic (and a P2P topic to its one client), as a device's PUBLISH would be.
        target_id = p2p_target(message.topic)
        if target_id is None:
            self._spawn(self.internal_message_broadcast(message.topic, message.payload, QOS_1))
            return
        target = self._live.get(target_id)
        if target is not None and not target.ending:
            self.stats.p2p += 1
            self._spawn(self._push(target, message.topic, message.payload))

    def _on_revoke(self, token: str) -> None:
        log.debug("token %s revoked; checking sessions", fingerprint(token))
        self._wake.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.check_interval)
            self._wake.clear()
            await self.check_sessions()

    async def check_sessions(self) -> None:
        """Expiry notices for tokens about to expire; cut off clients with a dead token."""
        ahead_ms = int(self.expire_notice_seconds * 1000)
        for handler in list(self._live.values()):
            if handler.ending or handler.grants.full:
                continue
            refusal = handler.grants.check(self.state)
            if refusal is not None:
                self._spawn(self.cut_off(handler, refusal))
                continue
            for kind, expire_ms in handler.grants.expiring(self.state, ahead_ms):
                self.stats.expire_notices += 1
                notice = json.dumps({"expireTime": expire_ms, "type": kind}).encode()
                self._spawn(self._push(handler, EXPIRE_NOTICE_TOPIC, notice))

    def _spawn(self, coro: Any) -> None:
        # A slow client must not hold up the others' notices.
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._cutting.add(task)
        task.add_done_callback(self._cutting.discard)
