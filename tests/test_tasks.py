"""`cancel_and_wait`: a task that swallows a cancellation still ends."""

from __future__ import annotations

import asyncio

from core.tasks import cancel_and_wait


async def test_a_task_that_swallows_its_first_cancellation_still_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what redis-py does, at times, inside a call

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout_s=2.0) == set()
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_ends_is_given_back_after_the_timeout() -> None:
    listening = True

    async def deaf() -> None:
        while listening:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(deaf())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout_s=0.3) == {task}
    listening = False  # the test's own clean-up
    await task


async def test_failed_and_finished_tasks_are_collected() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    loop = asyncio.get_running_loop()
    done, failed = loop.create_task(asyncio.sleep(0)), loop.create_task(fails())
    await asyncio.sleep(0.01)
    assert await cancel_and_wait([done, failed]) == set()
