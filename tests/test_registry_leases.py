"""Sessions are leases: what a lost reply, a lost release, a reap or a second process claiming a worker id do.

Run against both RedisRegistry (real redis-server) and MemoryRegistry, except where a Redis fault is the point.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from registry_harness import LIVENESS_TTL_S, Harness, assert_consistent

from dalston.supervisor.cluster.reaper import Reaper
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import (
    ModelAvailability,
    NodeRegistry,
    RegistryUnavailable,
    SessionInfo,
    SessionStatus,
    WorkerIdTaken,
    WorkerInfo,
)

if TYPE_CHECKING:
    from redis_server import RedisServer

LEASE_TTL_S = 0.3
MODELS = ("fast", "accurate")


@pytest.fixture
async def registry(harness: Harness) -> AsyncIterator[NodeRegistry]:
    registry = await harness.make()
    yield registry
    await registry.close()


def worker(worker_id: str, capacity: int = 2, instance: str = "", models: tuple[str, ...] = ("fast",)) -> WorkerInfo:
    return WorkerInfo(worker_id, f"ws://{worker_id}.local:9000/link", capacity, models, instance)


def session(session_id: str, model: str = "fast") -> SessionInfo:
    return SessionInfo(session_id, model=model)


async def counts(registry: NodeRegistry) -> dict[str, int]:
    return {w.worker_id: w.active_sessions for w in await registry.list_workers()}


async def status_of(registry: NodeRegistry, session_id: str) -> SessionStatus | None:
    record = await registry.get_session(session_id)
    return None if record is None else record.status


async def test_a_reservation_its_worker_never_confirms_is_freed_within_one_lease_ttl(harness: Harness) -> None:
    registry = await harness.make(lease_ttl_s=LEASE_TTL_S)
    await registry.register(worker("a", 1), LIVENESS_TTL_S)
    assert await registry.acquire(session("ghost")) is not None  # the gateway died before spawning it
    assert await registry.heartbeat("a", LIVENESS_TTL_S, [])
    assert await counts(registry) == {"a": 1}  # within its lease the slot stays taken
    await harness.let_time_pass(LEASE_TTL_S + 0.05)
    assert await registry.heartbeat("a", LIVENESS_TTL_S, [])
    assert await counts(registry) == {"a": 0}
    assert await status_of(registry, "ghost") is SessionStatus.ENDED
    assert await registry.acquire(session("next")) is not None
    await assert_consistent(registry, MODELS)


async def test_a_session_its_worker_keeps_listing_outlives_many_lease_ttls(harness: Harness) -> None:
    registry = await harness.make(lease_ttl_s=LEASE_TTL_S)
    await registry.register(worker("a", 1), LIVENESS_TTL_S)
    await registry.acquire(session("s1"))
    for _ in range(4):
        await harness.let_time_pass(LEASE_TTL_S / 2)
        assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1"])
    assert await status_of(registry, "s1") is SessionStatus.ACTIVE
    assert await counts(registry) == {"a": 1}


async def test_a_lost_acquire_reply_is_reconciled_by_the_workers_heartbeats(harness: Harness) -> None:
    registry = await harness.make(lease_ttl_s=LEASE_TTL_S)
    await registry.register(worker("a", 2), LIVENESS_TTL_S)
    await registry.acquire(session("kept"))
    # The script ran and reserved a slot; its reply never reached the gateway, which spawned nothing.
    lost = await registry.acquire(session("lost"))
    assert lost is not None
    del lost
    assert await registry.acquire(session("third")) is None  # the worker looks full
    await harness.let_time_pass(LEASE_TTL_S + 0.05)
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["kept"])
    assert await counts(registry) == {"a": 1}
    assert await status_of(registry, "lost") is SessionStatus.ENDED
    assert await status_of(registry, "kept") is SessionStatus.ACTIVE
    assert await registry.acquire(session("third")) is not None
    await assert_consistent(registry, MODELS)


async def test_a_reaped_worker_that_resumes_brings_its_running_sessions_back_counted(harness: Harness) -> None:
    registry = await harness.make()
    await registry.register(worker("a", 2), LIVENESS_TTL_S)
    await registry.acquire(session("s1"))
    await registry.acquire(session("s2"))
    await registry.release("s2")
    await harness.expire_liveness(registry, "a")  # paused beyond its liveness TTL
    assert await Reaper(registry).run_once() == ["a"]
    assert await status_of(registry, "s1") is SessionStatus.ENDED
    # It wakes up: its heartbeat is refused, it registers again with what it runs (s2 was released by the
    # gateway meanwhile but the worker has not stopped it yet: that one is not brought back).
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1", "s2"]) is False
    await registry.register(worker("a", 2), LIVENESS_TTL_S, live_sessions=["s1", "s2"])
    assert await counts(registry) == {"a": 1}
    assert await status_of(registry, "s1") is SessionStatus.ACTIVE
    assert await status_of(registry, "s2") is SessionStatus.ENDED
    assert await registry.free_slots("fast") == {"a": 1}
    assert await registry.acquire(session("s3")) is not None
    assert await registry.acquire(session("s4")) is None  # no overbooking
    await assert_consistent(registry, MODELS)


async def test_a_heartbeat_adopts_sessions_the_registry_forgot_but_never_one_held_elsewhere(
    registry: NodeRegistry,
) -> None:
    await registry.register(worker("a", 3), LIVENESS_TTL_S)
    await registry.register(worker("b", 3), LIVENESS_TTL_S)
    moved = await registry.acquire(session("moved"))
    assert moved is not None
    holder, other = moved.worker_id, "b" if moved.worker_id == "a" else "a"
    assert await registry.heartbeat(other, LIVENESS_TTL_S, ["unknown-1", "moved"])
    assert await counts(registry) == {holder: 1, other: 1}
    record = await registry.get_session("unknown-1")
    assert record is not None and record.worker_id == other and record.status is SessionStatus.ACTIVE
    assert (await registry.get_session("moved")).worker_id == holder  # type: ignore[union-attr]
    await assert_consistent(registry, MODELS)


async def test_registering_again_keeps_the_listed_sessions_and_ends_the_others(registry: NodeRegistry) -> None:
    await registry.register(worker("a", 3, instance="run-1"), LIVENESS_TTL_S)
    for sid in ("s1", "s2", "s3"):
        await registry.acquire(session(sid))
    await registry.register(worker("a", 3, instance="run-1"), LIVENESS_TTL_S, live_sessions=["s2"])
    assert await counts(registry) == {"a": 1}
    assert [await status_of(registry, sid) for sid in ("s1", "s2", "s3")] == [
        SessionStatus.ENDED, SessionStatus.ACTIVE, SessionStatus.ENDED,
    ]
    await assert_consistent(registry, MODELS)


async def test_a_second_live_process_with_the_same_worker_id_is_refused_and_changes_nothing(
    harness: Harness, registry: NodeRegistry
) -> None:
    await registry.register(worker("a", 2, instance="first"), LIVENESS_TTL_S)
    await registry.acquire(session("s1"))
    before = await registry.list_workers()
    with pytest.raises(WorkerIdTaken):
        await registry.register(WorkerInfo("a", "ws://elsewhere:1/link", 9, ("accurate",), "second"), LIVENESS_TTL_S)
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1"], instance="second") is False
    after = await registry.list_workers()
    assert [(w.endpoint, w.capacity, w.models, w.active_sessions) for w in after] == [
        (w.endpoint, w.capacity, w.models, w.active_sessions) for w in before
    ]
    assert await status_of(registry, "s1") is SessionStatus.ACTIVE
    assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1"], instance="first")
    # Once the first one's liveness lapsed, the id is free for a new process.
    await harness.expire_liveness(registry, "a")
    await registry.register(worker("a", 4, instance="second"), LIVENESS_TTL_S)
    assert [(w.capacity, w.active_sessions) for w in await registry.list_workers()] == [(4, 0)]


async def test_a_worker_marked_suspect_is_skipped_by_every_gateway_for_that_long(harness: Harness) -> None:
    first = await harness.make()
    second = await harness.peer(first)
    await first.register(worker("big", 5), LIVENESS_TTL_S)
    await first.register(worker("small", 1), LIVENESS_TTL_S)
    await first.mark_suspect("big", 0.3)
    allocation = await second.acquire(session("s1"))
    assert allocation is not None and allocation.worker_id == "small"
    assert await second.acquire(session("s2")) is None
    await harness.let_time_pass(0.35)
    allocation = await second.acquire(session("s2"))
    assert allocation is not None and allocation.worker_id == "big"


async def test_models_lists_every_model_ever_registered_and_those_a_live_ready_worker_has(
    harness: Harness, registry: NodeRegistry
) -> None:
    assert (await registry.models()).known == frozenset()
    await registry.register(worker("a", 1, models=("fast",)), LIVENESS_TTL_S)
    await registry.register(worker("b", 1, models=("accurate", "huge")), LIVENESS_TTL_S)
    await registry.acquire(session("s1"))  # a full worker still has its model ready
    everything = frozenset({"fast", "accurate", "huge"})
    assert await registry.models() == ModelAvailability(known=everything, ready=everything)
    await harness.expire_liveness(registry, "b")
    await registry.set_status("a", "draining")
    models = await registry.models()
    assert models.known == {"fast", "accurate", "huge"} and models.ready == frozenset()
    await registry.reap()
    assert (await registry.models()).known == {"fast", "accurate", "huge"}  # known only grows


# -- Redis only: faults of Redis itself, and the cost of listing models -----------------------------------------


class ReplyLosingRedis(aioredis.Redis):
    """A client at the Redis boundary whose next script call runs in Redis but whose reply never arrives."""

    lose_next_script_reply = False

    async def execute_command(self, *args: object, **options: object) -> object:
        reply = await super().execute_command(*args, **options)
        if self.lose_next_script_reply and str(args[0]).upper() in ("EVALSHA", "EVAL"):
            self.lose_next_script_reply = False
            raise redis.exceptions.ConnectionError("connection reset before the reply was read")
        return reply


async def test_an_acquire_whose_reply_was_lost_in_transit_is_reconciled_within_one_lease_ttl(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    client = ReplyLosingRedis.from_url(redis_server.url, decode_responses=True)
    registry = RedisRegistry(client, prefix=redis_prefix, lease_ttl_s=LEASE_TTL_S, owns_client=True)
    try:
        await registry.register(worker("a", 1), LIVENESS_TTL_S)
        client.lose_next_script_reply = True
        with pytest.raises(RegistryUnavailable):
            await registry.acquire(session("lost"))
        assert await counts(registry) == {"a": 1}  # Redis ran it: the slot is taken, nobody knows by whom
        assert await registry.acquire(session("next")) is None
        await asyncio.sleep(LEASE_TTL_S + 0.05)
        assert await registry.heartbeat("a", LIVENESS_TTL_S, [])  # the worker never saw "lost"
        assert await counts(registry) == {"a": 0}
        assert await registry.acquire(session("next")) is not None
    finally:
        await registry.close()


async def test_a_release_lost_while_redis_was_down_is_reconciled_when_it_returns(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis", persist=True)
    registry = RedisRegistry.from_url(server.url, lease_ttl_s=LEASE_TTL_S)
    try:
        await registry.register(worker("a", 2), LIVENESS_TTL_S)
        await registry.acquire(session("s1"))
        server.stop()
        with pytest.raises(RegistryUnavailable):
            await registry.release("s1")  # the session ended on the worker; this release is lost
        start_redis_servers(tmp_path / "redis", port=server.port, persist=True)  # back, with its data
        assert await heartbeat_once_redis_answers(registry, "a", ["other"])
        assert await counts(registry) == {"a": 2}  # the lost release left s1's slot taken
        await asyncio.sleep(LEASE_TTL_S + 0.05)
        assert await registry.heartbeat("a", LIVENESS_TTL_S, ["other"])
        assert await counts(registry) == {"a": 1}
        assert await status_of(registry, "s1") is SessionStatus.ENDED
        await assert_consistent(registry, MODELS)
    finally:
        await registry.close()


async def test_a_worker_paused_past_its_liveness_is_reaped_by_the_running_reaper_then_resumes_counted(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    registry = RedisRegistry(redis_client, prefix=redis_prefix, check_keys=True)
    reaper = Reaper(registry, interval_s=0.05)
    await registry.register(worker("a", 2), liveness_ttl_s=0.2)
    await registry.acquire(session("s1"))
    reaper.start()
    try:
        for _ in range(200):  # the worker is paused: no heartbeat; Redis's clock lets its liveness lapse
            if reaper.statistics().workers_reaped:
                break
            await asyncio.sleep(0.02)
        assert reaper.statistics().workers_reaped == 1
        assert await registry.list_workers() == []
        assert await registry.heartbeat("a", LIVENESS_TTL_S, ["s1"]) is False  # it wakes up, forgotten
        await registry.register(worker("a", 2), LIVENESS_TTL_S, live_sessions=["s1"])
        assert await counts(registry) == {"a": 1}
        assert await registry.acquire(session("s2")) is not None
        assert await registry.acquire(session("s3")) is None
        assert reaper.statistics().workers_reaped == 1  # alive again: not reaped a second time
    finally:
        await reaper.stop()


async def test_after_an_empty_redis_restart_workers_register_again_with_their_sessions(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis")
    registry = RedisRegistry.from_url(server.url)
    try:
        await registry.register(worker("a", 2), LIVENESS_TTL_S)
        await registry.acquire(session("s1"))
        server.stop()
        start_redis_servers(tmp_path / "redis", port=server.port)  # empty, like a restart without a save
        assert await heartbeat_once_redis_answers(registry, "a", ["s1"]) is False
        await registry.register(worker("a", 2), LIVENESS_TTL_S, live_sessions=["s1"])
        assert await counts(registry) == {"a": 1}
        assert await registry.acquire(session("s2")) is not None
        assert await registry.acquire(session("s3")) is None
    finally:
        await registry.close()


async def test_a_redis_that_stops_answering_fails_calls_instead_of_hanging_them(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis")
    registry = RedisRegistry.from_url(server.url, socket_timeout_s=0.2)
    try:
        await registry.register(worker("a", 1), LIVENESS_TTL_S)
        os.kill(server.process.pid, signal.SIGSTOP)  # hung, not gone: the socket stays open
        try:
            async with asyncio.timeout(10):  # a guard for the test itself, not a timing claim
                with pytest.raises(RegistryUnavailable):
                    await registry.heartbeat("a", LIVENESS_TTL_S)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert await heartbeat_once_redis_answers(registry, "a", [])
    finally:
        await registry.close()


async def heartbeat_once_redis_answers(registry: NodeRegistry, worker_id: str, live: list[str]) -> bool:
    """The first command after a restart may meet a pooled connection the old server closed: bounded retries."""
    for _ in range(50):
        try:
            return await registry.heartbeat(worker_id, LIVENESS_TTL_S, live)
        except RegistryUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not come back")


async def _commands_run(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")


async def test_listing_models_costs_the_same_few_commands_with_ten_or_a_thousand_workers(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    registry = RedisRegistry(redis_client, prefix=redis_prefix)
    gateway = RedisRegistry(redis_client, prefix=redis_prefix)

    async def cost() -> int:
        before = await _commands_run(redis_client)
        models = await gateway.models()
        assert models.ready == {"fast", "accurate"}
        return await _commands_run(redis_client) - before

    for n in range(10):
        await registry.register(worker(f"w{n}", 2, models=MODELS), LIVENESS_TTL_S)
    await gateway.models()  # the gateway learns the model names once
    small = await cost()
    for n in range(10, 1000):
        await registry.register(worker(f"w{n}", 2, models=MODELS), LIVENESS_TTL_S)
    assert await cost() == small
    assert small <= 12  # one script: SMEMBERS, then per model a ZREVRANGE and a ZSCORE
