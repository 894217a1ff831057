"""Real `dalston gateway` / `dalston worker` / `dalston serve` processes for end-to-end tests.

Load with `pytest_plugins = ["redis_server", "cluster_fixtures"]`. Fixtures:
- `dalston_processes`: a `ProcessGroup` that starts the commands as subprocesses (`python -m dalston.cli`) on
  free loopback ports, with this test's Redis key prefix and fast cluster timings, and always stops every
  process it started (SIGTERM, then SIGKILL) after the test;
- `cluster_registry`: a `RedisRegistry` on the test's prefix, to read what the processes wrote.
Helpers for clients: `next_event`, `stream_to_end`, `load_clip`, `poll_until`.

Workers load only the `fast` model (tiny.en). Each process writes its output to files under the test's
temporary folder; a process that dies before it is ready fails the test with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import numpy as np
import pytest
from redis_server import free_port

from dalston.actors.speech.audio import read_wav
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.web.client import StreamClient

if TYPE_CHECKING:
    from redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
LIBRIVOX = Path(__file__).resolve().parent / "data" / "librivox"
STREAM_PATH = "/v1/audio/transcriptions/stream"
READY_TIMEOUT_S = 120.0  # loading tiny.en on a busy 2-core machine takes a few seconds; leave room
STOP_TIMEOUT_S = 15.0
EVENT_TIMEOUT_S = 30.0

# Timings that make a lapsed worker visible within a couple of seconds instead of the defaults' ten.
FAST_CLUSTER_ENV = {
    "DALSTON_NODE_MODELS": "fast",
    "DALSTON_NODE_HEARTBEAT_INTERVAL_S": "0.3",
    "DALSTON_NODE_LIVENESS_TTL_S": "1.5",
    "DALSTON_REGISTRY_REAP_INTERVAL_S": "0.5",
    "DALSTON_NODE_DRAIN_TIMEOUT_S": "10",
    "DALSTON_TRANSCRIBER_INFERENCE_THREADS": "1",
}

T = TypeVar("T")




@dataclass
class DalstonProcess:
    """One `dalston` subprocess: `role` is serve, gateway or worker; `port` is its HTTP port on loopback."""

    role: str
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    worker_id: str | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no drain, no deregistration; the OS closes its sockets."""
        self.signal(signal.SIGKILL)
        self.process.wait()

    async def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout_s
        while self.running:
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name} did not exit within {timeout_s:g} s\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return f"--- {self.name} log ---\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"--- {self.name}: no log ---"


@dataclass
class ProcessGroup:
    """Starts `dalston` commands for one test and stops them all afterwards."""

    folder: Path
    redis_url: str = ""  # `dalston serve` needs none
    key_prefix: str = "dalston:test:"
    env: dict[str, str] = field(default_factory=dict)
    started: list[DalstonProcess] = field(default_factory=list)

    def start_gateway(self, *, env: Mapping[str, str] | None = None) -> DalstonProcess:
        port = free_port()
        args = ["gateway", "--redis-url", self.redis_url, "--port", str(port)]
        return self._start("gateway", f"gateway-{port}", port, args, env)

    def start_worker(self, worker_id: str, *, capacity: int = 1, env: Mapping[str, str] | None = None,
                     launcher: Path | None = None) -> DalstonProcess:
        """`launcher`: a script run instead of `python -m dalston.cli` (with the same arguments)."""
        port = free_port()
        args = ["worker", "--redis-url", self.redis_url, "--port", str(port), "--worker-id", worker_id,
                "--capacity", str(capacity), "--models", "fast"]
        process = self._start("worker", worker_id, port, args, env, launcher)
        process.worker_id = worker_id
        return process

    def start_serve(self, *, capacity: int = 4, env: Mapping[str, str] | None = None) -> DalstonProcess:
        port = free_port()
        args = ["serve", "--port", str(port), "--capacity", str(capacity)]
        return self._start("serve", f"serve-{port}", port, args, env)

    def _start(self, role: str, name: str, port: int, args: list[str],
               env: Mapping[str, str] | None, launcher: Path | None = None) -> DalstonProcess:
        log_path = self.folder / f"{name}.log"
        full_env = {**os.environ, **FAST_CLUSTER_ENV, "DALSTON_REGISTRY_KEY_PREFIX": self.key_prefix,
                    **self.env, **(env or {})}
        command = [sys.executable, str(launcher)] if launcher else [sys.executable, "-m", "dalston.cli"]
        with log_path.open("wb") as log:
            process = subprocess.Popen([*command, *args], cwd=REPO, env=full_env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = DalstonProcess(role, name, port, process, log_path)
        self.started.append(started)
        return started

    async def wait_ready(self, *processes: DalstonProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until each worker's `/healthz` says ready and each gateway's (or serve's) `/readyz` answers 200."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            await asyncio.gather(*(_wait_ready(http, p, timeout_s) for p in processes))

    def stop_all(self) -> None:
        """SIGTERM to every process still running, then SIGKILL to any that has not exited in time."""
        for process in self.started:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.started:
            try:
                process.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


async def _wait_ready(http: aiohttp.ClientSession, process: DalstonProcess, timeout_s: float) -> None:
    path = "/healthz" if process.role == "worker" else "/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running:
            pytest.fail(f"{process.name} exited with code {process.process.returncode} before it was ready\n"
                        f"{process.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            async with http.get(process.http_url + path) as response:
                body = await response.json()
                if response.status == 200 and body.get("status") == "ready":
                    return
        await asyncio.sleep(0.1)
    pytest.fail(f"{process.name} was not ready within {timeout_s:g} s\n{process.log_tail()}")


@pytest.fixture
def dalston_processes(tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path, redis_server.url, redis_prefix)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def cluster_registry(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[RedisRegistry]:
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    yield registry
    await registry.close()


# -- clients ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray
    transcript: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / 16000


def load_clip(stem: str) -> Clip:
    """A LibriVox clip by the end of its name (e.g. "0880"): 16 kHz int16 samples and the reference text."""
    (wav,) = LIBRIVOX.glob(f"*{stem}.wav")
    samples, rate = read_wav(wav)
    assert rate == 16000
    return Clip(samples, wav.with_suffix(".txt").read_text().strip())


async def next_event(stream: StreamClient, timeout_s: float = EVENT_TIMEOUT_S) -> dict[str, Any] | None:
    """The next JSON event, or None once the server closed the socket (then `stream.close_code` is set)."""
    msg = await stream.ws.receive(timeout=timeout_s)
    if msg.type is aiohttp.WSMsgType.TEXT:
        return json.loads(msg.data)
    stream.close_code = stream.ws.close_code
    return None


async def stream_to_end(stream: StreamClient, samples: np.ndarray, *, speed: float = 3.0,
                        chunk_ms: int = 100, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Send `samples` then `end`, and collect every further event until the server closes the socket."""
    async with asyncio.timeout(timeout_s):
        sender = asyncio.create_task(stream.send_pcm(samples, speed=speed, chunk_ms=chunk_ms))
        try:
            events = [event async for event in stream.events()]
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return events


async def poll_until(check: Callable[[], Awaitable[T]], what: str, timeout_s: float = 15.0,
                     interval_s: float = 0.1) -> T:
    """Call `check` until it returns something truthy; fail the test with `what` if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting until {what}")
        await asyncio.sleep(interval_s)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event.get("type") == kind]
