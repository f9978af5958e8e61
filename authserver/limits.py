"""GCRA, written once: the inbound rate limits' and the upstream quota's buckets.

A bucket is its theoretical arrival time (TAT) and a `Rate`: the interval between two
admissions at the sustained rate, and a tolerance (how far ahead of now the TAT may run: a
burst of `1 + tolerance / interval`). One step reserves a slot in several buckets at once,
in all of them or in none:

    slot = max(now, max_i(tat_i - tolerance_i))
    wait = slot - now                      refused when the slot is past what the caller accepts
    tat_i = max(tat_i, slot) + interval_i  for every bucket, when granted

An absent bucket is a full one (any TAT at or before now - tolerance). The rate limits
(`ratelimit`) take one bucket and accept no wait; the quota governor (`cloud.quota`) takes
an action's bucket and the account's, with a tolerance of 0, and waits for its slot.

The step is here twice, in the two languages it runs in: `reserve` for buckets in this
process, on the caller's clock, and `RESERVE_SCRIPT` for buckets in Redis, on the server's
`TIME` (one clock for every process sharing them), run by `SharedBuckets`, which also keeps
the outage rule both callers follow: when Redis fails, say so once, let the caller use its
local buckets, and try Redis again after `retry_interval`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from authserver.clock import Clock


@dataclass(frozen=True, slots=True)
class Rate:
    """One bucket's rule: seconds between admissions, and how far ahead of now it may run."""

    interval: float
    tolerance: float = 0.0


def reserve(
    tats: Sequence[float], rates: Sequence[Rate], now: float, latest: float
) -> tuple[float, list[float] | None]:
    """One GCRA step over several buckets: (the common slot, their new TATs or None).

    `latest` is the last acceptable slot on the caller's clock (`now` when no wait is
    accepted, a deadline otherwise); past it the TATs are None and nothing is reserved. The
    wait is `slot - now`. (Index loops: this runs on the hot path, for every request of a
    limited client IP, and a zip or a generator costs more than the step itself.)
    """
    slot = now
    for i, tat in enumerate(tats):
        due = tat - rates[i].tolerance
        if due > slot:
            slot = due
    if slot > latest:
        return slot, None
    new = list(tats)
    for i, tat in enumerate(tats):
        new[i] = (tat if tat > slot else slot) + rates[i].interval
    return slot, new


def next_slot(tats: Sequence[float], rates: Sequence[Rate], now: float) -> float:
    """When every bucket admits one more (`reserve`'s slot), reserving nothing."""
    return reserve(tats, rates, now, -math.inf)[0]


# The same step in Redis. KEYS: the buckets; ARGV[2i - 1], ARGV[2i]: interval and tolerance
# of KEYS[i], ARGV[2 #KEYS + 1]: the longest wait accepted, all in microseconds. Returns
# {1, wait} when every bucket was reserved, {0, wait} (nothing reserved) when the slot is
# further away than accepted. A bucket's key lives until its TAT: an expired key reads as 0,
# a full bucket, as the TAT it held would. Times are integers of microseconds (a double
# holds them exactly until the year 2255).
_STEP = """
local n = #KEYS
local tats = {}
local slot = now
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
  local due = tat - tonumber(ARGV[2 * i])
  if due > slot then slot = due end
end
local wait = slot - now
if wait > tonumber(ARGV[2 * n + 1]) then return {0, wait} end
for i = 1, n do
  local tat = math.max(tats[i], slot) + tonumber(ARGV[2 * i - 1])
  redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return {1, wait}
"""
RESERVE_SCRIPT = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""
    + _STEP
)
# The step at a time the caller gives (ARGV after the longest wait, in microseconds), to
# replay a sequence on a ManualClock and compare with `reserve`. Not for sharing buckets:
# processes sharing them must share the server's clock.
RESERVE_AT_SCRIPT = (
    """
local now = tonumber(ARGV[#ARGV])
"""
    + _STEP
)


def _micros(seconds: float) -> int:
    return round(seconds * 1e6)


def script_args(rates: Sequence[Rate], max_wait: float) -> list[int]:
    """RESERVE_SCRIPT's ARGV for these buckets and the longest wait accepted (seconds)."""
    args = [us for rate in rates for us in (_micros(rate.interval), _micros(rate.tolerance))]
    args.append(math.floor(max(0.0, max_wait) * 1e6))
    return args


class SharedBuckets:
    """Buckets shared by every process through Redis, and what to do when Redis fails.

    `reserve` answers None when Redis cannot: it failed just now (counted in `errors`,
    logged once per outage as "`owner`: Redis failed (...); `fallback`") or failed less than
    `retry_interval` seconds ago. The caller then uses its local buckets.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        clock: Clock,
        log: logging.Logger,
        owner: str,
        fallback: str,
        back: str,
        retry_interval: float = 5.0,
    ) -> None:
        self._script = client.register_script(RESERVE_SCRIPT)
        self._clock = clock
        self._log = log
        self._owner = owner
        self._fallback = fallback
        self._back = back
        self._retry_interval = retry_interval
        self._down_until = -math.inf
        self.down = False
        self.errors = 0

    def usable(self) -> bool:
        """Whether Redis is to be asked now (not within `retry_interval` of a failure)."""
        return self._clock.monotonic() >= self._down_until

    async def reserve(
        self, keys: Sequence[str], rates: Sequence[Rate], max_wait: float = 0.0
    ) -> tuple[bool, float] | None:
        """(granted, seconds to wait for the slot) from the shared buckets; None without Redis."""
        if not self.usable():
            return None
        try:
            args = script_args(rates, max_wait)
            granted, wait_us = await self._script(keys=list(keys), args=args)
        except (redis.exceptions.RedisError, OSError) as err:
            self._failed(err)
            return None
        if self.down:
            self.down = False
            self._log.warning("%s: Redis is back, %s", self._owner, self._back)
        return bool(int(granted)), int(wait_us) / 1e6

    def _failed(self, err: Exception) -> None:
        self.errors += 1
        self._down_until = self._clock.monotonic() + self._retry_interval
        if not self.down:
            self.down = True
            self._log.warning(
                "%s: Redis failed (%s); %s", self._owner, type(err).__name__, self._fallback
            )
