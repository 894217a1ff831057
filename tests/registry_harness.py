"""One way to drive both registry implementations from the same tests.

The only backend-specific acts are making a registry, making a worker's liveness lapse and letting time pass:
the memory registry runs on a manual clock, the Redis one on Redis's own TTLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.redis_registry import RedisRegistry, hash_tagged
from dalston.supervisor.cluster.registry import NodeRegistry

LIVENESS_TTL_S = 30.0


class ManualClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryHarness:
    kind = "memory"

    def __init__(self) -> None:
        self.clock = ManualClock()

    async def make(self, **options: float) -> NodeRegistry:
        return MemoryRegistry(clock=self.clock, **options)

    async def expire_liveness(self, registry: NodeRegistry, worker_id: str) -> None:
        # One clock serves every worker: let all lapse, then renew the others, with the sessions they run.
        others = [w.worker_id for w in await registry.list_workers() if w.alive and w.worker_id != worker_id]
        running = await registry.list_sessions()
        self.clock.advance(LIVENESS_TTL_S + 1.0)
        for other in others:
            await registry.heartbeat(other, LIVENESS_TTL_S, [s.session_id for s in running if s.worker_id == other])

    async def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def peer(self, registry: NodeRegistry) -> NodeRegistry:
        """Another gateway's view of the same registry: in one process, the same object."""
        return registry

    async def expire_lease(self, registry: NodeRegistry, session_id: str) -> None:
        assert isinstance(registry, MemoryRegistry)
        registry.state.expire_lease(session_id, self.clock())


class RedisHarness:
    kind = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def make(self, **options: float) -> NodeRegistry:
        # check_keys: every script fails on a key it was not given in KEYS (what Redis Cluster needs).
        return RedisRegistry(self.client, prefix=self.prefix, check_keys=True, **options)  # type: ignore[arg-type]

    async def peer(self, registry: NodeRegistry) -> NodeRegistry:
        """Another gateway's view of the same registry: its own client on the same keys."""
        return await self.make()

    def key(self, name: str) -> str:
        return hash_tagged(self.prefix) + name

    async def expire_liveness(self, registry: NodeRegistry, worker_id: str) -> None:
        # A deadline in the past is exactly what time running out does.
        await self.client.zadd(self.key("alive"), {worker_id: 0}, xx=True)

    async def let_time_pass(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def expire_lease(self, registry: NodeRegistry, session_id: str) -> None:
        await self.client.zadd(self.key("leases"), {session_id: 0}, xx=True)


Harness = MemoryHarness | RedisHarness


@asynccontextmanager
async def open_harness(kind: str, redis_url: str | None, prefix: str) -> AsyncIterator[Harness]:
    if kind == "memory":
        yield MemoryHarness()
        return
    assert redis_url is not None
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield RedisHarness(client, prefix)
    finally:
        await client.aclose()


async def assert_consistent(registry: NodeRegistry, models: tuple[str, ...]) -> None:
    """Counts match the active sessions, nobody is over capacity, and free:{model} tells the truth."""
    workers = {w.worker_id: w for w in await registry.list_workers()}
    sessions = await registry.list_sessions(active_only=True)
    for session in sessions:
        assert session.worker_id in workers, f"{session} runs on an unregistered worker"
    for worker in workers.values():
        on_worker = sum(1 for s in sessions if s.worker_id == worker.worker_id)
        assert worker.active_sessions == on_worker, worker
        assert worker.active_sessions >= 0, worker
    for model in models:
        index = await registry.free_slots(model)
        for worker_id, free in index.items():
            worker = workers[worker_id]
            assert worker.status == "ready" and model in worker.models, worker
            assert free == worker.capacity - worker.active_sessions, (model, worker, free)
        for worker in workers.values():
            if worker.alive and worker.status == "ready" and model in worker.models:
                assert worker.worker_id in index, (model, worker)


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Harness]:
    """The same test against the in-process registry and against a real Redis."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    async with open_harness(request.param, url, redis_prefix) as harness:
        yield harness
