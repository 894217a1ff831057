"""Link benchmark: what the gateway and its link to the worker add, against talking to the worker directly.

Starts a private redis-server, one `dalston worker` (tiny.en only) and one `dalston gateway` as processes, then:
- allocation: sequential sessions, time from opening the client socket to `session.begin`, through the
  gateway (handshake + atomic acquire in Redis + link to the worker + spawn) and directly on the worker's link
  (link handshake + spawn), so the difference is what the gateway adds;
- relay latency: one frame holding 0.5 s of silence and 1 s of speech; the time from sending it to the
  `vad.speech_start` event coming back. The worker does the same work on both paths, so the difference is
  the gateway's extra hop, there and back;
- per-frame cost: N small frames of silence sent as fast as the sockets take them, then `end`; the time from
  the first frame to `session.end`, through the gateway and directly, divided by N (the hops run in
  parallel processes, so this is throughput, not latency);
- placement rate: `--placements` sessions opened (to `session.begin`) and ended by `--concurrency` clients at
  once through the gateway: sessions placed per second, and the gateway process's CPU per session start.

    .venv/bin/python benchmarks/link_bench.py [--sessions 20] [--frames 3000] [--frame-ms 10] [--runs 5]

Prints one JSON document. Medians and p95 over the runs; the machine is shared, so compare runs, not digits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from registry_bench import private_redis

from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.protocol import End, StreamParams
from dalston.actors.speech.session import PushAudio
from dalston.config import load_config
from dalston.supervisor.cluster.router import percentile
from dalston.web.client import StreamClient, wait_until_ready
from dalston.web.link import LinkRefused, RemoteSessionRef, open_link

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "dalston" / "data" / "sample.wav"  # starts with 0.5 s of silence, then speech
PREFIX = "dalston:linkbench:"
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dalston_process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "DALSTON_NODE_MODELS": "fast", "DALSTON_REGISTRY_KEY_PREFIX": PREFIX}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dalston.cli", "--log-level", "warning", *args],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


@asynccontextmanager
async def direct_session(http: aiohttp.ClientSession, worker_ws: str, n: int) -> AsyncIterator[RemoteSessionRef]:
    """A session spawned on the worker's link endpoint, as the gateway would, but with no gateway or Redis."""
    link = await open_link(http, worker_ws, load_config().node.link_token, f"bench_{n}_{time.monotonic_ns()}",
                           StreamParams())
    if isinstance(link, LinkRefused):
        raise SystemExit(f"worker refused the spawn: {link}")
    try:
        yield link
    finally:
        await link.stop()


async def allocation_via_gateway(url: str) -> float:
    started = time.perf_counter()
    async with StreamClient(url) as stream:
        async for event in stream.events():
            if event["type"] == "session.begin":
                elapsed = time.perf_counter() - started
                await stream.end()
            elif event["type"] in ("session.end", "error"):
                break
    return elapsed


async def allocation_direct(http: aiohttp.ClientSession, worker_ws: str, n: int) -> float:
    started = time.perf_counter()
    async with direct_session(http, worker_ws, n) as link:
        async for text in link.events():
            kind = json.loads(text)["type"]
            if kind == "session.begin":
                elapsed = time.perf_counter() - started
                await link.tell(End())
            elif kind in ("session.end", "error"):
                break
    return elapsed


async def frames_via_gateway(url: str, frame: bytes, n: int) -> float:
    async with StreamClient(url) as stream:
        events = stream.events()
        assert (await anext(events))["type"] == "session.begin"
        started = time.perf_counter()
        for _ in range(n):
            await stream.send_audio(frame)
        await stream.end()
        async for event in events:
            if event["type"] == "session.end":
                return time.perf_counter() - started
    raise RuntimeError("no session.end through the gateway")


async def frames_direct(http: aiohttp.ClientSession, worker_ws: str, frame: bytes, n: int, run: int) -> float:
    async with direct_session(http, worker_ws, run) as link:
        events = link.events()
        assert json.loads(await anext(events))["type"] == "session.begin"
        started = time.perf_counter()
        for _ in range(n):
            await link.tell(PushAudio(frame))
        await link.tell(End())
        async for text in events:
            if json.loads(text)["type"] == "session.end":
                return time.perf_counter() - started
    raise RuntimeError("no session.end from the worker")


async def speech_start_via_gateway(url: str, frame: bytes) -> float:
    async with StreamClient(url) as stream:
        events = stream.events()
        assert (await anext(events))["type"] == "session.begin"
        started = time.perf_counter()
        await stream.send_audio(frame)
        async for event in events:
            if event["type"] == "vad.speech_start":
                return time.perf_counter() - started
    raise RuntimeError("no vad.speech_start through the gateway")


