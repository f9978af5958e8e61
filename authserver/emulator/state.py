"""The emulator's in-memory state: tokens, sessions, device credentials, rates, faults, stats."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from authserver.clock import Clock
from authserver.cloud.vendor import DEFAULT_LIMITS
from authserver.topics import InvalidTopicFilter, covers

# The vendor's documented limits (cloud/vendor.py), enforced as the cloud does; the legacy
# management API's are left generous here, so tests may call it freely.
DEFAULT_QPS: dict[str, float] = {
    action: qps for action, qps in DEFAULT_LIMITS.items() if not action.startswith("Ons")
}
# Actions without a documented limit get a generous one, so they are still counted.
GENEROUS_QPS = 1000.0
MAX_NONCES = 1_000_000

# How long an expired token is still known (as expired) before the sweeper forgets it.
EXPIRED_RETENTION_MS = 3_600_000


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a subscription filter matches a topic name (False for an invalid filter)."""
    try:
        return covers(topic_filter, topic)
    except InvalidTopicFilter:
        return False


class TokenRecord:
    """One issued token: where it is valid, what it grants, until when."""

    __slots__ = ("actions", "expire_ms", "instance_id", "resources", "revoked")

    def __init__(
        self, instance_id: str, actions: str, resources: tuple[str, ...], expire_ms: int
    ) -> None:
        self.instance_id = instance_id
        self.actions = actions
        self.resources = resources
        self.expire_ms = expire_ms
        self.revoked = False


@dataclass
class DeviceCredential:
    """One device's AccessKey pair (the "one device, one secret" API, 002 section 14)."""

    client_id: str
    instance_id: str
    access_key_id: str
    access_key_secret: str
    create_ms: int
    update_ms: int

    def as_vendor(self) -> dict[str, Any]:
        """The `DeviceCredential` struct as the vendor returns it."""
        return {
            "ClientId": self.client_id,
            "InstanceId": self.instance_id,
            "DeviceAccessKeyId": self.access_key_id,
            "DeviceAccessKeySecret": self.access_key_secret,
            "CreateTime": self.create_ms,
            "UpdateTime": self.update_ms,
        }


@dataclass
class GroupRecord:
    """One Group ID of an instance (002 section 11)."""

    group_id: str
    instance_id: str
    create_ms: int
    update_ms: int

    def as_vendor(self) -> dict[str, Any]:
        """The `MqttGroupIdDo` struct of ListGroupId."""
        return {
            "InstanceId": self.instance_id,
            "CreateTime": self.create_ms,
            "UpdateTime": self.update_ms,
            "IndependentNaming": True,
            "GroupId": self.group_id,
        }


@dataclass(frozen=True)
class SentMessage:
    """One SendMessage call that was accepted (002 section 12)."""

    msg_id: str
    instance_id: str
    topic: str
    payload: bytes
    sent_ms: int = 0
    # Online subscribers whose filters matched when it was sent (the legacy API's SUB trend).
    deliveries: int = 0


@dataclass
class ClientSession:
    """What the legacy API (001 section 6.4) tells about one client: address, last touch."""

    address: str = ""
    last_touch_ms: int = 0


# Called with each accepted SendMessage: how a broker delivers it to its subscribers.
MessageListener = Callable[[SentMessage], None]
MAX_SENT_MESSAGES = 10_000
MAX_ONLINE_LOG = 10_000


@dataclass
class Fault:
    """An injected fault for one action (or `*`): an error at a rate, latency, an outage.

    `hold`: set only in-process (by a test), never over HTTP: each call waits until the event
    is set, so a test decides exactly when the upstream answers.
    """

    error_code: str | None = None
    rate: float = 1.0
    latency_ms: float = 0.0
    outage: bool = False
    status: int | None = None
    hold: asyncio.Event | None = None


class SlidingWindow:
    """Timestamps of the calls of the last second, on the monotonic clock."""

    __slots__ = ("_stamps",)

    def __init__(self) -> None:
        self._stamps: deque[float] = deque()

    def count(self, now: float) -> int:
        """Calls within (now - 1 s, now]."""
        stamps = self._stamps
        while stamps and stamps[0] <= now - 1.0:
            stamps.popleft()
        return len(stamps)

    def add(self, now: float) -> int:
        """Record a call; the number of calls in the window including it."""
        count = self.count(now) + 1
        self._stamps.append(now)
        return count


