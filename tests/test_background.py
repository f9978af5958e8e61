"""Background tasks are stopped even when a cancellation is dropped on the way."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from authserver import background


async def test_a_loop_whose_cancellation_was_dropped_by_wait_for_is_still_stopped() -> None:
    # The revocation worker's hang: the cancellation lands in asyncio.wait_for (redis-py's
    # socket timeout) as its future completes; Python 3.11 returns the result and the loop
    # goes on. Here the future completes right before the cancellation, in the same step,
    # which makes the race certain rather than likely.
    inner = asyncio.get_running_loop().create_future()
    rounds = 0

    async def worker() -> None:
        nonlocal rounds
        await _swallowing_wait(inner)
        while True:
            rounds += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # it is waiting on `inner` now
    inner.set_result(None)
    assert await background.stop([task])
    assert task.cancelled()
    assert rounds > 0  # the first cancellation was dropped: the loop ran on after it


async def _swallowing_wait(inner: asyncio.Future[None]) -> None:
    """asyncio.wait_for as redis-py calls it; on Python 3.12+, which fixed the bug, the
    `except` does what 3.11's wait_for does (3.11 never reaches it: it returned already)."""
    try:
        await asyncio.wait_for(asyncio.shield(inner), 10.0)
    except asyncio.CancelledError:
        if not inner.done():
            raise


async def test_tasks_that_end_at_the_first_cancellation_are_cancelled_once() -> None:
    cancels = 0

    async def idle() -> None:
        nonlocal cancels
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels += 1
            raise

    tasks = [asyncio.create_task(idle()) for _ in range(3)]
    await asyncio.sleep(0)
    assert await background.stop([None, *tasks])
    assert all(task.cancelled() for task in tasks)
    assert cancels == 3


async def test_a_task_that_refuses_to_end_is_reported_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="authserver.background"):
        assert not await background.stop([task], within=0.2)
    assert "stubborn" in caplog.text
    release.set()
    await task


async def test_cleanup_inside_finishing_runs_to_its_end_before_another_cancellation() -> None:
    # A cleanup that outlasts the re-cancel interval (a lock's release on a slow Redis).
    released = asyncio.Event()
    rounds = 0

    async def holder() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            with background.finishing():
                await asyncio.sleep(background.RECANCEL_INTERVAL * 4)
                released.set()

    async def looping() -> None:
        # The 3.11 drop again, then cleanup in `finishing`: cancelled once it leaves it.
        nonlocal rounds
        while True:
            with contextlib.suppress(asyncio.CancelledError), background.finishing():
                await asyncio.sleep(background.RECANCEL_INTERVAL * 2)
            rounds += 1
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(holder()), asyncio.create_task(looping())]
    await asyncio.sleep(0)
    assert await background.stop(tasks)
    assert released.is_set()
    assert all(task.cancelled() for task in tasks)
    assert rounds >= 1
