"""Pytest fixtures around a real `redis-server` on loopback, started by the tests themselves.

Loaded through `pytest_plugins` in tests/conftest.py.
- `redis_server` (session): one server in a temporary folder, no persistence, stopped after the run;
- `redis_prefix`: a key prefix unique to the test, so tests never see each other's keys;
- `redis_client`: an asyncio client (decode_responses=True) on that server, closed after the test;
- `start_redis_servers`: a function `(folder, port=None, persist=False, extra_args=()) -> RedisServer` starting
  further servers, for tests that stop, kill or restart one (or make one a replica); all stopped after the test;
- `start_sentinels`: a function `(folder, primary_port, service) -> RedisServer` starting a Redis Sentinel
  (the same binary in sentinel mode); all stopped after the test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no save."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_ready(server: RedisServer) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT_S
    client = redis.Redis(host=server.host, port=server.port, socket_timeout=1)
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def start_redis_server(folder: Path, port: int | None = None, *, persist: bool = False,
                       extra_args: tuple[str, ...] = ()) -> RedisServer:
    """Start a `redis-server` on 127.0.0.1 (a free port unless given) and wait until it answers PING.

    `persist`: an append-only file in `folder`, synced on every write, so a server started again on the same
    folder comes back with the data (a Redis restart that loses nothing).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # the free port may be taken between choosing it and binding it
        chosen = port or free_port()
        args = [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        args += ["--dir", str(folder), "--logfile", str(folder / "redis.log"), "--daemonize", "no", *extra_args]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer("127.0.0.1", chosen, process, folder)
        if _wait_until_ready(server):
            return server
        server.stop()
    log = (folder / "redis.log").read_text(errors="replace")[-2000:]
    pytest.fail(f"redis-server did not start:\n{log}")


def start_sentinel(folder: Path, primary_port: int, service: str, *, down_after_ms: int = 500) -> RedisServer:
    """Start a Sentinel (`redis-server --sentinel`, no separate package) watching the primary on `primary_port`.

    Quorum 1: this one Sentinel alone decides a failover, `down_after_ms` after the primary stops answering.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        conf = folder / "sentinel.conf"  # Sentinel rewrites its file as it learns: it must be its own
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        process = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        server = RedisServer("127.0.0.1", port, process, folder)
        if _wait_until_ready(server):
            return server
        server.stop()
    log = (folder / "sentinel.log").read_text(errors="replace")[-2000:]
    pytest.fail(f"redis-sentinel did not start:\n{log}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def start_redis_servers() -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(folder: Path, port: int | None = None, *, persist: bool = False,
              extra_args: tuple[str, ...] = ()) -> RedisServer:
        server = start_redis_server(folder, port, persist=persist, extra_args=extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_sentinels() -> Iterator[Callable[..., RedisServer]]:
    """A function `(folder, primary_port, service) -> RedisServer` starting Sentinels; all stopped after the test."""
    started: list[RedisServer] = []

    def start(folder: Path, primary_port: int, service: str) -> RedisServer:
        sentinel = start_sentinel(folder, primary_port, service)
        started.append(sentinel)
        return sentinel

    yield start
    for sentinel in started:
        sentinel.stop()
