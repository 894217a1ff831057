"""The worker node's life in the registry: it comes back by itself after Redis restarts, and it refuses
sessions beyond its capacity or while draining."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from cluster_fixtures import ProcessGroup, poll_until
from redis_server import RedisServer
from test_metrics import FixedTextDecoder

from dalston.actors.speech.protocol import ErrorCode, ServerEvent, StreamParams
from dalston.config import load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.node import SpawnRefused, WorkerNode
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import SessionInfo, SessionStatus, WorkerInfo, WorkerRecord, WorkerStatus
from dalston.web.link_protocol import LINK_PATH, TOKEN_HEADER, Spawn, bearer
from dalston.web.server import UnsafeBind, check_worker_bind, start_site, worker_endpoint
from dalston.web.worker import create_worker_app


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


# -- failure at the top ---------------------------------------------------------------------------------------


class LoadsOnce:
    """A model that loads once and never again (its weights vanished): every restart of its actor fails."""

    def __init__(self) -> None:
        self.loads = 0

    def __call__(self) -> FixedTextDecoder:
        self.loads += 1
        if self.loads > 1:
            raise OSError("model.bin: no such file")
        return FixedTextDecoder()


async def kill_model_actor(node: WorkerNode) -> None:
    ref = await node._child("transcriber:fast")
    await ref.kill()


@contextlib.asynccontextmanager
async def node_behind_its_app(
    redis_server: RedisServer, prefix: str, decoder: Callable[[], FixedTextDecoder]
) -> AsyncIterator[tuple[WorkerNode, RedisRegistry, int]]:
    """A started node on the test's Redis with its worker app on loopback: (node, registry, port)."""
    registry = RedisRegistry.from_url(redis_server.url, prefix=prefix)
    node = WorkerNode(node_config(), registry, "", decoders={"fast": decoder})
    runner, port = await start_site(create_worker_app(node), "127.0.0.1", 0)
    await node.start()
    try:
        yield node, registry, port
    finally:
        await node.stop()
        await runner.cleanup()
        await registry.close()


