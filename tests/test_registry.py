"""The registry's semantics, run against both RedisRegistry (real redis-server) and MemoryRegistry."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from registry_harness import LIVENESS_TTL_S, Harness, assert_consistent

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import (
    NodeRegistry,
    RegistryUnavailable,
    SessionExists,
    SessionInfo,
    SessionStatus,
    WorkerInfo,
    WorkerRecord,
    WorkerStatus,
)

if TYPE_CHECKING:
    from redis_server import RedisServer


MODELS = ("fast", "accurate")


@pytest.fixture
async def registry(harness: Harness) -> AsyncIterator[NodeRegistry]:
    registry = await harness.make()
    yield registry
    await registry.close()


def worker(worker_id: str, capacity: int = 2, models: tuple[str, ...] = ("fast",)) -> WorkerInfo:
    return WorkerInfo(worker_id, f"ws://{worker_id}.local:9000/link", capacity, models)


def session(session_id: str, model: str = "fast") -> SessionInfo:
    return SessionInfo(session_id, model=model, language="en", client_ip="10.0.0.7")


async def register(registry: NodeRegistry, *workers: WorkerInfo) -> None:
    for info in workers:
        await registry.register(info, LIVENESS_TTL_S)


async def counts(registry: NodeRegistry) -> dict[str, int]:
    return {w.worker_id: w.active_sessions for w in await registry.list_workers()}


async def test_registered_workers_are_listed_ready_alive_and_empty(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 3, MODELS), worker("b", 1))
    listed = {w.worker_id: w for w in await registry.list_workers()}
    assert set(listed) == {"a", "b"}
    assert listed["a"].status is WorkerStatus.READY and listed["a"].alive
    assert (listed["a"].capacity, listed["a"].active_sessions, listed["a"].models) == (3, 0, MODELS)
    assert listed["a"].endpoint == "ws://a.local:9000/link"
    assert await registry.free_slots("accurate") == {"a": 3}
    assert await registry.free_slots("fast") == {"a": 3, "b": 1}


async def test_each_acquire_goes_to_a_worker_with_the_most_free_slots(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2), worker("b", 4), worker("c", 3))
    for n in range(9):
        free = {w.worker_id: w.free_slots for w in await registry.list_workers()}
        allocation = await registry.acquire(session(f"s{n}"))
        assert allocation is not None
        assert free[allocation.worker_id] == max(free.values())
    assert await counts(registry) == {"a": 2, "b": 4, "c": 3}
    await assert_consistent(registry, MODELS)


async def test_acquire_only_considers_workers_that_loaded_the_model(registry: NodeRegistry) -> None:
    await register(registry, worker("fast-only", 5, ("fast",)), worker("both", 1, MODELS))
    first = await registry.acquire(session("s1", model="accurate"))
    assert first is not None and first.worker_id == "both"
    assert await registry.acquire(session("s2", model="accurate")) is None
    assert await registry.acquire(session("s3", model="huge")) is None


async def test_a_draining_worker_gets_no_new_sessions_until_ready_again(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2))
    assert await registry.set_status("a", "draining")
    assert await registry.acquire(session("s1")) is None
    assert await registry.free_slots("fast") == {}
    assert await registry.set_status("a", WorkerStatus.READY)
    allocation = await registry.acquire(session("s1"))
    assert allocation is not None and allocation.worker_id == "a"
    await assert_consistent(registry, MODELS)


async def test_set_status_reports_unknown_workers_and_rejects_unknown_statuses(registry: NodeRegistry) -> None:
    assert not await registry.set_status("ghost", "draining")
    await register(registry, worker("a"))
    with pytest.raises(ValueError):
        await registry.set_status("a", "sleepy")


async def test_no_worker_takes_more_sessions_than_its_capacity(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2), worker("b", 1))
    allocations = [await registry.acquire(session(f"s{n}")) for n in range(5)]
    assert [a is not None for a in allocations] == [True, True, True, False, False]
    assert await counts(registry) == {"a": 2, "b": 1}
    assert await registry.free_slots("fast") == {"a": 0, "b": 0}


async def test_release_frees_the_slot_exactly_once(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2))
    await registry.acquire(session("s1"))
    await registry.acquire(session("s2"))
    assert await registry.release("s1") is True
    assert await registry.release("s1") is False
    assert await registry.release("never-existed") is False
    assert await counts(registry) == {"a": 1}
    ended = await registry.get_session("s1")
    assert ended is not None and ended.status is SessionStatus.ENDED and ended.ended_at is not None
    await assert_consistent(registry, MODELS)


async def s1_on_one_of_two_workers(registry: NodeRegistry) -> tuple[str, str]:
    """Workers a and b with one slot each, and session s1 on one of them: (its worker, the other)."""
    await register(registry, worker("a", 1), worker("b", 1))
    first = await registry.acquire(session("s1"))
    assert first is not None
    return first.worker_id, "b" if first.worker_id == "a" else "a"


async def test_a_release_scoped_to_a_worker_leaves_a_session_that_moved_to_another_alone(
    registry: NodeRegistry,
) -> None:
    first_id, other = await s1_on_one_of_two_workers(registry)
    assert await registry.release("s1") is True  # a gateway moves it: release, then acquire elsewhere
    assert (await registry.acquire(session("s1"), exclude=frozenset({first_id}))).worker_id == other
    assert await registry.release("s1", worker_id=first_id) is False  # the old worker's late release
    record = await registry.get_session("s1")
    assert record is not None and record.worker_id == other and record.status is SessionStatus.ACTIVE
    assert await counts(registry) == {first_id: 0, other: 1}
    assert await registry.release("s1", worker_id=other) is True
    assert await counts(registry) == {first_id: 0, other: 0}
    await assert_consistent(registry, MODELS)


async def test_a_session_a_move_released_is_reinstated_where_it_stays_even_over_capacity(
    registry: NodeRegistry,
) -> None:
    first_id, other = await s1_on_one_of_two_workers(registry)
    assert await registry.acquire(session("s2")) is not None  # the other worker is full now
    started = (await registry.get_session("s1")).started_at
    assert await registry.release("s1") is True  # a move: no other worker can take it
    assert await registry.acquire(session("s3"), exclude=frozenset({other})) is not None  # its slot went meanwhile
    assert await registry.reinstate(session("s1"), first_id) is True
    record = await registry.get_session("s1")
    assert record is not None and record.worker_id == first_id and record.status is SessionStatus.ACTIVE
    assert record.started_at == started and record.ended_at is None
    assert await counts(registry) == {first_id: 2, other: 1}  # over capacity: it runs there
    assert await registry.reinstate(session("s1"), first_id) is True  # already there: nothing counted
    assert await registry.reinstate(session("s2"), first_id) is False  # active on the other worker
    assert await registry.reinstate(session("s9"), "ghost") is False
    assert await counts(registry) == {first_id: 2, other: 1}
    await assert_consistent(registry, MODELS)


async def test_an_acquired_session_is_recorded_as_active(registry: NodeRegistry) -> None:
    await register(registry, worker("a"))
    allocation = await registry.acquire(session("s1"))
    assert allocation is not None and allocation.endpoint == "ws://a.local:9000/link"
    record = await registry.get_session("s1")
    assert record is not None
    assert (record.worker_id, record.status, record.model, record.language, record.client_ip) == (
        "a",
        SessionStatus.ACTIVE,
        "fast",
        "en",
        "10.0.0.7",
    )
    assert record.ended_at is None
    assert [s.session_id for s in await registry.list_sessions()] == ["s1"]


async def test_listing_all_sessions_includes_ended_ones(registry: NodeRegistry) -> None:
    await register(registry, worker("a"))
    await registry.acquire(session("s1"))
    await registry.acquire(session("s2"))
    await registry.release("s1")
    assert [s.session_id for s in await registry.list_sessions()] == ["s2"]
    assert sorted(s.session_id for s in await registry.list_sessions(active_only=False)) == ["s1", "s2"]


async def test_an_active_session_id_cannot_be_acquired_twice_but_an_ended_one_can(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 3))
    await registry.acquire(session("s1"))
    with pytest.raises(SessionExists):
        await registry.acquire(session("s1"))
    await registry.release("s1")
    again = await registry.acquire(session("s1"))
    assert again is not None
    record = await registry.get_session("s1")
    assert record is not None and record.status is SessionStatus.ACTIVE and record.ended_at is None
    assert await counts(registry) == {"a": 1}


async def test_excluded_workers_are_skipped(registry: NodeRegistry) -> None:
    await register(registry, worker("big", 5), worker("small", 1))
    allocation = await registry.acquire(session("s1"), exclude=frozenset({"big"}))
    assert allocation is not None and allocation.worker_id == "small"
    assert await registry.acquire(session("s2"), exclude=frozenset({"big", "small"})) is None
    assert await counts(registry) == {"big": 0, "small": 1}


async def test_a_heartbeat_listing_the_running_sessions_keeps_the_count(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 3))
    await registry.acquire(session("s1"))
    await registry.acquire(session("s2"))
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1", "s2"])
    assert await counts(registry) == {"a": 2}
    assert await registry.free_slots("fast") == {"a": 1}


async def test_a_heartbeat_from_an_unknown_worker_returns_false(registry: NodeRegistry) -> None:
    assert await registry.heartbeat("ghost", LIVENESS_TTL_S) is False
    assert await registry.list_workers() == []


async def test_a_worker_whose_liveness_lapsed_gets_no_sessions_even_before_reaping(
    harness: Harness, registry: NodeRegistry
) -> None:
    await register(registry, worker("dead", 5), worker("live", 1))
    await harness.expire_liveness(registry, "dead")
    allocation = await registry.acquire(session("s1"))
    assert allocation is not None and allocation.worker_id == "live"
    assert await registry.acquire(session("s2")) is None
    assert {w.worker_id: w.alive for w in await registry.list_workers()} == {"dead": False, "live": True}
    assert "dead" not in await registry.free_slots("fast")


async def test_reaping_ends_a_dead_workers_sessions_and_forgets_it(harness: Harness, registry: NodeRegistry) -> None:
    await register(registry, worker("dead", 2), worker("live", 2))
    await registry.acquire(session("s1"))
    await registry.acquire(session("s2"))
    on_dead = [s.session_id for s in await registry.list_sessions() if s.worker_id == "dead"]
    await harness.expire_liveness(registry, "dead")
    assert await registry.reap() == ["dead"]
    assert await registry.reap() == []
    assert [w.worker_id for w in await registry.list_workers()] == ["live"]
    for session_id in on_dead:
        record = await registry.get_session(session_id)
        assert record is not None and record.status is SessionStatus.ENDED
        assert await registry.release(session_id) is False
    assert await registry.heartbeat("dead", LIVENESS_TTL_S) is False
    await assert_consistent(registry, MODELS)


async def test_a_heartbeat_revives_a_lapsed_worker_not_yet_reaped(harness: Harness, registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2))
    await registry.acquire(session("s1"))
    await harness.expire_liveness(registry, "a")
    assert await registry.acquire(session("s2")) is None
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1"])
    assert await registry.free_slots("fast") == {"a": 1}
    assert await registry.acquire(session("s2")) is not None
    assert await counts(registry) == {"a": 2}


async def test_ended_sessions_expire(harness: Harness) -> None:
    registry = await harness.make(ended_session_ttl_s=0.2)
    await register(registry, worker("a"))
    await registry.acquire(session("s1"))
    await registry.release("s1")
    assert await registry.get_session("s1") is not None
    await harness.let_time_pass(0.5)
    assert await registry.get_session("s1") is None
    assert await registry.list_sessions(active_only=False) == []


async def test_deregistering_ends_the_workers_sessions(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2))
    await registry.acquire(session("s1"))
    assert await registry.deregister("a") is True
    assert await registry.deregister("a") is False
    assert await registry.list_workers() == []
    assert await registry.free_slots("fast") == {}
    record = await registry.get_session("s1")
    assert record is not None and record.status is SessionStatus.ENDED


async def test_a_worker_registers_again_after_the_registry_forgot_it(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2))
    await registry.deregister("a")
    assert await registry.heartbeat("a", LIVENESS_TTL_S) is False
    await register(registry, worker("a", 2))
    assert await registry.heartbeat("a", LIVENESS_TTL_S) is True
    assert await registry.acquire(session("s1")) is not None
    await assert_consistent(registry, MODELS)


async def test_registering_again_replaces_the_previous_run(registry: NodeRegistry) -> None:
    await register(registry, worker("a", 2, MODELS))
    await registry.acquire(session("s1"))
    await register(registry, worker("a", 4, ("accurate",)))
    [record] = await registry.list_workers()
    assert (record.capacity, record.active_sessions, record.models) == (4, 0, ("accurate",))
    assert await registry.free_slots("fast") == {}
    old = await registry.get_session("s1")
    assert old is not None and old.status is SessionStatus.ENDED
    assert await registry.release("s1") is False
    assert await counts(registry) == {"a": 0}
    await assert_consistent(registry, MODELS)


# -- Redis only: the stored layout, real TTLs, two gateways at once, a restarted Redis ----------------------


@pytest.fixture
async def redis_registry(redis_client: aioredis.Redis, redis_prefix: str) -> RedisRegistry:
    return RedisRegistry(redis_client, prefix=redis_prefix, ended_session_ttl_s=3600)


async def test_redis_keys_follow_the_documented_layout_under_one_hash_tag(
    redis_registry: RedisRegistry, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await redis_registry.register(worker("a", 2, MODELS), liveness_ttl_s=10)
    await redis_registry.acquire(session("s1"))
    await redis_registry.acquire(session("s2"))
    await redis_registry.release("s2")
    await redis_registry.mark_suspect("b", 5)
    tag = "{" + redis_prefix + "}"
    keys = {key async for key in redis_client.scan_iter(match=f"*{redis_prefix}*")}
    names = {"workers", "alive", "sessions", "leases", "by_worker", "ended", "suspect", "models"}
    assert keys == {tag + name for name in names | {"free:fast", "free:accurate"}}
    assert len({key_slot(key.encode()) for key in keys}) == 1  # one slot: the scripts run on Redis Cluster
    record = json.loads(await redis_client.hget(tag + "workers", "a"))
    assert set(record) == {"endpoint", "status", "capacity", "active", "models", "instance", "started_at",
                           "last_heartbeat"}
    assert (record["active"], record["models"], record["status"]) == (1, list(MODELS), "ready")
    (seconds, micros) = await redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert 0 < await redis_client.zscore(tag + "alive", "a") - now_ms <= 10_000
    assert 0 < await redis_client.zscore(tag + "leases", "s1") - now_ms <= 10_000  # the default lease TTL
    assert await redis_client.zrange(tag + "by_worker", 0, -1) == ["a\0s1"]
    assert await redis_client.zscore(tag + "free:fast", "a") == 1
    assert await redis_client.smembers(tag + "models") == set(MODELS)
    assert json.loads(await redis_client.hget(tag + "sessions", "s1"))["status"] == "active"
    ended = json.loads(await redis_client.hget(tag + "sessions", "s2"))
    assert (ended["status"], ended["ended_by"]) == ("ended", "release")
    assert 3_500_000 < await redis_client.zscore(tag + "ended", "s2") - now_ms <= 3_600_000
    assert await redis_client.zscore(tag + "leases", "s2") is None


async def test_ended_session_records_are_dropped_after_their_ttl(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    registry = RedisRegistry(redis_client, prefix=redis_prefix, ended_session_ttl_s=0.05)
    await registry.register(worker("a", 30), LIVENESS_TTL_S)
    for n in range(20):
        await registry.acquire(session(f"s{n}"))
        await registry.release(f"s{n}")
    await asyncio.sleep(0.1)
    for n in range(20, 25):  # every script drops a few expired records on its way
        await registry.acquire(session(f"s{n}"))
        await registry.release(f"s{n}")
    stored = await redis_client.hlen("{" + redis_prefix + "}sessions")
    assert stored <= 5
    assert await registry.get_session("s0") is None


async def test_a_liveness_key_lapses_by_itself_when_heartbeats_stop(redis_registry: RedisRegistry) -> None:
    await redis_registry.register(worker("a"), liveness_ttl_s=0.1)
    for _ in range(200):  # Redis expires the key; wait for it, bounded
        if not (await redis_registry.list_workers())[0].alive:
            break
        await asyncio.sleep(0.02)
    assert await redis_registry.acquire(session("s1")) is None
    assert await redis_registry.reap() == ["a"]


async def test_two_gateways_acquiring_at_once_never_overfill_a_worker(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    gateways = [RedisRegistry(_pooled_client(redis_server.url), prefix=redis_prefix, owns_client=True) for _ in "ab"]
    observer = gateways[0]
    for n in range(10):
        await observer.register(worker(f"w{n}", 3), LIVENESS_TTL_S)
    overfilled: list[WorkerRecord] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            overfilled.extend(w for w in await observer.list_workers() if w.active_sessions > w.capacity)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    tries = [gateways[n % 2].acquire(session(f"s{n}")) for n in range(400)]
    allocations = [a for a in await asyncio.gather(*tries) if a is not None]
    done.set()
    await watcher
    assert len(allocations) == 30 and not overfilled
    assert Counter(a.worker_id for a in allocations) == {f"w{n}": 3 for n in range(10)}
    assert await counts(observer) == {f"w{n}": 3 for n in range(10)}
    # Every session released twice, by both gateways at once: only one release of each counts.
    releases = [g.release(a.session_id) for a in allocations for g in gateways]
    assert sum(await asyncio.gather(*releases)) == 30
    assert await counts(observer) == {f"w{n}": 0 for n in range(10)}
    assert await observer.free_slots("fast") == {f"w{n}": 3 for n in range(10)}
    await assert_consistent(observer, MODELS)
    for gateway in gateways:
        await gateway.close()


def _pooled_client(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=4, decode_responses=True)
    return aioredis.Redis(connection_pool=pool)


async def test_workers_register_again_after_redis_restarts(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis")
    registry = RedisRegistry.from_url(server.url)
    try:
        await registry.register(worker("a"), LIVENESS_TTL_S)
        server.stop()
        with pytest.raises(RegistryUnavailable):
            await registry.heartbeat("a", LIVENESS_TTL_S)
        start_redis_servers(tmp_path / "redis", port=server.port)  # empty, like a restart without a save
        assert await registry.heartbeat("a", LIVENESS_TTL_S) is False
        await registry.register(worker("a"), LIVENESS_TTL_S)
        allocation = await registry.acquire(session("s1"))
        assert allocation is not None and allocation.worker_id == "a"
    finally:
        await registry.close()
