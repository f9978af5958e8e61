"""How the gateway's background tasks are stopped: cancelled until they end, within a bound.

One cancellation is not always enough. On Python 3.11, `asyncio.wait_for` returns its
future's result and drops a cancellation that arrives as that future completes (CPython
gh-86296, fixed in 3.12), and redis-py sends every command through `wait_for` when a socket
timeout is set, as ours is. A loop whose cancellation was dropped there goes on forever (the
revocation worker did, and hung the test run's teardown). So the cancellation is repeated
until the task ends; a task still running after the bound is logged and left alone, because
shutdown must not hang on a Redis connection that never answers.

A repeated cancellation would also land in cleanup that must run to its end: the release
of an issuance lock (left behind, it makes every other gateway wait out its TTL), the
close of a connection. Such cleanup runs inside `finishing()`, and a task in it is not
cancelled again until it leaves it (the bound still holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
# A dropped cancellation is repeated after this long (not while the task is `finishing`).
RECANCEL_INTERVAL = 0.05

# Tasks running cleanup that must not be interrupted (`finishing`).
_finishing: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()


@contextlib.contextmanager
def finishing() -> Iterator[None]:
    """Cleanup of the current task that `stop` must not cancel (a lock's release).

    Keep it short and bounded: `stop` still gives up on the task after its bound.
    """
    task = asyncio.current_task()
    if task is None or task in _finishing:  # not in a task, or nested: the outer one owns it
        yield
        return
    _finishing.add(task)
    try:
        yield
    finally:
        _finishing.discard(task)


async def stop(tasks: Iterable[asyncio.Future[Any] | None], within: float = STOP_TIMEOUT) -> bool:
    """Cancel `tasks` (None entries are skipped) until all have ended, for at most `within` seconds.

    Returns whether they all ended. Their results and exceptions are not raised here.
    """
    running = {task for task in tasks if task is not None and not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while running:
        for task in running:
            if task not in _finishing:
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
