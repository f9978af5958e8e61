"""The quota governor: never send a call the upstream would throttle, across all processes.

Each limit is a GCRA (leaky) bucket with a burst of one: calls of one action are spaced by
`(1 + margin) / limit` seconds (margin 10% by default), so any sliding one-second window sees
at most `limit` of them even when event-loop lag bunches some calls on the way (a 5% margin
was crossed once in a loaded test run: 201 calls in one window at a 200/s limit). Every call
takes a slot in its action's bucket (when the action has a limit) and in the account bucket
(the vendor's 300 calls/s per source IP, over which the IP is blocked, not throttled), both at
the same instant or neither.

A caller passes an absolute deadline on `clock.monotonic()`; when its slot would come later,
it gets `UpstreamThrottled` at once with the time until a slot would be free, and nothing is
reserved.

Local mode (no Redis) also keeps the times of the last grants per bucket and holds back a
caller whose slot came but whose wake-up was late enough to crowd the window (a busy event
loop). Redis mode reserves slots with one Lua script on the server's `TIME`, in keys sharing
the hash tag `{<key prefix>}` (Redis Cluster safe), so every process shares one bucket.

When Redis fails, the governor falls back to local buckets scaled by `fallback_fraction`
(set it to 1 / the number of gateway processes sharing a source IP, so the processes together
still stay under the account limit that would get the IP blocked), logs one warning per
outage, and tries Redis again after `redis_retry_interval` seconds. Failing closed instead
would turn a Redis outage into a full outage although the upstream is still protected.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio
import redis.exceptions

from authserver.clock import Clock, SystemClock
from authserver.cloud.errors import UpstreamThrottled

log = logging.getLogger(__name__)

DEFAULT_LIMITS: dict[str, float] = {
    "ApplyToken": 100,
    "QueryToken": 100,
    "RevokeToken": 5,
    "QuerySessionByClientId": 500,
    "BatchQuerySessionByClientIds": 100,
    "QueryClientIds": 10,
    # 002 section 8
    "CreateGroupId": 10,
    "DeleteGroupId": 10,
    "ListGroupId": 10,
    "SendMessage": 1000,
    # 001: the legacy management API throttles each call at about 30 a minute
    "OnsMqttGroupIdCreate": 0.5,
    "OnsMqttGroupIdDelete": 0.5,
    "OnsMqttGroupIdList": 0.5,
    "OnsMqttQueryHistoryOnline": 0.5,
    "OnsMqttQueryClientByTopic": 0.5,
    "OnsMqttQueryClientByGroupId": 0.5,
    "OnsMqttQueryClientByClientId": 0.5,
    "OnsMqttQueryMsgTransTrend": 0.5,
}
ACCOUNT_BUCKET = "account"

Sleep = Callable[[float], Awaitable[None]]

# KEYS: the bucket keys; ARGV[i]: emission interval of KEYS[i] in microseconds,
# ARGV[#KEYS + 1]: the longest wait the caller accepts, in microseconds.
# Returns {1, wait_us} when slots were reserved in every bucket, {0, wait_us} (nothing
# reserved) when the common slot is further away than the caller accepts.
RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = now
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat > slot then slot = tat end
end
local wait = slot - now
if wait > tonumber(ARGV[#KEYS + 1]) then
  return {0, wait}
end
for i = 1, #KEYS do
  local tat = slot + tonumber(ARGV[i])
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', ttl)
end
return {1, wait}
"""


class _Bucket:
    """One local GCRA bucket with the times of its last grants."""

    __slots__ = ("grants", "interval", "tat", "window")

    def __init__(self, limit: float, margin: float) -> None:
        self.interval = (1.0 + margin) / limit
        size = max(1, math.floor(limit))
        # The hard check on actual grant times keeps half the margin for network jitter.
        self.window = size / limit * (1.0 + margin / 2)
        self.grants: deque[float] = deque(maxlen=size)
        self.tat = -math.inf

    def free_at(self) -> float:
        """When the window of recent grants lets one more through."""
        if len(self.grants) < (self.grants.maxlen or 1):
            return -math.inf
        return self.grants[0] + self.window


