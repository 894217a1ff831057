"""`SessionRouter`: the gateway's side of allocation — reserve a slot, spawn there, or try the next worker.

The registry makes the choice atomic; the router adds the retry-on-refusal policy (a worker enforces its own
capacity and may refuse a spawn the registry thought would fit) and timing statistics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dalston.supervisor.registry import Allocation, NodeRegistry, SessionInfo

TrySpawn = Callable[[Allocation], Awaitable[bool]]


@dataclass(frozen=True)
class RouterStatistics:
    """Counts since start; times over the most recent `window` allocations."""

    acquires: int  # acquire calls, placing attempts included
    allocated: int  # acquires that reserved a slot
    no_capacity: int  # acquires that found no worker
    releases: int  # releases that actually freed a slot
    refusals: int  # spawns a worker refused during `place`
    allocation_mean_ms: float
    allocation_p50_ms: float
    allocation_p95_ms: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class SessionRouter:
    def __init__(self, registry: NodeRegistry, *, window: int = 1024) -> None:
        self._registry = registry
        self._durations_ms: deque[float] = deque(maxlen=window)
        self._acquires = 0
        self._allocated = 0
        self._no_capacity = 0
        self._releases = 0
        self._refusals = 0

    @property
    def registry(self) -> NodeRegistry:
        return self._registry

    async def acquire(self, session: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        """Reserve a slot for `session` on the best worker not in `exclude`; None when there is none."""
        started = time.perf_counter()
        allocation = await self._registry.acquire(session, exclude)
        self._durations_ms.append((time.perf_counter() - started) * 1000.0)
        self._acquires += 1
        if allocation is None:
            self._no_capacity += 1
        else:
            self._allocated += 1
        return allocation

    async def release(self, session_id: str) -> bool:
        """Free the session's slot. Safe to call more than once; True only the first time."""
        released = await self._registry.release(session_id)
        if released:
            self._releases += 1
        return released

    async def place(self, session: SessionInfo, try_spawn: TrySpawn, attempts: int = 3) -> Allocation | None:
        """Acquire a slot and spawn there; on refusal free it and try the next best worker.

        `try_spawn` returns False when the worker refused or could not be reached. None when no worker had
        room, or every one of `attempts` workers refused. If `try_spawn` raises (or the caller is cancelled)
        the slot is released before the exception propagates.
        """
        refused: set[str] = set()
        for _ in range(attempts):
            allocation = await self.acquire(session, frozenset(refused))
            if allocation is None:
                return None
            try:
                spawned = await try_spawn(allocation)
            except BaseException:
                # Shielded so that a second cancellation cannot leak the slot.
                await asyncio.shield(self.release(session.session_id))
                raise
            if spawned:
                return allocation
            self._refusals += 1
            refused.add(allocation.worker_id)
            await self.release(session.session_id)
        return None

    def statistics(self) -> RouterStatistics:
        durations = sorted(self._durations_ms)
        mean = sum(durations) / len(durations) if durations else 0.0
        return RouterStatistics(
            acquires=self._acquires,
            allocated=self._allocated,
            no_capacity=self._no_capacity,
            releases=self._releases,
            refusals=self._refusals,
            allocation_mean_ms=mean,
            allocation_p50_ms=percentile(durations, 0.50),
            allocation_p95_ms=percentile(durations, 0.95),
        )
