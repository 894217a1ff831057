"""Failover benchmark (issue 11): what a call pays when the worker serving it dies or hangs.

A gateway, three `dalston worker` processes (tiny.en) and a real `redis-server` on loopback. Each trial streams a
call (LibriVox clips with a second of silence between them) at real-time pace twice at once, on two workers; at a
random moment inside an utterance the worker serving the first copy is SIGKILLed (or SIGSTOPped with
`--fault stop`), then replaced by a fresh worker for the next trial. Measured per trial:
- detect+place: from the fault to `session.resumed` (the new worker spawned the session);
- first event: from the fault to the first event the new worker sent (after `session.resumed`);
- replayed_s and gap_s as `session.resumed` reports them;
- extra final latency of the utterance in flight: when its final arrived in the disturbed call, minus when the
  same utterance's final arrived in the undisturbed copy (each from its own start of sending);
- replay-buffer memory: kept bytes at the fault (replayed_s of 16 kHz s16le) and the configured bound.

    python benchmarks/failover_bench.py --trials 6 [--fault kill|stop]

Writes benchmarks/results/failover_bench-<time>.json and prints medians and p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the process helpers the end-to-end tests use

from cluster_fixtures import DalstonProcess, ProcessGroup  # noqa: E402
from failover_fixtures import FAILOVER_ENV, Call, CallRecord, build_call, run_call  # noqa: E402
from redis_server import start_redis_server  # noqa: E402

from dalston.config import load_config  # noqa: E402
from dalston.supervisor.cluster.redis_registry import RedisRegistry  # noqa: E402
from dalston.supervisor.cluster.router import percentile  # noqa: E402

BYTES_PER_S = 32000  # 16 kHz s16le mono


async def one_trial(group: ProcessGroup, gateway: DalstonProcess, workers: dict[str, DalstonProcess],
                    registry: RedisRegistry, call: Call, fault: str, rng: random.Random) -> dict[str, Any]:
    span = call.speech_s[rng.randrange(1, len(call.speech_s) - 1)]
    fault_s = rng.uniform(span[0] + 0.5, span[1] - 0.3)  # inside an utterance
    disturbed, reference = CallRecord(), CallRecord()
    started: dict[str, float] = {}
    hit: dict[str, Any] = {}

    async def schedule(session_id: str) -> None:
        started["disturbed"] = time.monotonic()
        record = await registry.get_session(session_id)
        assert record is not None
        victim = workers[record.worker_id]

        async def later() -> None:
            await asyncio.sleep(fault_s)
            hit["at"] = time.monotonic()
            hit["worker"] = victim.worker_id
            victim.signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)

        asyncio.get_running_loop().create_task(later())

    async def mark_reference(_session_id: str) -> None:
        started["reference"] = time.monotonic()

    first = asyncio.create_task(run_call(gateway.stream_url, call, disturbed, on_begin=schedule))
    await asyncio.sleep(0.3)
    await run_call(gateway.stream_url, call, reference, on_begin=mark_reference)
    await first
    return _measure(disturbed, reference, started, hit, fault_s)


def _measure(disturbed: CallRecord, reference: CallRecord, started: dict[str, float], hit: dict[str, Any],
             fault_s: float) -> dict[str, Any]:
    kinds = [e["type"] for e in disturbed.events]
    assert "error" not in kinds, disturbed.of_type("error")
    index = kinds.index("session.resumed")
    resumed = disturbed.events[index]
    resumed_at = disturbed.arrived_at[index]
    first_event_at = disturbed.arrived_at[index + 1] if index + 1 < len(kinds) else float("nan")
    in_flight = next(e for e in disturbed.finals if e["end"] > fault_s)
    in_flight_at = disturbed.arrived_at[disturbed.events.index(in_flight)] - started["disturbed"]
    twin = min(reference.finals, key=lambda e: abs(e["end"] - in_flight["end"]))
    twin_at = reference.arrived_at[reference.events.index(twin)] - started["reference"]
    return {
        "worker": hit["worker"], "fault_at_s": round(fault_s, 2),
        "detect_place_s": round(resumed_at - hit["at"], 3),
        "first_event_s": round(first_event_at - hit["at"], 3),
        "replayed_s": resumed["replayed_s"], "gap_s": resumed["gap_s"],
        "extra_final_latency_s": round(in_flight_at - twin_at, 3),
        "kept_bytes": int(resumed["replayed_s"] * BYTES_PER_S),
        "words_disturbed": len(disturbed.events[-1]["transcript"].split()),
        "words_reference": len(reference.events[-1]["transcript"].split()),
    }


def summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("detect_place_s", "first_event_s", "replayed_s", "gap_s", "extra_final_latency_s", "kept_bytes"):
        values = sorted(t[key] for t in trials)
        out[key] = {"median": round(statistics.median(values), 3), "p95": round(percentile(values, 0.95), 3),
                    "max": round(values[-1], 3)}
    return out


async def main(trials: int, fault: str, seed: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="failover_bench-"))
    redis = start_redis_server(folder)
    group = ProcessGroup(folder, redis.url, "dalston:bench:")
    registry = RedisRegistry.from_url(redis.url, prefix="dalston:bench:")
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    try:
        workers = {f"w{i}": group.start_worker(f"w{i}", capacity=2) for i in (1, 2, 3)}
        gateway = group.start_gateway(env=FAILOVER_ENV)
        await group.wait_ready(gateway, *workers.values())
        call = build_call()
        for n in range(trials):
            trial = await one_trial(group, gateway, workers, registry, call, fault, rng)
            results.append(trial)
            print(json.dumps(trial), flush=True)
            lost = workers.pop(trial["worker"])
            lost.signal(signal.SIGKILL)
            replacement = group.start_worker(f"r{n}", capacity=2)
            await group.wait_ready(replacement)
            workers[f"r{n}"] = replacement
            await asyncio.sleep(2.0)  # the dead worker's liveness lapses
    finally:
        await registry.close()
        group.stop_all()
        redis.stop()
    server = load_config().server
    vad = load_config().vad
    bound = int(min(server.replay_cap_bytes, (vad.max_segment_s + server.replay_pad_s) * BYTES_PER_S))
    return {"fault": fault, "trials": results, "summary": summary(results),
            "replay_buffer_bound_bytes_16k_pcm": bound, "link_heartbeat_s": float(FAILOVER_ENV[
                "DALSTON_SERVER_LINK_HEARTBEAT_S"])}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--fault", choices=("kill", "stop"), default="kill")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    report = asyncio.run(main(args.trials, args.fault, args.seed))
    print(json.dumps(report["summary"], indent=2))
    out = REPO / "benchmarks" / "results" / f"failover_bench-{args.fault}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")