async def test_a_node_whose_root_supervisor_gives_up_refuses_sessions_and_leaves_the_registry(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with node_behind_its_app(redis_server, redis_prefix, LoadsOnce()) as (node, registry, _):
        assert [w.worker_id for w in await registry.list_workers()] == ["w1"]
        await kill_model_actor(node)
        reason = await asyncio.wait_for(node.wait_failed(), 10)
        assert reason.kind == "shutdown" and "intensity" in reason.detail
        with pytest.raises(SpawnRefused) as refused:
            await node.start_session("s1", StreamParams(), ignore)
        assert refused.value.code is ErrorCode.NO_CAPACITY and "failed" in refused.value.message

        async def gone() -> bool:
            return await registry.list_workers() == []

        await poll_until(gone, "the failed node left the registry", timeout_s=5)
        await asyncio.sleep(0.3)  # three heartbeat intervals: a heartbeat would register it again
        assert await registry.list_workers() == []


async def test_the_link_answers_a_spawn_on_a_failed_node_with_an_error_code_not_a_traceback(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with node_behind_its_app(redis_server, redis_prefix, LoadsOnce()) as (node, _, port):
        await kill_model_actor(node)
        await asyncio.wait_for(node.wait_failed(), 10)
        headers = {TOKEN_HEADER: bearer(node.config.node.link_token)}
        async with aiohttp.ClientSession() as http, http.ws_connect(
            f"ws://127.0.0.1:{port}{LINK_PATH}", headers=headers
        ) as ws:
            await ws.send_json(Spawn("s1", StreamParams(), "127.0.0.1").to_json())
            answer = await ws.receive_json(timeout=5)
        assert answer["type"] == "refused" and answer["code"] == "no_capacity"


WORKER_WITH_A_MODEL_THAT_CANNOT_RELOAD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_node import LoadsOnce
from dalston import cli
from dalston.supervisor.cluster import node as node_module

trigger = Path({trigger!r})
original_start = node_module.WorkerNode.start


async def start(self):
    self._decoders = {{"fast": LoadsOnce()}}
    await original_start(self)

    async def crash_the_model_when_told():
        while not trigger.exists():
            await asyncio.sleep(0.05)
        await (await self._child("transcriber:fast")).kill()

    self._crasher = asyncio.get_running_loop().create_task(crash_the_model_when_told())


node_module.WorkerNode.start = start
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
async def test_dalston_worker_exits_non_zero_and_leaves_the_registry_when_its_model_cannot_restart(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    trigger = tmp_path / "crash-now"
    launcher = tmp_path / "worker.py"
    launcher.write_text(WORKER_WITH_A_MODEL_THAT_CANNOT_RELOAD.format(tests=str(Path(__file__).parent),
                                                                       trigger=str(trigger)))
    group = ProcessGroup(tmp_path, redis_server.url, redis_prefix)
    worker = group.start_worker("w-doomed", launcher=launcher)
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    try:
        await group.wait_ready(worker)
        assert [w.worker_id for w in await registry.list_workers()] == ["w-doomed"]
        trigger.touch()
        assert await worker.wait_exit() == 1
        assert await registry.list_workers() == []
        log = worker.log_path.read_text()
        assert "node.root_supervisor_exited" in log and "dalston: worker w-doomed failed: shutdown" in log
    finally:
        group.stop_all()
        await registry.close()


async def test_the_link_refuses_a_token_header_with_bytes_that_are_not_utf8_with_401(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with node_behind_its_app(redis_server, redis_prefix, FixedTextDecoder) as (_, _, port):
        request = b"GET " + LINK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.startswith(b"HTTP/1.1 401"), status


async def test_the_workers_tree_and_metrics_need_the_link_token_and_health_says_only_the_status_without_it(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with node_behind_its_app(redis_server, redis_prefix, FixedTextDecoder) as (node, _, port), \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        token = {TOKEN_HEADER: bearer(node.config.node.link_token)}
        for path in ("/v1/tree", "/metrics"):
            async with http.get(base + path) as anonymous, http.get(base + path, headers=token) as member:
                assert (anonymous.status, member.status) == (401, 200), path
        async with http.get(base + "/healthz") as anonymous:
            assert await anonymous.json() == {"status": "ready"}
        async with http.get(base + "/healthz", headers=token) as member:
            assert (await member.json())["worker_id"] == "w1"


@pytest.mark.parametrize(("node_settings", "refused"), [
    ({"host": "0.0.0.0"}, "default link token"),
    ({"host": "0.0.0.0", "link_token": "s3cret"}, "advertise_url"),
    ({"host": "0.0.0.0", "link_token": "s3cret", "advertise_url": "ws://10.1.2.3:8100"}, None),
    ({"host": "127.0.0.1"}, None),
])
def test_a_worker_beyond_loopback_needs_its_own_token_and_an_address_to_advertise(
    node_settings: dict[str, str], refused: str | None
) -> None:
    config = load_config(environ={}).replace("node", **node_settings)
    if refused is None:
        check_worker_bind(config)
        assert worker_endpoint(config, 8100) == node_settings.get("advertise_url", "ws://127.0.0.1:8100")
    else:
        with pytest.raises(UnsafeBind, match=refused):
            check_worker_bind(config)


class MovedDuringRelease(MemoryRegistry):
    """The interleaving a stopping session's node must survive: a gateway moves the session to another worker
    (release, then acquire there, as a failover or a drain does) just before the node's own release lands."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.node_released = asyncio.Event()

    async def release(self, session_id: str, worker_id: str | None = None) -> bool:
        if not self.armed:
            return await super().release(session_id)
        self.armed = False
        await super().release(session_id)
        assert await self.acquire(SessionInfo(session_id, "fast"), exclude=frozenset({"w1"})) is not None
        try:
            return await super().release(session_id, worker_id) if worker_id else await super().release(session_id)
        finally:
            self.node_released.set()


async def test_a_stopping_session_never_ends_the_record_of_the_worker_it_moved_to() -> None:
    registry = MovedDuringRelease()
    await registry.register(WorkerInfo("w2", "ws://127.0.0.1:2", 2, ("fast",)), 30.0)
    node = WorkerNode(node_config(), registry, "ws://127.0.0.1:1", decoders={"fast": FixedTextDecoder})
    await node.start()
    try:
        assert (await registry.acquire(SessionInfo("s1", "fast"), exclude=frozenset({"w2"}))).worker_id == "w1"
        session = await node.start_session("s1", StreamParams(), ignore)
        registry.armed = True
        await session.stop()
        async with asyncio.timeout(5):
            await registry.node_released.wait()
        record = await registry.get_session("s1")
        assert record is not None and record.worker_id == "w2"
        assert record.status is SessionStatus.ACTIVE and record.ended_at is None  # the call goes on there
        assert [w.active_sessions for w in await registry.list_workers() if w.worker_id == "w2"] == [1]
    finally:
        await node.stop()
