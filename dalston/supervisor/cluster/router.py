"""`SessionRouter`: the gateway's side of allocation — reserve a slot, spawn there, or try the next worker.

The registry makes the choice atomic; the router adds the placement policy:
- every eligible worker is tried until a deadline (a worker enforces its own capacity and may refuse a spawn
  the registry thought would fit, or may be unreachable);
- a worker this gateway failed to reach is skipped for `suspect_s`, and marked suspect in the registry so
  that the other gateways skip it too;
- an acquire is inside the error handling: if its reply is lost, the session id is released all the same;
- every release is retried in the background until it lands or the session's lease would have expired anyway
  (the registry's reconciliation frees it then).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import structlog

from dalston.supervisor.cluster.registry import (
    Allocation,
    NodeRegistry,
    RegistryError,
    RegistryUnavailable,
    SessionInfo,
)

log = structlog.get_logger(__name__)


class SpawnOutcome(Enum):
    SPAWNED = "spawned"
    REFUSED = "refused"  # the worker answered no (full, draining, restarting)
    UNREACHABLE = "unreachable"  # no answer: connection failed or timed out


TrySpawn = Callable[[Allocation, float], Awaitable[SpawnOutcome]]
"""`try_spawn(allocation, timeout_s)`: spawn the session there within `timeout_s`."""


@dataclass(frozen=True)
class PlacementPolicy:
    deadline_s: float = 10.0  # how long a client may wait for a slot before `no_capacity`
    attempt_timeout_s: float = 5.0  # connecting to one worker and getting its answer
    suspect_s: float = 10.0  # how long an unreachable worker is skipped
    release_retry_s: float = 10.0  # how long a failed release is retried (a session's lease TTL)


@dataclass(frozen=True)
class RouterStatistics:
    """Counts since start; times over the most recent `window` allocations."""

    acquires: int  # acquire calls, placing attempts included
    allocated: int  # acquires that reserved a slot
    no_capacity: int  # acquires that found no worker
    releases: int  # releases that actually freed a slot
    refusals: int  # spawns a worker refused or did not answer during `place`
    releases_pending: int  # releases still being retried
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
    def __init__(self, registry: NodeRegistry, policy: PlacementPolicy | None = None, *, window: int = 1024) -> None:
        self._registry = registry
        self.policy = policy or PlacementPolicy()
        self._durations_ms: deque[float] = deque(maxlen=window)
        self._unreachable_until: dict[str, float] = {}  # worker id -> monotonic time
        self._pending_releases: set[asyncio.Task[None]] = set()
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

    async def reinstate(self, session: SessionInfo, worker_id: str) -> bool:
        """Record the session on `worker_id` again: a move found no other worker, the call stays there."""
        return await self._registry.reinstate(session, worker_id)

    def release_eventually(self, session_id: str) -> None:
        """Release in the background, retrying while the registry is unreachable (bounded by the lease)."""
        task = asyncio.get_running_loop().create_task(self._release_with_retries(session_id))
        self._pending_releases.add(task)
        task.add_done_callback(self._pending_releases.discard)

    async def _release_with_retries(self, session_id: str) -> None:
        deadline = time.monotonic() + self.policy.release_retry_s
        pause_s = 0.1
        while True:
            try:
                await self.release(session_id)
                return
            except RegistryError as error:  # unreachable, or any refusal: retried until the lease ends anyway
                if time.monotonic() + pause_s > deadline:
                    log.warning("router.release_abandoned", session_id=session_id, error=str(error),
                                note="its lease expires and the worker's heartbeat frees the slot")
                    return
                await asyncio.sleep(pause_s)
                pause_s = min(2.0, pause_s * 2)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Give releases still being retried a last moment, then cancel them (their leases will expire)."""
        if self._pending_releases:
            await asyncio.wait(set(self._pending_releases), timeout=timeout_s)
        for task in set(self._pending_releases):
            task.cancel()

    async def place(self, session: SessionInfo, try_spawn: TrySpawn) -> Allocation | None:
        """Acquire a slot and spawn there; on a refusal or no answer free it and try the next best worker.

        None when no worker (not yet tried, not suspect) has room, or the deadline passed. Whatever happens
        (an exception, a cancellation, a lost acquire reply), a slot that is not returned is released.
        """
        deadline = time.monotonic() + self.policy.deadline_s
        tried: set[str] = set()
        while (left_s := deadline - time.monotonic()) > 0:
            try:
                allocation = await self.acquire(session, frozenset(tried | self._suspects()))
            except BaseException as error:  # the reply may be lost after Redis reserved the slot
                self.release_eventually(session.session_id)
                if isinstance(error, RegistryError):
                    log.warning("router.acquire_failed", session_id=session.session_id, error=str(error))
                raise
            if allocation is None:
                return None
            try:
                outcome = await try_spawn(allocation, min(left_s, self.policy.attempt_timeout_s))
            except BaseException:
                self.release_eventually(session.session_id)
                raise
            if outcome is SpawnOutcome.SPAWNED:
                return allocation
            self._refusals += 1
            tried.add(allocation.worker_id)
            await self.release_or_retry(session.session_id)  # the id must be free before the next acquire
            if outcome is SpawnOutcome.UNREACHABLE:
                await self._suspect(allocation.worker_id)
        return None

    async def release_or_retry(self, session_id: str) -> None:
        """Release now; if the registry is unreachable, keep retrying in the background."""
        try:
            await self.release(session_id)
        except RegistryUnavailable:
            self.release_eventually(session_id)

    def _suspects(self) -> set[str]:
        now = time.monotonic()
        for worker_id in [w for w, until in self._unreachable_until.items() if until <= now]:
            del self._unreachable_until[worker_id]
        return set(self._unreachable_until)

    async def _suspect(self, worker_id: str) -> None:
        """Skip the worker here, and tell the other gateways through the registry."""
        self._unreachable_until[worker_id] = time.monotonic() + self.policy.suspect_s
        log.warning("router.worker_unreachable", worker_id=worker_id, skipped_for_s=self.policy.suspect_s)
        try:
            await self._registry.mark_suspect(worker_id, self.policy.suspect_s)
        except RegistryError as error:
            log.warning("router.mark_suspect_failed", worker_id=worker_id, error=str(error))

    def statistics(self) -> RouterStatistics:
        durations = sorted(self._durations_ms)
        mean = sum(durations) / len(durations) if durations else 0.0
        return RouterStatistics(
            acquires=self._acquires,
            allocated=self._allocated,
            no_capacity=self._no_capacity,
            releases=self._releases,
            refusals=self._refusals,
            releases_pending=len(self._pending_releases),
            allocation_mean_ms=mean,
            allocation_p50_ms=percentile(durations, 0.50),
            allocation_p95_ms=percentile(durations, 0.95),
        )
