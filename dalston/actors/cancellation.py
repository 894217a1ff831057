"""Cancelling a helper task without swallowing a cancellation meant for the caller."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has finished.

    Its own `CancelledError` is expected and absorbed; one aimed at the caller (it is being cancelled itself
    while it waits) propagates, as `suppress(CancelledError)` would wrongly not let it.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
