"""The cluster's failure paths (issue 10), end to end: real `dalston` processes, real Redis, loopback only.

Each test names the defect it guards against. Waits are bounded; every process is stopped by its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import Any

import aiohttp
import pytest
from cluster_fixtures import ProcessGroup, load_clip, next_event, of_type, poll_until
from redis_server import free_port

from dalston.config import NodeConfig
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import SessionInfo, WorkerInfo
from dalston.web.client import StreamClient
from dalston.web.introspection import link_headers

pytestmark = pytest.mark.slow


async def begin(stream: StreamClient) -> dict[str, Any]:
    event = await next_event(stream)
    assert event is not None and event["type"] == "session.begin", event
    return event


async def active_sessions(registry: RedisRegistry, worker_id: str) -> int:
    return {w.worker_id: w.active_sessions for w in await registry.list_workers()}[worker_id]


async def test_one_gateway_carries_more_sessions_than_an_http_connection_pool_holds(
    dalston_processes: ProcessGroup,
) -> None:
    worker = dalston_processes.start_worker("w1", capacity=150)
    gateway = dalston_processes.start_gateway(env={"DALSTON_SERVER_MAX_SESSIONS_PER_CLIENT_IP": "150"})
    await dalston_processes.wait_ready(worker, gateway)
    streams = [StreamClient(gateway.stream_url) for _ in range(150)]
    try:
        async with asyncio.timeout(90):
            for batch in range(0, 150, 25):  # a realistic arrival, not one SYN flood
                await asyncio.gather(*(s.__aenter__() for s in streams[batch:batch + 25]))
            begun = await asyncio.gather(*(begin(s) for s in streams))
        assert len({event["session_id"] for event in begun}) == 150
    finally:
        await asyncio.gather(*(s.__aexit__(None, None, None) for s in streams), return_exceptions=True)


class SilentPort:
    """A TCP port that accepts connections and never answers: a hung worker's link endpoint."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


async def test_dead_and_hung_workers_ahead_of_a_live_one_do_not_turn_clients_away(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    live = dalston_processes.start_worker("live", capacity=2)
    gateway = dalston_processes.start_gateway(env={"DALSTON_SERVER_SPAWN_TIMEOUT_S": "1"})
    await dalston_processes.wait_ready(live, gateway)
    hung = SilentPort()
    dead = [WorkerInfo(f"dead{i}", f"ws://127.0.0.1:{free_port()}", 50, ("fast",)) for i in range(2)]
    dead.append(WorkerInfo("hung", f"ws://127.0.0.1:{hung.port}", 50, ("fast",)))
    try:
        for info in dead:  # registered and heartbeating: the registry still believes in them
            await cluster_registry.register(info, 30.0)
        async with asyncio.timeout(30):
            for _ in range(2):
                async with StreamClient(gateway.stream_url) as stream:
                    await begin(stream)
        for info in dead:
            assert await active_sessions(cluster_registry, info.worker_id) == 0  # no slot left behind
        # The gateway marked them suspect for everyone: another gateway's acquire goes to the live one.
        allocation = await cluster_registry.acquire(SessionInfo("probe", "fast"))
        assert allocation is not None and allocation.worker_id == "live"
        await cluster_registry.release("probe")
    finally:
        hung.close()


async def test_a_slot_reserved_by_a_gateway_killed_before_its_spawn_comes_back_within_the_lease(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    env = {"DALSTON_REGISTRY_LEASE_TTL_S": "2", "DALSTON_NODE_LIVENESS_TTL_S": "6"}
    worker = dalston_processes.start_worker("w1", capacity=2, env=env)
    gateway = dalston_processes.start_gateway(env=env)
    await dalston_processes.wait_ready(worker, gateway)
    worker.signal(signal.SIGSTOP)  # slow to answer: the gateway's spawn waits on it
    try:
        connecting = asyncio.create_task(StreamClient(gateway.stream_url).__aenter__())

        async def reserved() -> bool:
            return await active_sessions(cluster_registry, "w1") == 1

        await poll_until(reserved, "the gateway reserved a slot", timeout_s=10)
        gateway.kill()  # between acquire and spawn
    finally:
        worker.signal(signal.SIGCONT)
    with contextlib.suppress(Exception):
        client = await connecting
        await client.__aexit__(None, None, None)

    async def freed() -> bool:
        return await active_sessions(cluster_registry, "w1") == 0

    await poll_until(freed, "the unconfirmed reservation expired", timeout_s=2 + 3)  # lease + heartbeats

    async def worker_runs_nothing() -> bool:  # a spawn that arrived after its gateway died was stopped at once
        async with aiohttp.ClientSession(headers=link_headers(NodeConfig.link_token)) as http, \
                http.get(worker.http_url + "/healthz") as response:
            return (await response.json())["active_sessions"] == 0

    await poll_until(worker_runs_nothing, "the worker runs no session for the dead gateway", timeout_s=10)


async def test_a_gateway_told_to_stop_finishes_the_utterance_in_flight_and_sends_session_end(
    dalston_processes: ProcessGroup,
) -> None:
    serve = dalston_processes.start_serve(env={"DALSTON_SERVER_SHUTDOWN_TIMEOUT_S": "1"})
    await dalston_processes.wait_ready(serve)
    clip = load_clip("0880")
    events: list[dict[str, Any]] = []
    async with StreamClient(serve.stream_url) as stream:
        sender = asyncio.create_task(stream.send_pcm(clip.samples, speed=1.0))
        await begin(stream)

        async def speaking() -> bool:
            return len(stream.sent_at) >= 25  # 2.5 s of speech sent

        await poll_until(speaking, "the client is mid-utterance")
        serve.signal(signal.SIGTERM)
        async with asyncio.timeout(40):
            events = [event async for event in stream.events()]
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert of_type(events, "transcript.final"), events
    assert events[-1]["type"] == "session.end" and events[-1]["transcript"], events[-3:]
    assert not [e for e in of_type(events, "error") if e["code"] != "invalid_message"]  # audio after end: fine
    assert await serve.wait_exit() == 0


async def test_readiness_goes_503_first_and_new_clients_are_turned_away_while_a_gateway_drains(
    dalston_processes: ProcessGroup,
) -> None:
    serve = dalston_processes.start_serve(env={"DALSTON_SERVER_SHUTDOWN_TIMEOUT_S": "5"})
    await dalston_processes.wait_ready(serve)
    async with StreamClient(serve.stream_url) as holding:
        await begin(holding)
        serve.signal(signal.SIGTERM)

        async def not_ready() -> bool:
            async with aiohttp.ClientSession() as http, http.get(serve.http_url + "/readyz") as response:
                return response.status == 503

        await poll_until(not_ready, "readiness says 503")
        async with StreamClient(serve.stream_url) as late:
            event = await next_event(late)
            assert event is not None and event["type"] == "error" and event["code"] == "no_capacity"


async def test_a_second_worker_with_a_live_workers_id_refuses_to_start_and_leaves_the_first_alone(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    first = dalston_processes.start_worker("twin", capacity=2)
    await dalston_processes.wait_ready(first)
    before = {w.worker_id: w.endpoint for w in await cluster_registry.list_workers()}
    second = dalston_processes.start_worker("twin", capacity=2)
    assert await second.wait_exit(timeout_s=120) == 2
    assert "another --worker-id" in second.log_path.read_text()
    assert {w.worker_id: w.endpoint for w in await cluster_registry.list_workers()} == before  # untouched
    assert first.running
