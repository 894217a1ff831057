"""The worker node's life in the registry: it comes back by itself after Redis restarts, and it refuses
sessions beyond its capacity or while draining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_fixtures import poll_until
from redis_server import RedisServer
from test_metrics import FixedTextDecoder

from dalston.actors.protocol import ErrorCode, ServerEvent, StreamParams
from dalston.config import load_config
from dalston.supervisor.node import SpawnRefused, WorkerNode
from dalston.supervisor.redis_registry import RedisRegistry
from dalston.supervisor.registry import WorkerRecord, WorkerStatus


def node_config(capacity: int = 2):  # type: ignore[no-untyped-def]
    config = load_config(environ={})
    return config.replace("node", worker_id="w1", capacity=capacity, models=("fast",), heartbeat_interval_s=0.1,
                          liveness_ttl_s=1.0)


async def ignore(event: ServerEvent) -> None:
    pass


async def test_a_node_registers_again_by_itself_after_redis_restarts_empty(
    tmp_path: Path, start_redis_servers: Callable[..., RedisServer]
) -> None:
    server = start_redis_servers(tmp_path / "redis")
    registry = RedisRegistry.from_url(server.url)
    node = WorkerNode(node_config(), registry, "ws://127.0.0.1:1", decoders={"fast": FixedTextDecoder})
    await node.start()
    try:
        server.stop()
        await asyncio.sleep(0.3)  # heartbeats fail meanwhile; the node logs them and carries on
        start_redis_servers(tmp_path / "redis", port=server.port)  # an empty Redis on the same address

        async def registered_again() -> list[WorkerRecord]:
            return [w for w in await registry.list_workers() if w.worker_id == "w1" and w.alive]

        (record,) = await poll_until(registered_again, "the node is registered in the new Redis", timeout_s=10)
        assert record.status is WorkerStatus.READY and record.models == ("fast",) and record.capacity == 2
    finally:
        await node.stop()
        await registry.close()


async def test_a_node_refuses_sessions_beyond_its_capacity_and_while_draining(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    node = WorkerNode(node_config(capacity=1), registry, "ws://127.0.0.1:1", decoders={"fast": FixedTextDecoder})
    await node.start()
    try:
        first = await node.start_session("s1", StreamParams(), ignore)
        with pytest.raises(SpawnRefused) as full:
            await node.start_session("s2", StreamParams(), ignore)
        assert full.value.code is ErrorCode.NO_CAPACITY
        with pytest.raises(SpawnRefused) as unknown:
            await node.start_session("s3", StreamParams(model="accurate"), ignore)
        assert unknown.value.code is ErrorCode.UNSUPPORTED_MODEL
        await first.stop()
        assert await node.active_sessions() == 0
        draining = asyncio.create_task(node.drain(timeout_s=1.0))
        await asyncio.sleep(0.05)
        with pytest.raises(SpawnRefused) as refused:
            await node.start_session("s4", StreamParams(), ignore)
        assert refused.value.code is ErrorCode.NO_CAPACITY
        await draining
        assert await registry.list_workers() == []  # drained nodes deregister
    finally:
        await node.stop()
        await registry.close()
