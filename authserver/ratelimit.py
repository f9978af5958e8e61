"""Inbound rate limits: per client IP, per subject, and each subject's mint budget (GCRA).

Three limits, so the hot path stays cheap and the upstream quota stays protected:

- **per client IP**, on every request, in this process: a dict lookup and a little
  arithmetic, before the JWT is verified (an attacker without a valid token pays nothing
  but a lookup).
- **per subject**, in this process, on the requests the answer cache cannot answer (see
  `web.device`): answered requests cost a lookup, whoever asks how often.
- **the mint budget**, per subject, only when a request is about to call ApplyToken (a new
  token, a renewal): in one bucket shared through Redis (a GCRA script on the server's
  `TIME`, one round trip per request; the step is `authserver.limits`') when Redis is
  configured, else in this process. A device asking for ever-different token shapes (topic
  subsets, lifetimes, clientIds) to defeat the caches is refused before it spends the quota
  everyone shares; requests that need no new token never meet it. With Redis, the client
  IP is counted in a shared bucket too on that path.

The upstream check learns who is asking from a context variable set by `asking`: the
token service mints in a task created from the request's context, so the value follows the
request into the single-flight without being threaded through the token service, and a
request is charged once however many tokens it mints. When Redis fails the mint budget is
kept per process (and the shared IP bucket skipped: the local one already ran), with one
warning per outage and a retry after `redis_retry_interval`: a Redis outage must not turn
into 429s or 500s.

Client IP: the peer address, unless the peer is a trusted proxy (`trusted_proxies`, CIDRs);
then the right-most address of `X-Forwarded-For` (every header line, in order) that is not
itself a trusted proxy: the left part is whatever the client wrote, and proves nothing.
Addresses are normalised (`address`), so one client has one key however a proxy spells it.
An IPv4 client is keyed by its address; an IPv6 client by its prefix (`ipv6_prefix`, /64 by
default: the usual customer allocation, which one attacker holds whole), or the 2^64 addresses
of a /64 would be as many buckets.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import ipaddress
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from authserver.clock import Clock
from authserver.errors import RateLimited
from authserver.limits import Rate, SharedBuckets, reserve
from authserver.settings import DEFAULT_IPV6_PREFIX

log = logging.getLogger(__name__)

SUBJECT, IP, MINT = "subject", "ip", "mint"
KEY_PREFIX = "authserver:rl:"
DEFAULT_MAX_KEYS = 100_000
UNKNOWN_IP = "unknown"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# The longest spelling of an address a proxy writes: a full IPv6 with a zone and a port.
_MAX_ADDRESS_TEXT = 64


class _Asking:
    """Who the current request is, for the upstream check; charged once per request."""

    __slots__ = ("charge", "keys")

    def __init__(self, keys: tuple[tuple[str, str], ...]) -> None:
        self.keys = keys
        self.charge: asyncio.Future[None] | None = None


_ASKING: contextvars.ContextVar[_Asking | None] = contextvars.ContextVar(
    "ratelimit_asking", default=None
)


@dataclass(frozen=True)
class Limit:
    """A sustained rate (requests per second; 0 disables) and a burst on top of it."""

    rate: float
    burst: int = 1

    @property
    def enabled(self) -> bool:
        """Whether this limit applies at all."""
        return self.rate > 0

    @property
    def interval(self) -> float:
        """Seconds between two requests at the sustained rate."""
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        """How far ahead of now a bucket may run: `burst - 1` intervals."""
        return self.interval * (max(self.burst, 1) - 1)

    @property
    def bucket(self) -> Rate:
        """This limit as a GCRA bucket's rule."""
        return Rate(self.interval, self.tolerance)


