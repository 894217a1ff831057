"""A call that outlives its worker: a gateway, three workers and real Redis (DESIGN §6 failover), for the failover
tests and benchmarks/failover_bench.py.

The call is the five LibriVox clips one after another with a second of silence between them (about 30 s, 71
words), streamed at real-time pace. Two calls run at once on different workers: one is disturbed (its worker
killed, stopped or drained), the other is the same stream without a fault.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from cluster_fixtures import DalstonProcess, ProcessGroup, load_clip, next_event

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.web.client import StreamClient

CLIP_STEMS = ("0870", "0880", "0890", "0920", "0930")
PAUSE_S = 1.0
RATE = 16000
# Failover timings for tests: a hung worker is noticed within a second and a half.
FAILOVER_ENV = {"DALSTON_SERVER_LINK_HEARTBEAT_S": "3", "DALSTON_SERVER_SPAWN_TIMEOUT_S": "2"}


@dataclass(frozen=True)
class Call:
    samples: np.ndarray
    transcript: str
    speech_s: tuple[tuple[float, float], ...]  # where each clip lies in the call (session time)


def build_call() -> Call:
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    spans: list[tuple[float, float]] = []
    at = 0.5
    pieces.append(np.zeros(int(0.5 * RATE), dtype=np.int16))
    for stem in CLIP_STEMS:
        clip = load_clip(stem)
        pieces += [clip.samples.astype(np.int16), np.zeros(int(PAUSE_S * RATE), dtype=np.int16)]
        texts.append(clip.transcript)
        spans.append((at, at + clip.duration_s))
        at += clip.duration_s + PAUSE_S
    return Call(np.concatenate(pieces), " ".join(texts), tuple(spans))


@dataclass
class CallRecord:
    """Everything one client saw, with the time each event arrived (monotonic)."""

    session_id: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)
    close_code: int | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") == kind]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return self.of_type("transcript.final")


async def run_call(url: str, call: Call, record: CallRecord, *, speed: float = 1.0,
                   on_begin: Callable[[str], Awaitable[None]] | None = None, timeout_s: float = 120.0,
                   **params: Any) -> CallRecord:
    """Stream the call at `speed` x real time, then `end`; collect every event until the server closes.
    `params`: query parameters (an `encoding`, a `sample_rate`: the call is resampled to it)."""
    samples = call.samples
    rate = int(params.get("sample_rate", RATE))
    if rate != RATE:
        samples = np.clip(soxr.resample(samples.astype(np.float32), RATE, rate), -32768, 32767).astype(np.int16)
    async with asyncio.timeout(timeout_s), StreamClient(url, **params) as stream:
        first = await next_event(stream)
        assert first is not None and first["type"] == "session.begin", first
        record.session_id = first["session_id"]
        record.events.append(first)
        record.arrived_at.append(time.monotonic())
        if on_begin is not None:
            await on_begin(record.session_id)
        sender = asyncio.create_task(stream.send_pcm(samples, speed=speed))
        try:
            async for event in stream.events():
                record.events.append(event)
                record.arrived_at.append(time.monotonic())
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        record.close_code = stream.close_code
    return record


async def worker_of(registry: RedisRegistry, session_id: str) -> str:
    session = await registry.get_session(session_id)
    assert session is not None and session.status == "active", session
    return session.worker_id


def by_id(workers: list[DalstonProcess], worker_id: str) -> DalstonProcess:
    (process,) = [w for w in workers if w.worker_id == worker_id]
    return process


async def start_cluster(group: ProcessGroup, capacity: int = 2,
                        env: dict[str, str] | None = None) -> tuple[DalstonProcess, list[DalstonProcess]]:
    workers = [group.start_worker(f"w{i}", capacity=capacity, env=env) for i in (1, 2, 3)]
    gateway = group.start_gateway(env={**FAILOVER_ENV, **(env or {})})
    await group.wait_ready(gateway, *workers)
    return gateway, workers
