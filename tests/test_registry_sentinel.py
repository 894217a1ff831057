"""Redis as it is run in production: `redis+sentinel://` URLs, and a Sentinel failover under a live registry.

The failover test runs real processes on loopback: a primary, a replica and a Sentinel (`redis-server
--sentinel`). The primary is SIGKILLed; the Sentinel promotes the replica; the registry keeps working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from dalston.supervisor.cluster.redis_connect import SentinelAddress, connect, parse_sentinel_url
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import NodeRegistry, RegistryUnavailable, SessionInfo, WorkerInfo

if TYPE_CHECKING:
    from redis_server import RedisServer

SERVICE = "dalston-test"
LIVENESS_TTL_S = 30.0
WAIT_S = 30.0  # bound on every wait for replication, discovery and failover


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_database() -> None:
    assert parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-c/primary/2") == (
        SentinelAddress((("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)), "primary", db=2)
    )
    address = parse_sentinel_url("redis+sentinel://app:s%40cret@[::1]:5000/main?sentinel_password=watch")
    assert address.sentinels == (("::1", 5000),)
    assert (address.username, address.password, address.sentinel_password) == ("app", "s@cret", "watch")
    assert (address.service_name, address.db) == ("main", 0)


@pytest.mark.parametrize(
    "url", ["redis://h:1/0", "redis+sentinel://h:1", "redis+sentinel:///svc", "redis+sentinel://h:x/svc"]
)
def test_a_sentinel_url_without_sentinels_or_service_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


async def test_a_plain_url_still_connects_directly(redis_server: RedisServer) -> None:
    connection = connect(redis_server.url)
    try:
        assert connection.sentinel is None
        assert await connection.client.ping()
    finally:
        await connection.aclose()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis+sentinel://127.0.0.1:1/svc"])
def test_connections_never_resend_a_command_whose_reply_was_lost(url: str) -> None:
    connection = connect(url)
    assert connection.client.connection_pool.make_connection().retry.get_retries() == 0


async def _wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if await condition():  # type: ignore[misc]
                return
        except (RegistryUnavailable, OSError, aioredis.ConnectionError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what} after {WAIT_S} s")


async def _until_answered(call: Callable[[], object]) -> object:
    """The registry's call, repeated while Redis is failing over (RegistryUnavailable), within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return await call()  # type: ignore[misc]
        except RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _counts(registry: NodeRegistry) -> dict[str, int]:
    return {w.worker_id: w.active_sessions for w in await registry.list_workers()}


@pytest.mark.slow
async def test_the_registry_keeps_working_through_a_sentinel_failover(
    tmp_path: Path,
    start_redis_servers: Callable[..., RedisServer],
    start_sentinels: Callable[..., RedisServer],
) -> None:
    primary = start_redis_servers(tmp_path / "primary")
    replica = start_redis_servers(tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
    sentinel = start_sentinels(tmp_path / "sentinel", primary.port, SERVICE)
    watcher = aioredis.Redis(host=sentinel.host, port=sentinel.port, decode_responses=True)
    on_replica = aioredis.Redis(host=replica.host, port=replica.port, decode_responses=True)
    registry = RedisRegistry.from_url(f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}", prefix="dalston:")
    try:
        async def sentinel_knows_the_replica() -> bool:
            return bool(await watcher.execute_command("SENTINEL", "REPLICAS", SERVICE))

        async def replica_in_sync() -> bool:
            return (await on_replica.info("replication")).get("master_link_status") == "up"

        await _wait_for(sentinel_knows_the_replica, "the Sentinel to discover the replica")
        await _wait_for(replica_in_sync, "the replica to sync")
        await registry.register(WorkerInfo("a", "ws://a:1/link", 3, ("fast",), "run-1"), LIVENESS_TTL_S)
        assert await registry.acquire(SessionInfo("s1", "fast")) is not None
        await _wait_for(lambda: _replicated(on_replica), "the registry's writes to reach the replica")

        primary.kill()

        async def replica_promoted() -> bool:
            _, port = await watcher.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port) == replica.port

        await _wait_for(replica_promoted, "the Sentinel to promote the replica")
        assert await _until_answered(lambda: registry.heartbeat("a", LIVENESS_TTL_S, ["s1"], instance="run-1"))
        assert await _counts(registry) == {"a": 1}
        allocation = await _until_answered(lambda: registry.acquire(SessionInfo("s2", "fast")))
        assert allocation is not None and allocation.worker_id == "a"
        assert await registry.release("s1") is True
        assert await _counts(registry) == {"a": 1}
        assert (await on_replica.info("replication"))["role"] == "master"
    finally:
        await registry.close()
        await watcher.aclose()
        await on_replica.aclose()


async def _replicated(replica: aioredis.Redis) -> bool:
    return await replica.hexists("{dalston:}workers", "a") and await replica.hexists("{dalston:}sessions", "s1")
