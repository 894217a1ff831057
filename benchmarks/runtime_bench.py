"""The actor runtime's own costs: spawn/stop churn, ask round trips, and blocked senders under backpressure.

    .venv/bin/python benchmarks/runtime_bench.py [--runs 5] [--churn 100000] [--senders 2000]

Reports medians and p95 over `--runs` runs (JSON to benchmarks/results/runtime_bench.json):
- churn: actors spawned and stopped per second (one at a time), and resident memory grown after `--churn` of them
  (what a leak of refs, tasks or monitors would show);
- ask: the round-trip time of one `ask` to an idle actor;
- blocked senders: the CPU time to drain a mailbox of bound 1 with `--senders` senders blocked on it
  (the cost of waking them: O(1) per freed slot, or O(senders) when every get wakes every sender).
Only the public API is used, so the same file measures an older checkout: `PYTHONPATH=../old python ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from dalston.actors.runtime import Actor, spawn

RESULTS = Path(__file__).resolve().parent / "results"


class Echo(Actor):
    async def receive(self, message: Any) -> Any:
        if isinstance(message, asyncio.Event):
            await message.wait()
        return message


async def churn(count: int) -> dict[str, float]:
    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    for _ in range(count):
        ref = await spawn(Echo())
        await ref.stop()
    elapsed = time.perf_counter() - started
    return {"actors_per_s": count / elapsed,
            "rss_growth_mb": (psutil.Process().memory_info().rss - rss_before) / 2**20}


async def ask_round_trips(count: int) -> list[float]:
    ref = await spawn(Echo())
    times = []
    for i in range(count):
        started = time.perf_counter()
        await ref.ask(i, timeout=5)
        times.append(time.perf_counter() - started)
    await ref.stop()
    return times


async def blocked_senders(count: int) -> float:
    """CPU seconds from releasing the actor until all `count` blocked senders got their message in."""
    ref = await spawn(Echo(), mailbox_size=1)
    release = asyncio.Event()
    await ref.tell(release)
    await asyncio.sleep(0)  # the actor holds the release event now
    await ref.tell("fills the mailbox")
    senders = [asyncio.create_task(ref.tell(i)) for i in range(count)]
    await asyncio.sleep(0)
    cpu_before = time.process_time()
    release.set()
    await asyncio.gather(*senders)
    await ref.ask("last", timeout=60)
    cpu = time.process_time() - cpu_before
    await ref.stop()
    return cpu


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "runs": len(ordered)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    churns = [await churn(args.churn) for _ in range(args.runs)]
    asks = [t for _ in range(args.runs) for t in await ask_round_trips(args.asks)]
    blocked = [await blocked_senders(args.senders) for _ in range(args.runs)]
    return {
        "churn_actors_per_s": summary([c["actors_per_s"] for c in churns]),
        "churn_rss_growth_mb": summary([c["rss_growth_mb"] for c in churns]),
        "ask_round_trip_us": summary([t * 1e6 for t in asks]),
        f"cpu_s_{args.senders}_blocked_senders": summary(blocked),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--churn", type=int, default=100_000)
    parser.add_argument("--asks", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS / "runtime_bench.json")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
