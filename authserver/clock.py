"""Injectable clocks: wall time for expiries, monotonic time for rates and deadlines.

Every wait in the package goes through the clock, in one of two kinds:

- `sleep(seconds)`: a wait on the way to an answer (a quota slot, a retry backoff, a lock
  poll). A ManualClock jumps ahead by it, so code under test is never held up by time.
- `idle(seconds)`: the pause between rounds of a background loop (a JWKS refresh, a policy
  poll, a reconnect). A ManualClock waits there until the test advances time past its end:
  a loop that jumped ahead would race the clock forward on its own (a 1 s poll turning one
  real second into hours), so with a ManualClock background loops move only when told to.

On the system clock both are `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """What the code asks of a clock; tests pass a ManualClock."""

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock, on the way to an answer."""
        ...

    async def idle(self, seconds: float) -> None:
        """Wait `seconds` on this clock between rounds of a background loop."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait for real."""
        await asyncio.sleep(seconds)

    async def idle(self, seconds: float) -> None:
        """Wait for real."""
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0
        self._idlers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        """Seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return self._mono

    async def sleep(self, seconds: float) -> None:
        """Jump ahead instead of waiting, then let other tasks run."""
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)

    async def idle(self, seconds: float) -> None:
        """Wait until the clock has been advanced `seconds` past now."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._idlers, (self._mono + max(seconds, 0.0), next(self._seq), future))
        self._wake()
        await future

    @property
    def idlers(self) -> int:
        """How many background loops wait for this clock to move."""
        return sum(1 for *_, future in self._idlers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move both clocks forward, and wake the idlers whose time has come."""
        self._wall += seconds
        self._mono += seconds
        self._wake()

    def _wake(self) -> None:
        while self._idlers and self._idlers[0][0] <= self._mono:
            *_, future = heapq.heappop(self._idlers)
            if not future.done():
                future.set_result(None)
