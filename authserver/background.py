"""How the gateway's background tasks are stopped: cancelled until they end, within a bound.

One cancellation is not always enough. On Python 3.11, `asyncio.wait_for` returns its
future's result and drops a cancellation that arrives as that future completes (CPython
gh-86296, fixed in 3.12), and redis-py sends every command through `wait_for` when a socket
timeout is set, as ours is. A loop whose cancellation was dropped there goes on forever (the
revocation worker did, and hung the test run's teardown). So the cancellation is repeated
until the task ends; a task still running after the bound is logged and left alone, because
shutdown must not hang on a Redis connection that never answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
# A dropped cancellation is repeated after this long; cleanup that outlasts it (a task's
# `finally` closing a connection) is interrupted, which at shutdown loses nothing.
RECANCEL_INTERVAL = 0.05


async def stop(tasks: Iterable[asyncio.Future[Any] | None], within: float = STOP_TIMEOUT) -> bool:
    """Cancel `tasks` (None entries are skipped) until all have ended, for at most `within` seconds.

    Returns whether they all ended. Their results and exceptions are not raised here.
    """
    running = {task for task in tasks if task is not None and not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while running:
        for task in running:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning(
                "%d background task(s) still running after %.1f s: %s",
                len(running),
                within,
                ", ".join(sorted(_name(task) for task in running)),
            )
            return False
        _done, running = await asyncio.wait(running, timeout=min(RECANCEL_INTERVAL, remaining))
    return True


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
