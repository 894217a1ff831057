"""Registry benchmark: acquire + release latency and throughput with many simulated workers in a real Redis.

Throughput: simulated workers register (and keep heartbeating in the background, as real ones would); several
"gateways" (separate RedisRegistry clients) run concurrent callers that each acquire a slot and release it.
Half of every worker's slots are held throughout, so choices happen in a partly full cluster.

Redis time (`redis_time`): a cluster of --sim-workers workers holding --sim-sessions live sessions; each script
is run one at a time and Redis's own execution time per call is read from SLOWLOG (threshold 0), with the
client's round trip beside it: acquire, release, a heartbeat renewing the worker's ~10 live sessions, a
reconciling heartbeat (one lapsed lease ended, one unknown session adopted), models(), a reap round.

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
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial

import redis
import redis.asyncio as aioredis

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import SessionInfo, WorkerInfo
from dalston.supervisor.cluster.router import percentile

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
    # Leases long enough that the held sessions outlive the run: these heartbeats list no sessions.
    return RedisRegistry(client, prefix=prefix, owns_client=True, lease_ttl_s=3600.0)


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


Calls = list[Callable[[], Awaitable[object]]]


async def run_calls(calls: Calls) -> list[float]:
    round_trips = []
    for call in calls:
        started = time.perf_counter()
        await call()
        round_trips.append(time.perf_counter() - started)
    return round_trips


async def measure(client: aioredis.Redis, make_calls: Callable[[], Awaitable[Calls]]) -> dict[str, object]:
    """Two passes of the calls `make_calls` prepares, one at a time.

    First with SLOWLOG at threshold 0: Redis's execution time of each script (its median and p95; logging every
    command inside the scripts adds a little). Then without it: the mean from INFO commandstats, and the
    client's round trips.
    """
    calls = await make_calls()
    log_len = len(calls) * 200 + 64  # Redis 7 also logs every command a script runs: room for all of them
    await client.config_set("slowlog-max-len", log_len)
    await client.config_set("slowlog-log-slower-than", 0)
    await client.slowlog_reset()
    await run_calls(calls)
    entries = await client.slowlog_get(log_len)
    await client.config_set("slowlog-log-slower-than", 10_000)
    scripts_us = sorted(e["duration"] for e in entries if _text(e["command"]).upper().startswith("EVALSHA"))
    calls = await make_calls()
    before = await script_cost_us(client)
    round_trips = await run_calls(calls)
    after = await script_cost_us(client)
    mean_us = (after[1] - before[1]) / max(1, after[0] - before[0])
    return {"calls": len(calls), "redis_us": summary_us(scripts_us), "redis_us_mean_unlogged": round(mean_us, 1),
            "round_trip_ms": summary_ms(round_trips)}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def summary_us(values: list[int]) -> dict[str, float]:
    return {"median": statistics.median(values) if values else 0, "p95": percentile(values, 0.95),
            "max": values[-1] if values else 0}


async def simulated_cluster(registry: RedisRegistry, n_workers: int, n_sessions: int) -> dict[str, list[str]]:
    """Workers with `n_sessions` live sessions spread evenly, and two free slots each; worker id -> its sessions."""
    per_worker = n_sessions // n_workers
    live: dict[str, list[str]] = {f"w{n:05d}": [] for n in range(n_workers)}
    for worker_id in live:
        info = WorkerInfo(worker_id, f"ws://{worker_id}:9000", per_worker + 2, ("fast", "accurate"))
        await registry.register(info, LIVENESS_TTL_S)
    for n in range(n_workers * per_worker):
        allocation = await registry.acquire(SessionInfo(f"live-{n}", "fast"))
        assert allocation is not None
        live[allocation.worker_id].append(allocation.session_id)
    return live


async def redis_time(url: str, args: argparse.Namespace) -> dict[str, object]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(url, decode_responses=True)
    registry = RedisRegistry(client, prefix=prefix)
    live = await simulated_cluster(registry, args.sim_workers, args.sim_sessions)
    sample = list(live)[: args.sim_calls]
    rounds = iter(range(1_000_000))
    acquired: list[list[str]] = []  # two passes of acquires fill each worker's two free slots at most

    async def acquires() -> Calls:
        n = next(rounds)
        acquired.append([f"probe-{n}-{w}" for w in sample])
        return [partial(registry.acquire, SessionInfo(p, "fast")) for p in acquired[-1]]

    async def releases() -> Calls:
        return [partial(registry.release, p) for p in acquired.pop(0)]

    async def renewals() -> Calls:
        return [partial(registry.heartbeat, w, LIVENESS_TTL_S, live[w]) for w in sample]

    async def reconciliations() -> Calls:
        # Per worker: one session whose lease lapsed and that it no longer lists, one it lists the registry never saw.
        n = next(rounds)
        for w in sample:
            await client.zadd("{" + prefix + "}leases", {live[w][0]: 0}, xx=True)
            live[w] = [*live[w][1:], f"adopted-{n}-{w}"]
        return [partial(registry.heartbeat, w, LIVENESS_TTL_S, live[w]) for w in sample]

    async def model_lists() -> Calls:
        return [registry.models for _ in range(200)]

    async def reaps() -> Calls:
        return [registry.reap for _ in range(20)]

    report: dict[str, object] = {"workers": len(live), "live_sessions": sum(map(len, live.values()))}
    for name, make in (("acquire", acquires), ("release", releases), ("heartbeat_renew_10", renewals),
                       ("heartbeat_reconcile", reconciliations), ("models", model_lists),
                       ("reap_nobody_dead", reaps)):
        report[name] = await measure(client, make)
    await client.aclose()
    return report


async def main_async(url: str, args: argparse.Namespace) -> dict[str, object]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    server = await client.info("server")
    await client.aclose()
    if args.only_redis_time:
        return {"redis_version": server["redis_version"], "redis_time": await redis_time(url, args)}
    results = [await bench(url, int(n), args) for n in args.workers.split(",")]
    return {
        "redis_version": server["redis_version"],
        "capacity_per_worker": args.capacity,
        "gateways": args.gateways,
        "concurrent_callers": args.concurrency,
        "duration_s": args.duration_s,
        "heartbeat_interval_s": args.heartbeat_interval_s,
        "results": results,
        "redis_time": await redis_time(url, args),
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
    parser.add_argument("--sim-workers", type=int, default=1000, help="redis_time: simulated workers")
    parser.add_argument("--sim-sessions", type=int, default=10_000, help="redis_time: live sessions, spread evenly")
    parser.add_argument("--sim-calls", type=int, default=1000, help="redis_time: calls measured per operation")
    parser.add_argument("--only-redis-time", action="store_true", help="skip the throughput runs")
    args = parser.parse_args()
    if args.redis_url:
        report = asyncio.run(main_async(args.redis_url, args))
    else:
        with private_redis() as url:
            report = asyncio.run(main_async(url, args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
