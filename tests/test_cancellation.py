"""Stopping a helper task: its own cancellation is absorbed, one aimed at the caller is not."""

from __future__ import annotations

import asyncio

import pytest

from dalston.actors.cancellation import cancel_and_wait


async def test_cancel_and_wait_absorbs_the_helpers_own_cancellation() -> None:
    helper = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_wait(helper)
    assert helper.cancelled()


async def test_a_caller_cancelled_while_it_waits_for_its_helper_is_still_cancelled() -> None:
    finishing = asyncio.Event()

    async def slow_to_finish() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await finishing.wait()  # cleanup that takes a while after the cancel

    async def caller() -> str:
        helper = asyncio.create_task(slow_to_finish())
        await asyncio.sleep(0)
        await cancel_and_wait(helper)
        return "went on as if nothing happened"

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)  # the caller is inside cancel_and_wait now
    task.cancel()
    await asyncio.sleep(0)
    finishing.set()
    with pytest.raises(asyncio.CancelledError):
        await task
