"""The registry's scripts on Redis Cluster: every key declared in KEYS, all under one hash tag.

A real `redis-server` in cluster mode (one node serving every slot) behind redis-py's `RedisCluster`, which
routes each script by its KEYS; the scripts run in their key-checking variant, so touching any key not
declared fails the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from dalston.supervisor.cluster import registry_lua
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import SessionInfo, SessionStatus, WorkerInfo

if TYPE_CHECKING:
    from redis_server import RedisServer


@pytest.fixture
async def cluster(tmp_path: Path, start_redis_servers: Callable[..., RedisServer]) -> AsyncIterator[RedisCluster]:
    node = start_redis_servers(tmp_path / "cluster", extra_args=("--cluster-enabled", "yes"))
    admin = redis.Redis(host=node.host, port=node.port)
    try:
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster never became ready"
            await asyncio.sleep(0.05)
    finally:
        admin.close()
    client = RedisCluster(host=node.host, port=node.port, decode_responses=True)
    yield client
    await client.aclose()


async def test_every_registry_script_runs_on_redis_cluster_touching_only_declared_keys(cluster: RedisCluster) -> None:
    registry = RedisRegistry(cluster, prefix="dalston:realtime:", check_keys=True)  # type: ignore[arg-type]
    await registry.register(WorkerInfo("a", "ws://a/link", 2, ("fast", "accurate"), "run-1"), 30.0)
    await registry.register(WorkerInfo("b", "ws://b/link", 1, ("fast",)), 30.0)
    allocation = await registry.acquire(SessionInfo("s1", "fast"))
    assert allocation is not None and allocation.worker_id == "a"
    assert await registry.heartbeat("a", 30.0, ["s1", "adopted"], instance="run-1")
    await registry.mark_suspect("b", 30.0)
    assert await registry.acquire(SessionInfo("s2", "fast")) is None  # a is full, b suspect
    assert await registry.set_status("a", "draining")
    assert (await registry.models()).known == {"fast", "accurate"}
    assert await registry.release("s1") is True
    assert {w.worker_id: w.active_sessions for w in await registry.list_workers()} == {"a": 1, "b": 0}
    assert (await registry.get_session("s1")).status is SessionStatus.ENDED  # type: ignore[union-attr]
    assert [s.session_id for s in await registry.list_sessions()] == ["adopted"]
    assert await registry.deregister("b")
    assert await registry.reap() == []


async def test_the_key_check_fails_a_script_that_touches_an_undeclared_key(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    source = registry_lua.key_checked(registry_lua.MARK_SUSPECT.replace("K_SUSPECT, '-inf'", "'elsewhere', '-inf'"))
    script = redis_client.register_script(source)
    keys = ["{" + redis_prefix + "}" + name for name in registry_lua.FIXED_KEYS]
    with pytest.raises(redis.exceptions.ResponseError, match="undeclared key elsewhere"):
        await script(keys=keys, args=[0, "w", 1000])