class LocalBuckets:
    """GCRA buckets of one scope in this process: key -> theoretical arrival time.

    Bounded: past `max_keys`, buckets that have fully refilled (equivalent to absent) are
    dropped, then the oldest; a flood of new keys costs memory, never correctness.
    """

    __slots__ = ("_clock", "_max_keys", "_rate", "_tat")

    def __init__(self, limit: Limit, clock: Clock, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._clock = clock
        self._rate = (limit.bucket,)
        self._max_keys = max_keys
        self._tat: dict[str, float] = {}

    def __len__(self) -> int:
        """How many buckets are held."""
        return len(self._tat)

    def take(self, key: str) -> float:
        """Count one request; 0.0 when admitted, else the seconds until it would be."""
        now = self._clock.monotonic()
        slot, tats = reserve((self._tat.get(key, now),), self._rate, now, now)
        if tats is None:
            return slot - now
        self._tat[key] = tats[0]
        if len(self._tat) > self._max_keys:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        excess = len(self._tat) - self._max_keys * 9 // 10
        if excess > 0:
            for key in list(self._tat)[:excess]:
                del self._tat[key]


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


def address(text: str) -> Address | None:
    """The address a proxy or socket spelled, one value per address; None if not an address.

    A port goes (`1.2.3.4:5678`, `[::1]:80`), an IPv4-mapped IPv6 is its IPv4, an IPv6 zone
    goes, and every IPv6 spelling of one address (zero-compressed or not) is the same value.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_TEXT:
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in host or (rest and not (rest[0] == ":" and _port(rest[1:]))):
            return None  # brackets are for IPv6 only (RFC 3986)
        text = host
    elif text.count(":") == 1:
        host, _colon, port = text.partition(":")
        if not _port(port):
            return None
        text = host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return mapped if mapped is not None else ipaddress.IPv6Address(int(ip))
    return ip


def _bucket_key(scope: str, key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{KEY_PREFIX}{{{scope}:{digest}}}"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RateLimiter:
    """The gateway's inbound limits: per client IP, per subject, and the mint budget."""

    def __init__(
        self,
        *,
        subject: Limit,
        ip: Limit,
        clock: Clock,
        mint: Limit = Limit(0),
        trusted_proxies: Iterable[Network] = (),
        redis: aioredis.Redis | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        redis_retry_interval: float = 5.0,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    ) -> None:
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError(f"an IPv6 prefix length is 0 to 128, not {ipv6_prefix}")
        self.limits = {SUBJECT: subject, IP: ip, MINT: mint}
        self._clock = clock
        self._trusted = tuple(trusted_proxies)
        self._ipv6_prefix = ipv6_prefix
        self._ipv6_host_bits = 128 - ipv6_prefix
        self._local = {
            scope: LocalBuckets(limit, clock, max_keys)
            for scope, limit in self.limits.items()
            if limit.enabled
        }
        self._ip_buckets = self._local.get(IP)
        # Whether the local tier limits client IPs (off by default; see `check_ip`).
        self.per_ip = self._ip_buckets is not None
        self._subject_buckets = self._local.get(SUBJECT)
        # Before an upstream call: the scopes to charge, and which of them fall back to this
        # process's buckets without Redis (the IP was already counted locally).
        self._upstream = tuple(s for s in (MINT, IP) if self.limits[s].enabled)
        self._upstream_local = {MINT: self._local[MINT]} if mint.enabled else {}
        self._shared = (
            None
            if redis is None
            else SharedBuckets(
                redis,
                clock=clock,
                log=log,
                owner="rate limiter",
                fallback="limiting per process until it is back",
                back="limits are shared again",
                retry_interval=redis_retry_interval,
            )
        )
        self.refused: Counter[str] = Counter()

    @property
    def redis_errors(self) -> int:
        """How many times Redis failed a shared check."""
        return 0 if self._shared is None else self._shared.errors

    @property
    def mode(self) -> str:
        """`local` (no Redis), `shared` or `local-fallback` (Redis failing)."""
        if self._shared is None:
            return "local"
        return "local-fallback" if self._shared.down else "shared"

    def client_ip(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """Who is calling: the peer, or what trusted proxies in front of us say it is.

        `forwarded_for` holds every `X-Forwarded-For` line, in order. Walking from the right,
        the first address that is not a trusted proxy is the client. When the walk meets
        what is not an address, or runs out, the client is the last proxy walked: that
        proxy is the nearest hop we can vouch for, and text it relayed never becomes a key.
        """
        return str(self._client(peer, forwarded_for))

    def _client(self, peer: str | None, forwarded_for: Sequence[str]) -> Address | str:
        if peer is None:
            return UNKNOWN_IP
        nearest = address(peer)
        if nearest is None:
            return peer  # not an IP socket (a Unix socket): one key for everything on it
        if not self._trusted or not forwarded_for or not self._is_trusted(nearest):
            return nearest
        hops = [hop for line in forwarded_for for hop in line.split(",")]
        for hop in reversed(hops):
            if not hop.strip():
                continue  # `a,,b`: an empty list element, nothing to walk past
            ip = address(hop)
            if ip is None:
                break
            if not self._is_trusted(ip):
                return ip
            nearest = ip
        return nearest

    def ip_key(self, client: str) -> str:
        """The bucket key of a client address: an IPv4 address, or its IPv6 prefix."""
        ip = address(client)
        return client if ip is None else self._key(ip)

    def _key(self, client: Address | str) -> str:
        bits = self._ipv6_host_bits
        if bits and isinstance(client, ipaddress.IPv6Address):
            network = ipaddress.IPv6Address(int(client) >> bits << bits)
            return f"{network}/{self._ipv6_prefix}"
        return str(client)

    def _is_trusted(self, ip: Address) -> bool:
        return any(ip in network for network in self._trusted)

    def check_ip(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """Count a request of the calling IP (local tier); its bucket key, or RateLimited.

        `forwarded_for`: every `X-Forwarded-For` line (`request.headers.getall`). The key
        (`ip_key`: the address, or an IPv6 client's prefix) is what the mint budget's shared
        IP bucket counts too.
        """
        if self._ip_buckets is None:
            return peer or UNKNOWN_IP
        ip = self._key(self._client(peer, forwarded_for))
        self._refuse_if(IP, self._ip_buckets.take(ip))
        return ip

    def check_subject(self, subject: str) -> None:
        """Count a request of a verified subject that the answer cache could not answer."""
        if self._subject_buckets is not None:
            self._refuse_if(SUBJECT, self._subject_buckets.take(subject))

    def asking(self, subject: str, ip: str | None) -> None:
        """Name who the current request is, for `check_shared`, before it may go upstream.

        `ip` is None when IPs are not limited; only the subject's mint budget counts then.
        """
        keys = ((MINT, subject),) if ip is None else ((MINT, subject), (IP, ip))
        _ASKING.set(_Asking(keys))

    async def check_shared(self) -> None:
        """Before ApplyToken: charge the asking subject's mint budget (and IP, with Redis).

        A request is counted once however many tokens it mints (a read and a write token
        are minted side by side, each in its own task sharing the request's marker); past
        the budget it is refused with RateLimited, `limit` naming the scope.
        """
        asking = _ASKING.get()
        if asking is None or not self._upstream:
            return
        if asking.charge is None:
            # The other mints of this request wait for the same answer, 429 included.
            asking.charge = asyncio.ensure_future(self._charge(asking.keys))
        await asking.charge

    async def _charge(self, asking: tuple[tuple[str, str], ...]) -> None:
        for scope, key in asking:
            limit = self.limits[scope]
            if not limit.enabled:
                continue
            wait = await self._shared_wait(scope, key, limit)
            if wait is None:  # no Redis, or Redis failing
                local = self._upstream_local.get(scope)
                if local is None:
                    continue
                wait = local.take(key)
            self._refuse_if(scope, wait)

    async def _shared_wait(self, scope: str, key: str, limit: Limit) -> float | None:
        """Seconds to wait by the shared bucket (0.0 admitted), None when Redis cannot say."""
        if self._shared is None:
            return None
        step = await self._shared.reserve([_bucket_key(scope, key)], (limit.bucket,))
        return None if step is None else step[1]

    def _refuse_if(self, scope: str, wait: float) -> None:
        if wait <= 0:
            return
        self.refused[scope] += 1
        limit = self.limits[scope]
        if scope == MINT:
            detail = (
                f"too many requests needing a new token for this subject: at most "
                f"{limit.rate * 60:g} a minute (burst {limit.burst}); retry later"
            )
        else:
            detail = (
                f"too many requests for this {scope}: at most {limit.rate:g}/s "
                f"(burst {limit.burst}); retry later"
            )
        raise RateLimited(detail, headers=_retry_after(wait), extra={"limit": scope})