class Stats:
    """Counters that `GET /_emulator/stats` reports."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.success: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.errors_by_action: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.max_per_second: dict[str, int] = defaultdict(int)
        self.windows: dict[str, SlidingWindow] = defaultdict(SlidingWindow)
        self.account_window = SlidingWindow()
        self.account_calls = 0
        self.account_max_per_second = 0

    def record_call(self, action: str, now: float) -> None:
        """Count a call that named `action`, and its per-second peak."""
        self.calls[action] += 1
        self.max_per_second[action] = max(
            self.max_per_second[action], self.windows[action].add(now)
        )
        self.account_calls += 1
        self.account_max_per_second = max(self.account_max_per_second, self.account_window.add(now))

    def record_result(self, action: str, code: str | None) -> None:
        """Count a success (`code` None) or an error code."""
        if code is None:
            self.success[action] += 1
        else:
            self.errors[code] += 1
            self.errors_by_action[action][code] += 1


class BrokerStats:
    """What the MQTT listener counts, for `GET /_emulator/stats` (`broker`)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused: dict[str, int] = defaultdict(int)
        self.notices: dict[str, int] = defaultdict(int)
        self.expire_notices = 0
        self.uploads = 0
        self.takeovers = 0
        self.published = 0
        self.delivered = 0
        self.p2p = 0

    def document(self, connections: int) -> dict[str, Any]:
        """The `broker` part of the statistics document."""
        return {
            "connections": connections,
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "invalidNotices": dict(self.notices),
            "expireNotices": self.expire_notices,
            "uploads": self.uploads,
            "takeovers": self.takeovers,
            "messages": {
                "published": self.published,
                "delivered": self.delivered,
                "p2p": self.p2p,
            },
        }


