"""Which models the cluster serves, as the gateway sees it: cached briefly, refreshed by one caller at a time.

`known`: models a worker has ever registered with: a client asking for one of these gets `no_capacity` while no
worker serving it is up (try again), never `unsupported_model`. `ready`: models a live, ready worker has now.
"""

from __future__ import annotations

import asyncio
import time

from dalston.supervisor.cluster.registry import ModelAvailability, NodeRegistry

CACHE_S = 2.0


class ModelCache:
    def __init__(self, registry: NodeRegistry, cache_s: float = CACHE_S) -> None:
        self._registry = registry
        self._cache_s = cache_s
        self._value: ModelAvailability | None = None
        self._fetched_at = 0.0
        self._refreshing: asyncio.Task[ModelAvailability] | None = None

    async def get(self) -> ModelAvailability:
        if self._value is not None and time.monotonic() - self._fetched_at <= self._cache_s:
            return self._value
        if self._refreshing is None:  # single flight: the callers arriving meanwhile share this one
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refreshing)

    async def _refresh(self) -> ModelAvailability:
        self._value = await self._registry.models()
        self._fetched_at = time.monotonic()
        return self._value

    def _refresh_done(self, task: asyncio.Task[ModelAvailability]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter got it already