class QuotaGovernor:
    """Per-action and account-wide upstream rate limits; shared through Redis when given."""

    def __init__(
        self,
        limits: Mapping[str, float] | None = None,
        *,
        account_limit: float = 300,
        clock: Clock | None = None,
        redis: redis.asyncio.Redis | None = None,
        key_prefix: str = "authserver:quota:",
        margin: float = 0.10,
        fallback_fraction: float = 1.0,
        redis_retry_interval: float = 5.0,
        sleep: Sleep | None = None,
    ) -> None:
        merged = {**DEFAULT_LIMITS, **(limits or {})}
        for name, value in [*merged.items(), ("account_limit", account_limit)]:
            if not value > 0:
                raise ValueError(f"quota limit for {name} must be positive, got {value!r}")
        if not 0 < fallback_fraction <= 1:
            raise ValueError("fallback_fraction must be in (0, 1]")
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.limits: dict[str, float] = merged
        self.account_limit = float(account_limit)
        self.margin = margin
        self._clock: Clock = clock or SystemClock()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._redis = redis
        tag = key_prefix.rstrip(":") or "authserver:quota"
        self._key_prefix = "{" + tag + "}:"
        self._script = redis.register_script(RESERVE_SCRIPT) if redis is not None else None
        self._redis_retry_interval = redis_retry_interval
        self._redis_down_until = -math.inf
        self._redis_down = False
        # Without Redis this process owns the whole quota; as a fallback, only its share.
        scale = 1.0 if redis is None else fallback_fraction
        self._scale = scale
        self._local: dict[str, _Bucket] = {
            name: _Bucket(limit * scale, margin) for name, limit in merged.items()
        }
        self._local[ACCOUNT_BUCKET] = _Bucket(self.account_limit * scale, margin)
        self.acquired: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self.wait_seconds: defaultdict[str, float] = defaultdict(float)
        self.refused: Counter[str] = Counter()
        self.redis_errors = 0

    @property
    def mode(self) -> str:
        """`local` (no Redis), `redis` (shared buckets) or `local-fallback` (Redis failing)."""
        if self._redis is None:
            return "local"
        return "local-fallback" if self._redis_down else "redis"

    async def acquire(self, action: str, deadline: float) -> None:
        """Wait for a slot of `action` before `deadline` (monotonic), or raise at once."""
        buckets = [action, ACCOUNT_BUCKET] if action in self.limits else [ACCOUNT_BUCKET]
        if self._redis_usable():
            try:
                wait = await self._reserve_redis(action, buckets, deadline)
            except (redis.exceptions.RedisError, OSError) as err:
                self._redis_failed(err)
            else:
                await self._wait(action, wait)
                self.acquired[action] += 1
                return
        await self._acquire_local(action, buckets, deadline)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: grants, waits, refusals per action, and the mode in use."""
        return {
            "mode": self.mode,
            "limits": dict(self.limits),
            "account_limit": self.account_limit,
            "acquired": dict(self.acquired),
            "waits": dict(self.waits),
            "wait_seconds": dict(self.wait_seconds),
            "refused": dict(self.refused),
            "redis_errors": self.redis_errors,
        }

    async def _acquire_local(self, action: str, names: list[str], deadline: float) -> None:
        buckets = [self._local[name] for name in names]
        now = self._clock.monotonic()
        slot = max(now, *(b.tat for b in buckets))
        if slot > deadline:
            self._refuse(action, slot - now)
        for bucket in buckets:
            bucket.tat = slot + bucket.interval
        while True:
            now = self._clock.monotonic()
            if slot > now:
                await self._wait(action, slot - now)
                continue
            # Our slot has come; a late wake-up must still not crowd the window.
            slot = max(b.free_at() for b in buckets)
            if slot <= now:
                for bucket in buckets:
                    bucket.grants.append(now)
                self.acquired[action] += 1
                return
            if slot > deadline:
                self._refuse(action, slot - now)

    async def _reserve_redis(self, action: str, names: list[str], deadline: float) -> float:
        assert self._script is not None
        max_wait = max(0.0, deadline - self._clock.monotonic())
        keys = [self._key_prefix + name for name in names]
        args = [round(self._local_interval_unscaled(name) * 1e6) for name in names]
        args.append(math.floor(max_wait * 1e6))
        granted, wait_us = await self._script(keys=keys, args=args)
        if self._redis_down:
            self._redis_down = False
            log.warning("quota governor: Redis is back, buckets are shared again")
        wait = int(wait_us) / 1e6
        if not int(granted):
            self._refuse(action, wait)
        return wait

    def _local_interval_unscaled(self, name: str) -> float:
        limit = self.account_limit if name == ACCOUNT_BUCKET else self.limits[name]
        return (1.0 + self.margin) / limit

    async def _wait(self, action: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self.waits[action] += 1
        self.wait_seconds[action] += seconds
        await self._sleep(seconds)

    def _refuse(self, action: str, retry_after: float) -> None:
        self.refused[action] += 1
        raise UpstreamThrottled(
            f"no upstream quota for {action} within the deadline",
            retry_after=retry_after,
            extra={"action": action},
        )

    def _redis_usable(self) -> bool:
        return self._redis is not None and self._clock.monotonic() >= self._redis_down_until

    def _redis_failed(self, err: Exception) -> None:
        self.redis_errors += 1
        self._redis_down_until = self._clock.monotonic() + self._redis_retry_interval
        if not self._redis_down:
            self._redis_down = True
            log.warning(
                "quota governor: Redis failed (%s); using local buckets at %.0f%% of the limits",
                type(err).__name__,
                100 * self._scale,
            )
