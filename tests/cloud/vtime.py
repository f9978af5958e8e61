"""Virtual time for governor tests: sleeps advance a ManualClock instead of waiting."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterable

from authserver.clock import ManualClock

# Loop turns given to woken tasks before time moves on: enough for a waiter handed a turn
# to wake, pass its asyncio.wait and go to sleep on its slot.
SETTLE = 50


class VirtualTime:
    """A scheduler of sleepers on a ManualClock; `late(n)` adds lateness to the n-th sleep."""

    def __init__(self, clock: ManualClock, late: Callable[[int], float] | None = None) -> None:
        self.clock = clock
        self._late = late or (lambda _n: 0.0)
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps = 0

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` (plus any injected lateness) of virtual time."""
        when = self.clock.monotonic() + seconds + self._late(self.sleeps)
        self.sleeps += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (when, next(self._seq), future))
        await future

    async def run(self, coros: Iterable[Awaitable[object]]) -> list[object]:
        """Run the coroutines concurrently, advancing the clock whenever all are asleep."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(SETTLE):
                await asyncio.sleep(0)
            while self._heap and self._heap[0][2].done():
                heapq.heappop(self._heap)  # a sleep that was cancelled (a lost race)
            if self._heap and not all(t.done() for t in tasks):
                when, _, future = heapq.heappop(self._heap)
                self.clock.advance(max(0.0, when - self.clock.monotonic()))
                future.set_result(None)
        return await asyncio.gather(*tasks, return_exceptions=True)


def max_in_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most events in any closed window `[t, t + width]`."""
    ordered = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j + 1 < len(ordered) and ordered[j + 1] <= start + width:
            j += 1
        best = max(best, j - i + 1)
    return best