async def speech_start_direct(http: aiohttp.ClientSession, worker_ws: str, frame: bytes, run: int) -> float:
    async with direct_session(http, worker_ws, run) as link:
        events = link.events()
        assert json.loads(await anext(events))["type"] == "session.begin"
        started = time.perf_counter()
        await link.tell(PushAudio(frame))
        async for text in events:
            if json.loads(text)["type"] == "vad.speech_start":
                return time.perf_counter() - started
    raise RuntimeError("no vad.speech_start from the worker")


async def placement_rate(url: str, gateway_pid: int, total: int, concurrency: int) -> dict[str, float]:
    gateway = psutil.Process(gateway_pid)
    cpu_before, started = sum(gateway.cpu_times()[:2]), time.perf_counter()
    left = iter(range(total))
    refused: list[str] = []

    async def client() -> None:
        for _ in left:
            async with StreamClient(url) as stream:
                async for event in stream.events():
                    if event["type"] == "session.begin":
                        await stream.end()
                    elif event["type"] == "error":
                        refused.append(event["code"])
                        break

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, sum(gateway.cpu_times()[:2]) - cpu_before
    return {"sessions": total, "concurrency": concurrency, "refused": len(refused),
            "sessions_per_s": round(total / elapsed, 1),
            "gateway_cpu_ms_per_session_start": round(1000 * cpu / total, 2)}


def summary_ms(seconds: list[float]) -> dict[str, float]:
    values = sorted(s * 1000 for s in seconds)
    return {"median": round(statistics.median(values), 2), "p95": round(percentile(values, 0.95), 2),
            "min": round(values[0], 2), "n": len(values)}


async def measure(gateway_url: str, worker_ws: str, args: argparse.Namespace, gateway_pid: int) -> dict[str, Any]:
    frame = bytes(32 * args.frame_ms)  # silence, 16 kHz int16
    speech = read_wav(SAMPLE)[0][:24000].astype("<i2").tobytes()
    via, direct, relay_via, relay_direct = [], [], [], []
    frames_via, frames_direct_s = [], []
    async with aiohttp.ClientSession() as http:
        for n in range(args.sessions):  # alternate, so drift in machine load hits both paths alike
            via.append(await allocation_via_gateway(gateway_url))
            direct.append(await allocation_direct(http, worker_ws, n))
            relay_via.append(await speech_start_via_gateway(gateway_url, speech))
            relay_direct.append(await speech_start_direct(http, worker_ws, speech, n))
        for run in range(args.runs):
            frames_via.append(await frames_via_gateway(gateway_url, frame, args.frames))
            frames_direct_s.append(await frames_direct(http, worker_ws, frame, args.frames, run))
    overhead_us = [(v - d) / args.frames * 1e6 for v, d in zip(frames_via, frames_direct_s, strict=True)]
    placement = await placement_rate(gateway_url, gateway_pid, args.placements, args.concurrency)
    return {
        "placement": placement,
        "allocation_to_session_begin_ms": {"via_gateway": summary_ms(via), "direct_to_worker": summary_ms(direct)},
        "speech_frame_to_vad_speech_start_ms": {"via_gateway": summary_ms(relay_via),
                                                 "direct_to_worker": summary_ms(relay_direct)},
        "frames": {"count": args.frames, "frame_ms": args.frame_ms,
                   "via_gateway_total_ms": summary_ms(frames_via),
                   "direct_total_ms": summary_ms(frames_direct_s),
                   "per_frame_via_gateway_us": round(statistics.median(frames_via) / args.frames * 1e6, 1),
                   "per_frame_direct_us": round(statistics.median(frames_direct_s) / args.frames * 1e6, 1),
                   "gateway_overhead_per_frame_us_median": round(statistics.median(overhead_us), 1)},
    }


async def main_async(args: argparse.Namespace, redis_url: str, folder: Path) -> dict[str, Any]:
    worker_port, gateway_port = free_port(), free_port()
    worker_args = ["worker", "--redis-url", redis_url, "--port", str(worker_port), "--worker-id", "bench-w1",
                   "--capacity", str(max(4, 2 * args.concurrency)), "--models", "fast"]
    gateway_args = ["gateway", "--redis-url", redis_url, "--port", str(gateway_port)]
    with dalston_process(worker_args, folder / "worker.log") as worker, \
            dalston_process(gateway_args, folder / "gateway.log") as gateway:
        await wait_until_ready(f"http://127.0.0.1:{worker_port}/healthz", worker, timeout_s=READY_TIMEOUT_S)
        await wait_until_ready(f"http://127.0.0.1:{gateway_port}/readyz", gateway, timeout_s=READY_TIMEOUT_S)
        url = f"ws://127.0.0.1:{gateway_port}/v1/audio/transcriptions/stream"
        return await measure(url, f"ws://127.0.0.1:{worker_port}", args, gateway.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--frame-ms", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--placements", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(main_async(args, redis_url, Path(folder)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
