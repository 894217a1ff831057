"""SessionRouter's placing policy and statistics, and the Reaper's rounds, on real registries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from registry_harness import LIVENESS_TTL_S, Harness, ManualClock

from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.reaper import Reaper
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import Allocation, NodeRegistry, RegistryUnavailable, SessionInfo, WorkerInfo
from dalston.supervisor.cluster.router import PlacementPolicy, SessionRouter, SpawnOutcome, percentile

if TYPE_CHECKING:
    from redis_server import RedisServer



@pytest.fixture
async def registry(harness: Harness) -> AsyncIterator[NodeRegistry]:
    registry = await harness.make()
    for worker_id, capacity in (("big", 3), ("mid", 2), ("small", 1), ("tiny", 1)):
        await registry.register(WorkerInfo(worker_id, f"ws://{worker_id}", capacity, ("fast",)), LIVENESS_TTL_S)
    yield registry
    await registry.close()


def session(session_id: str = "s1") -> SessionInfo:
    return SessionInfo(session_id, model="fast")


async def counts(registry: NodeRegistry) -> dict[str, int]:
    return {w.worker_id: w.active_sessions for w in await registry.list_workers()}


class Spawner:
    """Stands in for the gateway's link: refuses spawns on some workers, finds others unreachable."""

    def __init__(self, refusing: set[str], unreachable: frozenset[str] = frozenset()) -> None:
        self.refusing = refusing
        self.unreachable = unreachable
        self.tried: list[str] = []

    async def __call__(self, allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        self.tried.append(allocation.worker_id)
        if allocation.worker_id in self.unreachable:
            return SpawnOutcome.UNREACHABLE
        return SpawnOutcome.REFUSED if allocation.worker_id in self.refusing else SpawnOutcome.SPAWNED


async def test_place_spawns_on_the_best_worker_when_it_accepts(registry: NodeRegistry) -> None:
    router = SessionRouter(registry)
    spawner = Spawner(refusing=set())
    allocation = await router.place(session(), spawner)
    assert allocation is not None and allocation.worker_id == "big" and spawner.tried == ["big"]
    assert (await counts(registry))["big"] == 1


async def test_place_frees_a_refused_slot_and_tries_the_next_worker(registry: NodeRegistry) -> None:
    router = SessionRouter(registry)
    spawner = Spawner(refusing={"big"})
    allocation = await router.place(session(), spawner)
    assert allocation is not None and allocation.worker_id == "mid"
    assert spawner.tried == ["big", "mid"]
    assert await counts(registry) == {"big": 0, "mid": 1, "small": 0, "tiny": 0}
    record = await registry.get_session("s1")
    assert record is not None and record.worker_id == "mid" and record.status == "active"
    assert router.statistics().refusals == 1


async def test_place_tries_every_eligible_worker_before_giving_up_and_leaves_no_slot_taken(
    registry: NodeRegistry,
) -> None:
    router = SessionRouter(registry)
    spawner = Spawner(refusing={"big", "mid", "small"}, unreachable=frozenset({"tiny"}))
    assert await router.place(session(), spawner) is None
    assert sorted(spawner.tried) == ["big", "mid", "small", "tiny"]
    assert set((await counts(registry)).values()) == {0}


async def test_place_gives_up_at_its_deadline(registry: NodeRegistry) -> None:
    async def slow_refusal(allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        await asyncio.sleep(min(timeout_s, 0.2))
        return SpawnOutcome.REFUSED

    router = SessionRouter(registry, PlacementPolicy(deadline_s=0.3))
    assert await router.place(session(), slow_refusal) is None
    assert router.statistics().refusals == 2  # 0.2 s each: the third would start past the deadline
    assert set((await counts(registry)).values()) == {0}


async def test_an_unreachable_worker_is_skipped_by_later_placements_of_every_gateway(registry: NodeRegistry) -> None:
    first = SessionRouter(registry)
    assert (await first.place(session("s1"), Spawner(set(), unreachable=frozenset({"big"})))).worker_id == "mid"
    other_gateway = Spawner(set())
    allocation = await SessionRouter(registry).place(session("s2"), other_gateway)
    # Not "big", though it has the most free slots: the first gateway marked it suspect for everyone.
    assert allocation is not None and other_gateway.tried == [allocation.worker_id] != ["big"]


async def test_a_lost_acquire_reply_does_not_keep_the_slot(registry: NodeRegistry) -> None:
    acquire = registry.acquire

    async def reply_lost(info: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        await acquire(info, exclude)  # the registry reserved the slot...
        raise RegistryUnavailable("connection reset while reading the reply")  # ...and the answer never came

    registry.acquire = reply_lost  # type: ignore[method-assign]
    router = SessionRouter(registry)
    with pytest.raises(RegistryUnavailable):
        await router.place(session(), Spawner(set()))
    await router.close()
    assert set((await counts(registry)).values()) == {0}


async def test_place_returns_none_when_no_worker_has_room(registry: NodeRegistry) -> None:
    router = SessionRouter(registry)
    spawner = Spawner(refusing=set())
    placed = [await router.place(session(f"s{n}"), spawner) for n in range(8)]
    assert sum(p is not None for p in placed) == 7
    assert router.statistics().no_capacity == 1


async def test_a_spawn_that_raises_frees_the_slot_and_the_error_propagates(registry: NodeRegistry) -> None:
    async def broken_spawn(allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        raise RuntimeError("link handshake failed")

    router = SessionRouter(registry)
    with pytest.raises(RuntimeError):
        await router.place(session(), broken_spawn)
    await router.close()
    assert set((await counts(registry)).values()) == {0}


async def test_cancelling_a_place_while_spawning_frees_the_slot(registry: NodeRegistry) -> None:
    spawning = asyncio.Event()

    async def hanging_spawn(allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        spawning.set()
        await asyncio.Event().wait()
        return SpawnOutcome.SPAWNED

    router = SessionRouter(registry)
    task = asyncio.create_task(router.place(session(), hanging_spawn))
    await spawning.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await router.close()
    assert set((await counts(registry)).values()) == {0}


async def test_statistics_count_acquires_releases_and_allocation_times(registry: NodeRegistry) -> None:
    router = SessionRouter(registry)
    for n in range(8):
        await router.acquire(session(f"s{n}"))
    assert await router.release("s0") and not await router.release("s0")
    stats = router.statistics()
    assert (stats.acquires, stats.allocated, stats.no_capacity, stats.releases) == (8, 7, 1, 1)
    assert 0 < stats.allocation_p50_ms <= stats.allocation_p95_ms
    assert stats.allocation_mean_ms > 0


def test_percentile_takes_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 1.0)) == (50.0, 95.0, 100.0)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) == 0.0


# -- Reaper ---------------------------------------------------------------------------------------------


async def test_a_reaper_round_removes_workers_whose_liveness_lapsed() -> None:
    clock = ManualClock()
    registry = MemoryRegistry(clock=clock)
    await registry.register(WorkerInfo("old", "ws://old", 1, ("fast",)), liveness_ttl_s=5)
    clock.advance(3)
    await registry.register(WorkerInfo("new", "ws://new", 1, ("fast",)), liveness_ttl_s=5)
    reaper = Reaper(registry, interval_s=1)
    clock.advance(3)
    assert await reaper.run_once() == ["old"]
    assert await reaper.run_once() == []
    assert [w.worker_id for w in await registry.list_workers()] == ["new"]
    stats = reaper.statistics()
    assert (stats.rounds, stats.workers_reaped, stats.running) == (2, 1, False)


async def test_a_running_reaper_removes_a_worker_that_stopped_heartbeating(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    await registry.register(WorkerInfo("a", "ws://a", 1, ("fast",)), liveness_ttl_s=0.05)
    reaper = Reaper(registry, interval_s=0.02)
    reaper.start()
    reaper.start()  # a second start while running is a no-op
    for _ in range(250):  # bounded wait for the TTL to lapse and a round to notice
        if reaper.statistics().workers_reaped:
            break
        await asyncio.sleep(0.02)
    await reaper.stop()
    await reaper.stop()
    assert await registry.list_workers() == []
    assert not reaper.statistics().running
    await registry.close()


async def test_a_reaper_outlives_a_redis_that_went_away(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis")
    registry = RedisRegistry.from_url(server.url)
    server.stop()
    reaper = Reaper(registry, interval_s=0.01)
    reaper.start()
    for _ in range(250):
        if reaper.statistics().failed_rounds >= 2:
            break
        await asyncio.sleep(0.02)
    stats = reaper.statistics()
    await reaper.stop()
    await registry.close()
    assert stats.failed_rounds >= 2 and stats.running
