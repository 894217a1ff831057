"""Chaos (issue 11): 20 calls across three workers while workers are SIGKILLed or SIGSTOPped at random and
replaced (a bounded loop, loopback only). Every call ends with `session.end` and no error; the word error over
all calls stays within one point of the fault-free run; no slot is left taken afterwards."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time

import pytest
from cluster_fixtures import DalstonProcess, ProcessGroup, poll_until
from failover_fixtures import CallRecord, build_call, run_call, start_cluster

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

CALLS = 20
ARRIVAL_S = 1.5  # a call starts every 1.5 s: all 20 running within 30 s
CHAOS_S = 45.0
CAPACITY = 12  # two workers hold every call while the third is being replaced


async def test_twenty_calls_survive_workers_killed_and_hung_at_random(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes, capacity=CAPACITY)
    call = build_call()
    reference = CallRecord()
    await run_call(gateway.stream_url, call, reference, speed=4.0)  # the fault-free run
    records = [CallRecord() for _ in range(CALLS)]

    async def one(i: int) -> None:
        await asyncio.sleep(i * ARRIVAL_S)
        await run_call(gateway.stream_url, call, records[i], timeout_s=180.0)

    calls = [asyncio.create_task(one(i)) for i in range(CALLS)]
    live = {w.worker_id: w for w in workers if w.worker_id is not None}
    faults = await chaos(dalston_processes, live, random.Random(11))
    async with asyncio.timeout(240):
        await asyncio.gather(*calls)
    for record in records:
        assert not record.of_type("error"), (record.session_id, record.of_type("error"))
        assert record.close_code == 1000
        assert record.events[-1]["type"] == "session.end"
        assert all(b["start"] > a["start"] for a, b in itertools.pairwise(record.finals))
    moved = sum(len(r.of_type("session.resumed")) for r in records)
    assert faults >= 3 and moved >= faults  # every fault hit calls, and each of them moved
    said = " ".join(r.events[-1]["transcript"] for r in records)
    wer = word_error_rate(" ".join([call.transcript] * CALLS), said)
    reference_wer = word_error_rate(call.transcript, reference.events[-1]["transcript"])
    assert wer <= reference_wer + 0.01, (wer, reference_wer)

    async def all_free() -> bool:
        return not await cluster_registry.list_sessions() and all(
            w.active_sessions == 0 for w in await cluster_registry.list_workers() if w.alive)

    await poll_until(all_free, "every slot is free again", timeout_s=20.0)


async def chaos(group: ProcessGroup, live: dict[str, DalstonProcess], rng: random.Random) -> int:
    """Kill or hang a random worker every few seconds and start a replacement; the number of faults."""
    faults = 0
    until = time.monotonic() + CHAOS_S
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(4.0, 8.0))
        victim = live.pop(rng.choice(sorted(live)))
        hang = rng.random() < 0.4
        victim.signal(signal.SIGSTOP if hang else signal.SIGKILL)
        faults += 1
        replacement = group.start_worker(f"c{faults}", capacity=CAPACITY)
        await group.wait_ready(replacement)
        assert replacement.worker_id is not None
        live[replacement.worker_id] = replacement
        if hang:
            await asyncio.sleep(3.0)  # long enough to be found out by its silence; then it is gone for good
            victim.kill()
    return faults
