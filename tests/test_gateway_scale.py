"""A gateway in front of a large cluster (issue 10, defect 6): the Redis work per new session does not grow with
the number of workers, and clients arriving together share one refresh of the model list.

A real gateway app on loopback, a real redis-server, 10 and then 1,000 registered (simulated, full) workers.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import redis.asyncio as aioredis
from cluster_fixtures import next_event
from redis_server import RedisServer

from dalston.config import load_config
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import WorkerInfo
from dalston.web.client import StreamClient
from dalston.web.gateway import STREAM_PATH, create_gateway_app
from dalston.web.server import start_site

CLIENTS = 50
NOT_OURS = ("cmdstat_hello", "cmdstat_info", "cmdstat_config|resetstat")  # connections and this measurement


async def redis_commands_for_clients_arriving_together(server: RedisServer, prefix: str, workers: int) -> int:
    registry = RedisRegistry.from_url(server.url, prefix=prefix)
    for n in range(workers):  # full: every client ends with no_capacity, after the gateway did its work
        await registry.register(WorkerInfo(f"w{n}", f"ws://127.0.0.1:9/{n}", 0, ("fast",)), 60.0)
    config = load_config(environ={}).replace("server", max_sessions_per_client_ip=CLIENTS)
    runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
    observer = aioredis.Redis.from_url(server.url)
    try:
        await observer.config_resetstat()
        streams = [StreamClient(f"ws://127.0.0.1:{port}{STREAM_PATH}") for _ in range(CLIENTS)]
        await asyncio.gather(*(s.__aenter__() for s in streams))
        answers = await asyncio.gather(*(next_event(s) for s in streams))
        await asyncio.gather(*(s.__aexit__(None, None, None) for s in streams))
        assert [a["code"] for a in answers if a] == ["no_capacity"] * CLIENTS
        stats = await observer.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k not in NOT_OURS)
    finally:
        await observer.aclose()
        await runner.cleanup()
        await registry.close()


async def test_the_redis_work_of_fifty_clients_arriving_together_does_not_grow_with_the_number_of_workers(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    with_ten = await redis_commands_for_clients_arriving_together(redis_server, redis_prefix + "10:", 10)
    with_a_thousand = await redis_commands_for_clients_arriving_together(redis_server, redis_prefix + "1k:", 1000)
    # Reading every worker's record per model-list refresh (the old way) made it 1,000+ commands per client.
    assert with_a_thousand <= with_ten + 10, (with_ten, with_a_thousand)
    assert with_ten <= 20 * CLIENTS, with_ten  # an acquire, a hold and its release: a few scripts per client


async def test_clients_get_no_capacity_not_unsupported_model_once_every_worker_is_reaped(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    await registry.register(WorkerInfo("w1", "ws://127.0.0.1:9", 2, ("fast",)), 0.2)
    runner, port = await start_site(create_gateway_app(load_config(environ={}), registry), "127.0.0.1", 0)
    try:
        await asyncio.sleep(0.4)  # its liveness lapses...
        assert await registry.reap() == ["w1"]  # ...and it is reaped: no worker is left
        async with StreamClient(f"ws://127.0.0.1:{port}{STREAM_PATH}") as stream:
            event = await next_event(stream)
        assert event is not None and event["code"] == "no_capacity"  # try again later, not "never"
    finally:
        await runner.cleanup()
        await registry.close()


async def test_connections_past_the_cap_are_turned_away_with_503(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    hung = socket.socket()  # a worker that accepts and never answers: clients wait in placement
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    await registry.register(WorkerInfo("hung", f"ws://127.0.0.1:{hung.getsockname()[1]}", 8, ("fast",)), 60.0)
    config = load_config(environ={}).replace("server", max_connections=2, spawn_timeout_s=3.0, placement_deadline_s=3.0)
    runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
    waiting = [StreamClient(url), StreamClient(url)]
    try:
        await asyncio.gather(*(s.__aenter__() for s in waiting))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with StreamClient(url):
                pass
        assert refused.value.status == 503
    finally:
        await asyncio.gather(*(s.__aexit__(None, None, None) for s in waiting), return_exceptions=True)
        await runner.cleanup()
        await registry.close()
        hung.close()
