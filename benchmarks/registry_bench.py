"""Registry benchmark: acquire + release latency and throughput with many simulated workers in a real Redis.

Simulated workers register (and keep heartbeating in the background, as real ones would); several
"gateways" (separate RedisRegistry clients) run concurrent callers that each acquire a slot and release it.
Half of every worker's slots are held throughout, so choices happen in a partly full cluster.

    .venv/bin/python benchmarks/registry_bench.py [--redis-url URL] [--workers 10,1000] [--duration-s 5]

Without --redis-url a private redis-server is started in a temporary folder. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import redis
import redis.asyncio as aioredis

from dalston.supervisor.redis_registry import RedisRegistry
from dalston.supervisor.registry import SessionInfo, WorkerInfo
from dalston.supervisor.router import percentile

LIVENESS_TTL_S = 30.0
_HEARTBEAT_LANES = 16


@contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; pass --redis-url")
    with tempfile.TemporaryDirectory() as folder, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_until_answering(url)
            yield url
        finally:
            process.terminate()
            process.wait()


def wait_until_answering(url: str, timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    client.close()


def gateway(url: str, prefix: str, connections: int) -> RedisRegistry:
    # A connection for each concurrent caller: the figures then measure Redis and the client, not pool waits.
    client = aioredis.Redis.from_url(url, max_connections=connections, decode_responses=True)
    return RedisRegistry(client, prefix=prefix, owns_client=True)


async def script_cost_us(client: aioredis.Redis) -> tuple[int, int]:
    """(calls, microseconds) Redis has spent in EVALSHA so far."""
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def server_cost(registry: RedisRegistry, client: aioredis.Redis, n: int, free: int) -> dict[str, float]:
    """Redis CPU time per acquire and per release script, one call at a time, in batches that fit."""
    spent = {"acquire": [0, 0], "release": [0, 0]}
    done = 0
    while done < n:
        batch = [f"cost-{done + i}" for i in range(min(free, n - done))]
        for kind, calls in (
            ("acquire", [registry.acquire(SessionInfo(s, "fast")) for s in batch]),
            ("release", [registry.release(s) for s in batch]),
        ):
            before = await script_cost_us(client)
            for call in calls:
                await call
            after = await script_cost_us(client)
            spent[kind][0] += after[0] - before[0]
            spent[kind][1] += after[1] - before[1]
        done += len(batch)
    return {f"server_us_per_{kind}": round(us / max(1, calls), 2) for kind, (calls, us) in spent.items()}


async def heartbeats(url: str, prefix: str, worker_ids: list[str], interval_s: float, seconds: float) -> int:
    """Every worker heartbeats once per interval, from a few coroutines; returns how many were sent."""
    registry = gateway(url, prefix, _HEARTBEAT_LANES)
    deadline = time.perf_counter() + seconds
    sent = 0

    async def lane(ids: list[str]) -> None:
        nonlocal sent
        pause_s = interval_s / max(1, len(ids))
        while time.perf_counter() < deadline:
            for worker_id in ids:
                await registry.heartbeat(worker_id, LIVENESS_TTL_S)
                sent += 1
                await asyncio.sleep(pause_s)

    lanes = min(_HEARTBEAT_LANES, len(worker_ids))
    await asyncio.gather(*(lane(worker_ids[n::lanes]) for n in range(lanes)))
    await registry.close()
    return sent


def heartbeat_process(url: str, prefix: str, worker_ids: list[str], interval_s: float, seconds: float) -> int:
    """Runs in its own process, as the workers' heartbeats would: the gateways' loop does not pay for them."""
    return asyncio.run(heartbeats(url, prefix, worker_ids, interval_s, seconds))


async def caller(registry: RedisRegistry, name: str, deadline: float, samples: dict[str, list[float]]) -> None:
    n = 0
    while time.perf_counter() < deadline:
        session_id = f"{name}-{n}"
        n += 1
        started = time.perf_counter()
        allocation = await registry.acquire(SessionInfo(session_id, "fast"))
        acquired = time.perf_counter()
        if allocation is None:
            samples["no_capacity"].append(acquired - started)
            continue
        await registry.release(session_id)
        released = time.perf_counter()
        samples["acquire"].append(acquired - started)
        samples["release"].append(released - acquired)
        samples["pair"].append(released - started)


def summary_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values)
    return {
        "median": round(statistics.median(ordered), 3) if ordered else 0.0,
        "p95": round(percentile(ordered, 0.95), 3),
        "max": round(ordered[-1], 3) if ordered else 0.0,
    }


async def setup_cluster(registry: RedisRegistry, n_workers: int, capacity: int) -> list[str]:
    worker_ids = [f"w{n:05d}" for n in range(n_workers)]
    for worker_id in worker_ids:
        info = WorkerInfo(worker_id, f"ws://{worker_id}:9000", capacity, ("fast", "accurate"))
        await registry.register(info, LIVENESS_TTL_S)
    for n in range(n_workers * capacity // 2):  # half the slots stay taken
        await registry.acquire(SessionInfo(f"held-{n}", "fast"))
    return worker_ids


async def bench(url: str, n_workers: int, args: argparse.Namespace) -> dict[str, object]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    per_gateway = -(-args.concurrency // args.gateways)
    gateways = [gateway(url, prefix, per_gateway + 1) for _ in range(args.gateways)]
    workers_side = gateway(url, prefix, 2)  # the simulated workers' own connection, for heartbeats
    worker_ids = await setup_cluster(workers_side, n_workers, args.capacity)
    stats_client = aioredis.Redis.from_url(url, decode_responses=True)
    free_slots = n_workers * args.capacity - n_workers * args.capacity // 2
    cost = await server_cost(gateways[0], stats_client, args.cost_calls, free_slots)
    samples: dict[str, list[float]] = {"acquire": [], "release": [], "pair": [], "no_capacity": []}
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    beat_args = (url, prefix, worker_ids, args.heartbeat_interval_s, args.duration_s)
    beats = asyncio.get_running_loop().run_in_executor(pool, heartbeat_process, *beat_args)
    await asyncio.sleep(1.0)  # let the heartbeat process start before the clock runs
    started = time.perf_counter()
    deadline = started + args.duration_s
    callers = [caller(gateways[n % len(gateways)], f"c{n}", deadline, samples) for n in range(args.concurrency)]
    await asyncio.gather(*callers)
    elapsed_s = time.perf_counter() - started
    heartbeats_sent = await beats
    pool.shutdown()
    reap_started = time.perf_counter()
    await workers_side.reap()
    reap_ms = (time.perf_counter() - reap_started) * 1000
    for registry in [*gateways, workers_side]:
        await registry.close()
    await stats_client.aclose()
    return {
        "workers": n_workers,
        **cost,
        "pairs": len(samples["pair"]),
        "no_capacity": len(samples["no_capacity"]),
        "pairs_per_s": round(len(samples["pair"]) / elapsed_s, 1),
        "acquire_ms": summary_ms(samples["acquire"]),
        "release_ms": summary_ms(samples["release"]),
        "acquire_release_ms": summary_ms(samples["pair"]),
        "heartbeats_per_s": round(heartbeats_sent / elapsed_s, 1),
        "reap_round_ms": round(reap_ms, 3),
    }


async def main_async(url: str, args: argparse.Namespace) -> dict[str, object]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    server = await client.info("server")
    await client.aclose()
    results = [await bench(url, int(n), args) for n in args.workers.split(",")]
    return {
        "redis_version": server["redis_version"],
        "capacity_per_worker": args.capacity,
        "gateways": args.gateways,
        "concurrent_callers": args.concurrency,
        "duration_s": args.duration_s,
        "heartbeat_interval_s": args.heartbeat_interval_s,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--workers", default="10,1000", help="comma-separated cluster sizes")
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--cost-calls", type=int, default=2000, help="sequential calls to measure Redis time")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers, over all gateways")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--heartbeat-interval-s", type=float, default=1.0)
    args = parser.parse_args()
    if args.redis_url:
        report = asyncio.run(main_async(args.redis_url, args))
    else:
        with private_redis() as url:
            report = asyncio.run(main_async(url, args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
