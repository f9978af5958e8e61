"""Waiting in tests: one `eventually()` for conditions that a background task brings about.

Tests wait on a condition, never on a sleep: a fixed sleep is either too short on a loaded
machine (a flaky failure) or longer than needed (a slow suite), and "sleep, then assert that
nothing happened" proves nothing. `within` is a guard against a hang, not a claim about
speed: it is generous on purpose, and a test must not pass or fail by how fast things are.
To prove that something does NOT happen, drive the code with a ManualClock or an explicit
event, so the answer is decided rather than timed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Condition = Callable[[], bool | Awaitable[bool]]

POLL_INTERVAL = 0.01
HANG_GUARD = 30.0


async def eventually(condition: Condition, *, within: float = HANG_GUARD, what: str = "") -> None:
    """Return once `condition()` (sync or async) is true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"condition never became true: {what or condition!r}")
        await asyncio.sleep(POLL_INTERVAL)