class EmulatorState:
    """Everything the emulator remembers; one per app, reachable as `app[EMULATOR_STATE]`."""

    def __init__(
        self,
        *,
        access_keys: Mapping[str, str],
        instance_ids: Iterable[str],
        qps: Mapping[str, float],
        clock: Clock,
        timestamp_tolerance: float,
        rng: random.Random | None = None,
    ) -> None:
        self.access_keys = dict(access_keys)
        self.instance_ids = frozenset(instance_ids)
        self.qps = {**DEFAULT_QPS, **qps}
        self.clock = clock
        self.timestamp_tolerance = timestamp_tolerance
        self.rng = rng or random.Random()  # noqa: S311 - fault injection, not security
        self.tokens: dict[str, TokenRecord] = {}
        self.issued = 0
        self.revoked = 0
        # Every RevokeToken call per token, repeats included: a revocation the gateway
        # carried upstream twice shows here as 2, though the second one changed nothing.
        self.revoke_calls: Counter[str] = Counter()
        self.online: set[str] = set()
        # ClientIds with a live MQTT session on the emulator's broker (when it runs).
        self.connected: set[str] = set()
        self.broker_stats: BrokerStats | None = None
        # Called with each token RevokeToken revokes (the broker ends dependent sessions).
        self.revoke_listeners: list[Callable[[str], None]] = []
        self.credentials: dict[tuple[str, str], DeviceCredential] = {}
        self.iot_client_ids: dict[str, list[tuple[str, int]]] = {}
        self.groups: dict[tuple[str, str], GroupRecord] = {}
        self.sent: deque[SentMessage] = deque(maxlen=MAX_SENT_MESSAGES)
        self.message_listeners: list[MessageListener] = []
        # client -> {topic filter: QoS}; what a broker (or a test) says each one subscribes to
        self.subscriptions: dict[str, dict[str, int]] = {}
        self.client_sessions: dict[str, ClientSession] = {}
        # (epoch ms, the online set from then on: broker sessions and the override): the
        # legacy API's online history
        self.online_log: deque[tuple[int, frozenset[str]]] = deque(maxlen=MAX_ONLINE_LOG)
        self.faults: dict[str, Fault] = {}
        self.counters = Stats()
        self._limits: dict[str, SlidingWindow] = defaultdict(SlidingWindow)
        self._nonces: OrderedDict[str, float] = OrderedDict()

    # clock helpers
    def now_ms(self) -> int:
        """Wall-clock now in epoch milliseconds."""
        return int(self.clock.time() * 1000)

    # rate limits
    def admit(self, action: str) -> bool:
        """Take a slot in `action`'s sliding 1-second window; False when it is full."""
        limit = self.qps.get(action, GENEROUS_QPS)
        window = self._limits[action]
        now = self.clock.monotonic()
        if window.count(now) >= limit:
            return False
        window.add(now)
        return True

    # replay protection
    def nonce_seen(self, key_id: str, nonce: str) -> bool:
        """Whether this AccessKeyId already used this SignatureNonce within the window."""
        self._expire_nonces()
        return f"{key_id}\n{nonce}" in self._nonces

    def remember_nonce(self, key_id: str, nonce: str) -> None:
        """Remember a nonce for twice the timestamp tolerance: no replay can pass after that."""
        self._expire_nonces()
        self._nonces[f"{key_id}\n{nonce}"] = self.clock.monotonic() + 2 * self.timestamp_tolerance
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)

    def _expire_nonces(self) -> None:
        now = self.clock.monotonic()
        nonces = self._nonces
        while nonces:
            _, expiry = next(iter(nonces.items()))
            if expiry > now:
                break
            nonces.popitem(last=False)

    # tokens
    def issue_token(
        self, instance_id: str, actions: str, resources: tuple[str, ...], expire_ms: int
    ) -> str:
        """Store a new opaque token (base64 with `+`, `/` and `=`, like the vendor's)."""
        token = base64.b64encode(secrets.token_bytes(94)).decode()
        self.tokens[token] = TokenRecord(instance_id, actions, resources, expire_ms)
        self.issued += 1
        return token

    def token_valid(self, token: str, instance_id: str | None = None) -> bool:
        """True only for an issued, unexpired, unrevoked token (of that instance, if given)."""
        record = self.tokens.get(token)
        if record is None or record.revoked or record.expire_ms <= self.now_ms():
            return False
        return instance_id is None or record.instance_id == instance_id

    def is_revoked(self, token: str) -> bool:
        """Whether the token was revoked."""
        record = self.tokens.get(token)
        return record is not None and record.revoked

    def token_info(self, token: str) -> TokenRecord | None:
        """The stored record of a token, or None."""
        return self.tokens.get(token)

    def revoke_token(self, token: str, instance_id: str) -> None:
        """Revoke a token; revoking twice, or an unknown token, is a no-op (idempotent)."""
        self.revoke_calls[token] += 1
        record = self.tokens.get(token)
        if record is not None and record.instance_id == instance_id and not record.revoked:
            record.revoked = True
            self.revoked += 1
            for listener in self.revoke_listeners:
                listener(token)

    def sweep_expired(self) -> int:
        """Forget tokens that expired over EXPIRED_RETENTION_MS ago.

        QueryToken answers false for an expired token either way; the broker tells an expired
        token (CONNACK refused as `expired`, notice code 2) from one it never issued or forgot
        (`forged`, code 1), so a token is kept a while past its expiry, as the cloud does.
        """
        now = self.now_ms() - EXPIRED_RETENTION_MS
        dead = [t for t, r in self.tokens.items() if r.expire_ms <= now]
        for token in dead:
            del self.tokens[token]
        return len(dead)

    # sessions and device credentials
    def is_online(self, client_id: str) -> bool:
        """Whether a ClientId has a live broker session or is set online by the override."""
        return client_id in self.connected or client_id in self.online

    def touch_session(self, client_id: str, address: str | None = None) -> None:
        """A broker session connected (with its address) or ended: its last touch is now."""
        session = self.client_sessions.setdefault(client_id, ClientSession())
        session.last_touch_ms = self.now_ms()
        if address is not None:
            session.address = address

    def online_now(self) -> set[str]:
        """Every ClientId online now: live broker sessions and the override's."""
        return self.connected | self.online

    def set_online(self, client_ids: Iterable[str]) -> None:
        """Replace the set of ClientIds the emulator reports online (and log the change)."""
        now = self.now_ms()
        new = set(client_ids)
        for client_id in new ^ self.online:
            self.client_sessions.setdefault(client_id, ClientSession()).last_touch_ms = now
        self.online = new
        self.log_online(now)

    def log_online(self, now_ms: int | None = None) -> None:
        """Note who is online from now on (broker sessions and the override): the history."""
        stamp = self.now_ms() if now_ms is None else now_ms
        self.online_log.append((stamp, frozenset(self.online_now())))

    def online_at(self, when_ms: int) -> frozenset[str]:
        """The ClientIds online at `when_ms`, by the online log (empty before its start)."""
        found: frozenset[str] = frozenset()
        for stamp, online in self.online_log:
            if stamp > when_ms:
                break
            found = online
        return found

    def subscribers(self, topic: str) -> list[str]:
        """Online ClientIds with a subscription filter matching the topic name `topic`."""
        return sorted(
            cid
            for cid in self.online_now()
            if any(topic_matches(f, topic) for f in self.subscriptions.get(cid, {}))
        )

    def register_credential(self, instance_id: str, client_id: str) -> DeviceCredential:
        """The device's credential, created on first registration."""
        key = (instance_id, client_id)
        if key not in self.credentials:
            now = self.now_ms()
            self.credentials[key] = DeviceCredential(
                client_id=client_id,
                instance_id=instance_id,
                access_key_id="DC." + secrets.token_urlsafe(16),
                access_key_secret="DC." + secrets.token_urlsafe(24),
                create_ms=now,
                update_ms=now,
            )
        return self.credentials[key]

    def refresh_credential(self, credential: DeviceCredential) -> DeviceCredential:
        """Give the device a new secret."""
        credential.access_key_secret = "DC." + secrets.token_urlsafe(24)
        credential.update_ms = self.now_ms()
        return credential

    # groups and messages
    def create_group(self, instance_id: str, group_id: str) -> GroupRecord | None:
        """A new Group ID, or None when the instance has it already."""
        key = (instance_id, group_id)
        if key in self.groups:
            return None
        now = self.now_ms()
        self.groups[key] = GroupRecord(group_id, instance_id, now, now)
        return self.groups[key]

    def send_message(self, instance_id: str, topic: str, payload: bytes) -> SentMessage:
        """Keep an accepted message (the last 1000) and hand it to every listener."""
        message = SentMessage(
            secrets.token_hex(16).upper(),
            instance_id,
            topic,
            payload,
            sent_ms=self.now_ms(),
            deliveries=len(self.subscribers(topic)),
        )
        self.sent.append(message)
        for listener in list(self.message_listeners):
            listener(message)
        return message

    def set_iot_client_ids(self, iot_id: str, client_ids: Iterable[str]) -> None:
        """Register an IoT Platform device and its ClientIds (for QueryClientIds)."""
        now = self.now_ms()
        self.iot_client_ids[iot_id] = [(cid, now) for cid in client_ids]

    # faults
    def fault_for(self, action: str) -> Fault | None:
        """The fault that applies to `action`: its own, else the `*` one."""
        return self.faults.get(action) or self.faults.get("*")

    def reset_all(self) -> None:
        """Forget tokens, sessions, credentials, IoT devices, groups, messages, faults, nonces."""
        self.tokens.clear()
        self.issued = self.revoked = 0
        self.revoke_calls.clear()
        self.online.clear()
        self.credentials.clear()
        self.iot_client_ids.clear()
        self.groups.clear()
        self.sent.clear()
        self.subscriptions.clear()
        self.client_sessions.clear()
        self.online_log.clear()
        self.faults.clear()
        self._nonces.clear()
        self._limits.clear()

    # stats
    def reset_stats(self) -> None:
        """Zero every counter and peak (tokens and sessions stay)."""
        self.counters = Stats()
        if self.broker_stats is not None:
            self.broker_stats = BrokerStats()

    def stats(self) -> dict[str, Any]:
        """The statistics document of `GET /_emulator/stats`."""
        now = self.now_ms()
        live = sum(1 for r in self.tokens.values() if not r.revoked and r.expire_ms > now)
        s = self.counters
        document: dict[str, Any] = {
            "calls": dict(s.calls),
            "success": dict(s.success),
            "errors": dict(s.errors),
            "errorsByAction": {a: dict(c) for a, c in s.errors_by_action.items()},
            "maxPerSecond": dict(s.max_per_second),
            "account": {"calls": s.account_calls, "maxPerSecond": s.account_max_per_second},
            "tokens": {
                "live": live,
                "revoked": self.revoked,
                "issued": self.issued,
                "stored": len(self.tokens),
            },
            "qps": dict(self.qps),
        }
        if self.broker_stats is not None:
            document["broker"] = self.broker_stats.document(len(self.connected))
        return document
