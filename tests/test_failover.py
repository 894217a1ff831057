"""A call survives its worker (DESIGN §6, §11; issue 11), end to end: a gateway, three `dalston worker` processes
and a real Redis on loopback, real speech at real-time pace.

Each test runs two copies of the same call at once on different workers; one is disturbed (its worker SIGKILLed,
SIGSTOPped, killed in a pause, killed again during the replay, or drained), the other is the fault-free
reference. The disturbed client must see `session.resumed` and no error; its finals in order, none twice; its
whole transcript within one point of word error of the reference's; and no slot may stay taken afterwards.
Every process is stopped by its pid (the fixture), every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from cluster_fixtures import DalstonProcess, ProcessGroup, poll_until
from failover_fixtures import Call, CallRecord, build_call, by_id, run_call, start_cluster, worker_of

from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

WER_MARGIN = 0.01  # the bound: within one point of the same stream without a fault


def assert_one_whole_call(record: CallRecord, reference: CallRecord, call: Call, moves: int) -> None:
    assert not record.of_type("error"), record.of_type("error")
    assert record.close_code == 1000
    resumed = record.of_type("session.resumed")
    assert len(resumed) == moves, resumed
    assert all(r["session_id"] == record.session_id and r["gap_s"] >= 0 for r in resumed)
    assert len(record.of_type("session.begin")) == 1
    finals = record.finals
    assert finals, record.events
    for before, after in itertools.pairwise(finals):
        assert after["start"] > before["start"], (before, after)  # in order, none twice
        assert after["start"] >= before["end"] - 1e-3, (before, after)
    end = record.events[-1]
    assert end["type"] == "session.end", record.events[-3:]
    assert end["transcript"] == " ".join(final["text"] for final in finals)  # the whole call, from both workers
    assert end["total_duration"] == pytest.approx(len(call.samples) / 16000, abs=0.1)
    wer = word_error_rate(call.transcript, end["transcript"])
    reference_wer = word_error_rate(call.transcript, reference.events[-1]["transcript"])
    assert wer <= reference_wer + WER_MARGIN, (wer, reference_wer, end["transcript"])


async def no_slot_taken(registry: RedisRegistry) -> None:
    async def all_free() -> bool:
        return not await registry.list_sessions() and all(w.active_sessions == 0 for w in await
                                                            registry.list_workers() if w.alive)
    await poll_until(all_free, "every slot is free again", timeout_s=20.0)


async def disturbed_call(gateway: DalstonProcess, workers: list[DalstonProcess], registry: RedisRegistry,
                         call: Call, at_s: float, fault: Callable[[DalstonProcess], None],
                         speed: float = 1.0, **params: Any) -> tuple[CallRecord, CallRecord, DalstonProcess]:
    """The call twice at once (different workers); `fault` hits the first one's worker `at_s` into the call."""
    disturbed, reference = CallRecord(), CallRecord()
    hit: list[DalstonProcess] = []
    placed = asyncio.Event()

    async def schedule_fault(session_id: str) -> None:
        victim = by_id(workers, await worker_of(registry, session_id))
        hit.append(victim)
        placed.set()

        async def later() -> None:
            await asyncio.sleep(at_s)
            fault(victim)

        asyncio.get_running_loop().create_task(later())

    reference_on: list[str] = []

    async def note_reference(session_id: str) -> None:
        reference_on.append(await worker_of(registry, session_id))

    first = asyncio.create_task(run_call(gateway.stream_url, call, disturbed, on_begin=schedule_fault, speed=speed,
                                         **params))
    async with asyncio.timeout(30):
        await placed.wait()
    await run_call(gateway.stream_url, call, reference, on_begin=note_reference, speed=speed, **params)
    await first
    assert reference_on != [hit[0].worker_id]  # the reference ran undisturbed elsewhere
    return disturbed, reference, hit[0]


def mid_utterance(call: Call) -> float:
    start, end = call.speech_s[2]
    return start + 0.6 * (end - start)


