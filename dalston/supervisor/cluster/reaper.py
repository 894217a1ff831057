"""`Reaper`: removes workers whose liveness lapsed, on a timer, so their slots and sessions are reclaimed.

Reaping is one atomic step in the registry, so any number of gateways may each run a reaper. A failed round
(Redis briefly away) is logged and the next round tries again; the reaper itself never dies of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from dalston.actors.cancellation import cancel_and_wait
from dalston.supervisor.cluster.registry import NodeRegistry, RegistryError

log = structlog.get_logger(__name__)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reaper_crashed", exc_info=task.exception())


@dataclass(frozen=True)
class ReaperStatistics:
    rounds: int
    failed_rounds: int
    workers_reaped: int
    running: bool


class Reaper:
    def __init__(self, registry: NodeRegistry, interval_s: float = 2.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._registry = registry
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._rounds = 0
        self._failed_rounds = 0
        self._workers_reaped = 0
        self._stopping = asyncio.Event()

    async def run_once(self) -> list[str]:
        """One round: reap now and return the ids of the workers removed."""
        self._rounds += 1
        reaped = await self._registry.reap()
        self._workers_reaped += len(reaped)
        if reaped:
            log.warning("workers_reaped", worker_ids=reaped)
        return reaped

    async def run(self) -> None:
        """Reap every `interval_s` until `stop()` (or cancellation)."""
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except RegistryError as exc:
                self._failed_rounds += 1
                log.warning("reap_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stopping.wait()

    def start(self) -> None:
        """Start the background task (idempotent while it runs)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="registry-reaper")
            self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Cancel the background task and wait for it to finish."""
        task, self._task = self._task, None
        if task is None:
            return
        # The flag, not only the cancel: redis-py can swallow a CancelledError that lands mid-command
        # (redis/redis-py#2028), and the loop must end all the same.
        self._stopping.set()
        await cancel_and_wait(task)

    def statistics(self) -> ReaperStatistics:
        running = self._task is not None and not self._task.done()
        return ReaperStatistics(self._rounds, self._failed_rounds, self._workers_reaped, running)