async def test_a_worker_killed_mid_utterance_costs_the_client_only_a_session_resumed(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    disturbed, reference, victim = await disturbed_call(gateway, workers, cluster_registry, call,
                                                        mid_utterance(call), DalstonProcess.kill)
    assert not victim.running
    assert_one_whole_call(disturbed, reference, call, moves=1)
    assert_one_whole_call(reference, reference, call, moves=0)
    await no_slot_taken(cluster_registry)
    async with aiohttp.ClientSession() as http, http.get(gateway.http_url + "/metrics") as response:
        metrics = await response.text()
    assert 'dalston_gateway_session_moves_total{reason="lost"} 1.0' in metrics
    assert 'dalston_gateway_replay_seconds_count{reason="lost"} 1.0' in metrics


@pytest.mark.parametrize("params", [{"encoding": "pcm_mulaw", "sample_rate": 8000}, {"encoding": "ogg_opus"}],
                         ids=["g711_mulaw_8k", "ogg_opus"])
async def test_a_telephony_or_opus_call_survives_its_worker_killed_mid_utterance(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry, params: dict[str, Any],
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    disturbed, reference, _ = await disturbed_call(gateway, workers, cluster_registry, call, mid_utterance(call),
                                                   DalstonProcess.kill, **params)
    assert_one_whole_call(disturbed, reference, call, moves=1)
    (resumed,) = disturbed.of_type("session.resumed")
    # G.711 replays from the last final; an Ogg stream from its start (replayed_s unknown: not decoded there).
    assert (resumed["replayed_s"] is None) == (params["encoding"] == "ogg_opus")
    await no_slot_taken(cluster_registry)


def two_channel(call: Call, lag_s: float = 0.5) -> Call:
    """The call on channel 0, and the same call `lag_s` later on channel 1: both mid-utterance at a fault."""
    lag = int(lag_s * 16000)
    later = np.concatenate([np.zeros(lag, np.int16), call.samples[:-lag]])
    return Call(np.stack([call.samples, later], axis=1), call.transcript, call.speech_s)


async def test_a_two_channel_call_survives_its_worker_killed_mid_utterance_with_each_channel_whole(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = two_channel(build_call())
    disturbed, reference, _ = await disturbed_call(gateway, workers, cluster_registry, call, mid_utterance(call),
                                                   DalstonProcess.kill, channels=2)
    assert not disturbed.of_type("error") and disturbed.close_code == 1000
    assert len(disturbed.of_type("session.resumed")) == 1
    end, reference_end = disturbed.events[-1], reference.events[-1]
    assert end["type"] == "session.end" and reference_end["type"] == "session.end"
    for channel in (0, 1):
        finals = [final for final in disturbed.finals if final["channel"] == channel]
        assert finals, channel
        for before, after in itertools.pairwise(finals):
            assert after["start"] >= before["end"] - 1e-3, (channel, before, after)  # in order, none twice
        transcript = end["channels"][channel]["transcript"]
        assert transcript == " ".join(final["text"] for final in finals)  # from both workers
        wer = word_error_rate(call.transcript, transcript)
        reference_wer = word_error_rate(call.transcript, reference_end["channels"][channel]["transcript"])
        assert wer <= reference_wer + WER_MARGIN, (channel, wer, reference_wer, transcript)
    await no_slot_taken(cluster_registry)


async def test_a_worker_killed_after_the_client_sent_end_still_finishes_the_call_elsewhere(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    # The whole call at once, then `end`: a second later its worker is still decoding the queued utterances.
    disturbed, reference, _ = await disturbed_call(gateway, workers, cluster_registry, call, 1.0,
                                                   DalstonProcess.kill, speed=0)
    assert_one_whole_call(disturbed, reference, call, moves=1)
    await no_slot_taken(cluster_registry)


async def test_a_hung_worker_is_noticed_by_its_silence_and_the_call_moves_on(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    try:
        disturbed, reference, victim = await disturbed_call(gateway, workers, cluster_registry, call,
                                                            mid_utterance(call),
                                                            lambda w: w.signal(signal.SIGSTOP))
        assert victim.running  # stopped, not dead: only its silence on the link gave it away
        assert_one_whole_call(disturbed, reference, call, moves=1)
    finally:
        for worker in workers:
            if worker.running:
                worker.signal(signal.SIGCONT)
    victim.kill()
    await no_slot_taken(cluster_registry)


async def test_a_worker_killed_in_a_pause_between_utterances_loses_nothing(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    pause_at = call.speech_s[1][1] + 0.9  # 0.9 s into the second pause: the final is out, no speech yet
    disturbed, reference, _ = await disturbed_call(gateway, workers, cluster_registry, call, pause_at,
                                                   DalstonProcess.kill)
    assert_one_whole_call(disturbed, reference, call, moves=1)
    await no_slot_taken(cluster_registry)


async def test_a_worker_killed_during_the_replay_moves_the_call_once_more(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    disturbed = CallRecord()
    killed: list[str] = []

    async def kill_twice(session_id: str) -> None:
        async def later() -> None:
            await asyncio.sleep(mid_utterance(call))
            first = await worker_of(cluster_registry, session_id)
            by_id(workers, first).kill()
            killed.append(first)
            async def resumed() -> bool:
                return bool(disturbed.of_type("session.resumed"))

            await poll_until(resumed, "the call resumed on a second worker", timeout_s=30.0, interval_s=0.01)
            second = await worker_of(cluster_registry, session_id)
            by_id(workers, second).kill()  # the new worker dies while the kept audio is replayed to it
            killed.append(second)

        asyncio.get_running_loop().create_task(later())

    started = time.monotonic()
    await run_call(gateway.stream_url, call, disturbed, on_begin=kill_twice)
    assert len(set(killed)) == 2, killed
    resumed_at = [t for t, e in zip(disturbed.arrived_at, disturbed.events, strict=True)
                  if e["type"] == "session.resumed"]
    assert len(resumed_at) == 2 and resumed_at[0] - started > 1.0
    reference = CallRecord()
    await run_call(gateway.stream_url, call, reference, speed=4.0)  # the remaining worker, no fault
    assert_one_whole_call(disturbed, reference, call, moves=2)
    await no_slot_taken(cluster_registry)


async def test_a_rolling_drain_of_every_worker_moves_running_calls_without_an_error(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes, capacity=3)
    call = build_call()
    records = [CallRecord() for _ in range(3)]
    calls = [asyncio.create_task(run_call(gateway.stream_url, call, record)) for record in records]
    await asyncio.sleep(4.0)
    replacements: list[DalstonProcess] = []
    moved = 0  # sessions running on a worker when its drain began
    for worker in workers:  # one after another, as a deploy restarts them
        assert worker.worker_id is not None
        moved += sum(s.worker_id == worker.worker_id for s in await cluster_registry.list_sessions())
        worker.signal(signal.SIGTERM)  # drains: hands its sessions back at their next pause, then exits
        assert await worker.wait_exit(timeout_s=30.0) == 0, worker.log_tail()
        replacement = dalston_processes.start_worker(worker.worker_id + "b", capacity=3)
        await dalston_processes.wait_ready(replacement)
        replacements.append(replacement)
    await asyncio.gather(*calls)
    for record in records:
        assert not record.of_type("error"), record.of_type("error")
        assert record.close_code == 1000
        assert record.events[-1]["type"] == "session.end"
        finals = record.finals
        assert all(b["start"] > a["start"] for a, b in itertools.pairwise(finals))
        assert record.events[-1]["transcript"] == " ".join(f["text"] for f in finals)
        assert word_error_rate(call.transcript, record.events[-1]["transcript"]) <= 0.2
    assert moved >= 2
    assert sum(len(r.of_type("session.resumed")) for r in records) == moved
    await no_slot_taken(cluster_registry)


async def test_a_hung_worker_that_wakes_up_leaves_the_moved_calls_record_alone(
    dalston_processes: ProcessGroup, cluster_registry: RedisRegistry,
) -> None:
    gateway, workers = await start_cluster(dalston_processes)
    call = build_call()
    record = CallRecord()
    checked: list[tuple[str, str]] = []  # (woken worker, where the call's record is after it woke)

    async def hang_then_wake(session_id: str) -> None:
        victim = by_id(workers, await worker_of(cluster_registry, session_id))

        async def later() -> None:
            await asyncio.sleep(mid_utterance(call))
            victim.signal(signal.SIGSTOP)

            async def resumed() -> bool:
                return bool(record.of_type("session.resumed"))

            await poll_until(resumed, "the call moved off the hung worker", timeout_s=30.0)
            victim.signal(signal.SIGCONT)  # its session now sees its link gone and stops; its slot is released
            await asyncio.sleep(3.0)
            assert victim.worker_id is not None
            checked.append((victim.worker_id, await worker_of(cluster_registry, session_id)))

        asyncio.get_running_loop().create_task(later())

    await run_call(gateway.stream_url, call, record, on_begin=hang_then_wake)
    assert len(checked) == 1
    woken, now_on = checked[0]
    assert now_on != woken  # still active, on the worker it moved to
    assert not record.of_type("error") and record.events[-1]["type"] == "session.end"
    await no_slot_taken(cluster_registry)
