"""The worker's /metrics: a real worker app on loopback, real VAD on real speech, a fake decoder at the model
interface. Also the helpers test_inspect.py shares: `running_worker` and `open_session`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.decoder import DecodedSegment, DecodeResult
from dalston.actors.speech.protocol import End, StreamParams
from dalston.actors.speech.session import PushAudio
from dalston.config import NodeConfig, load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.node import WorkerNode
from dalston.supervisor.cluster.registry import NodeRegistry
from dalston.web.introspection import link_headers
from dalston.web.link import LinkRefused, RemoteSessionRef, open_link
from dalston.web.server import start_site
from dalston.web.worker import create_worker_app
from dalston.web.worker_metrics import AudioArrivals

CLIP = Path(__file__).parent / "data" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"
FRAME_SAMPLES = 1600  # 100 ms


class FixedTextDecoder:
    """Answers every decode at once with the same words, spanning the audio it was given."""

    def decode(self, audio: np.ndarray, *, final: bool, word_timestamps: bool, language: str | None,
               offset_s: float, beam_size: int | None = None) -> DecodeResult:
        duration_s = len(audio) / 16000
        segment = DecodedSegment(offset_s, offset_s + duration_s, " some words heard", -0.2, 0.01, None)
        return DecodeResult(segment.text, (segment,), "en", duration_s, 0.001)


@contextlib.asynccontextmanager
async def running_worker(registry: NodeRegistry, worker_id: str = "w1") -> AsyncIterator[tuple[WorkerNode, str]]:
    """A started node with the fake decoder behind a real worker app on loopback; yields (node, HTTP base)."""
    config = load_config(environ={}).replace("node", worker_id=worker_id, capacity=2, models=("fast",))
    node = WorkerNode(config, registry, endpoint="", decoders={"fast": FixedTextDecoder})
    runner, port = await start_site(create_worker_app(node), "127.0.0.1", 0)
    node.endpoint = f"ws://127.0.0.1:{port}"
    await node.start()
    try:
        yield node, f"http://127.0.0.1:{port}"
    finally:
        await node.stop()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def open_session(node: WorkerNode, session_id: str) -> AsyncIterator[RemoteSessionRef]:
    """A session spawned over the link, as a gateway would."""
    async with aiohttp.ClientSession() as http:
        remote = await open_link(http, node.endpoint, node.config.node.link_token, session_id, StreamParams())
        assert not isinstance(remote, LinkRefused), remote
        try:
            yield remote
        finally:
            await remote.stop()


async def stream_speech(remote: RemoteSessionRef, frame_pause_s: float = 0.02) -> None:
    """One clip of speech then 1.5 s of silence, in 100 ms frames at about 5x real time."""
    samples, _ = read_wav(CLIP)
    audio = np.concatenate([samples, np.zeros(24000, dtype=np.int16)])
    for offset in range(0, len(audio), FRAME_SAMPLES):
        await remote.tell(PushAudio(audio[offset:offset + FRAME_SAMPLES].astype("<i2").tobytes()))
        await asyncio.sleep(frame_pause_s)


async def collect_until_end(remote: RemoteSessionRef) -> list[dict[str, Any]]:
    await remote.tell(End())
    async with asyncio.timeout(20):
        return [json.loads(text) async for text in remote.events()]


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels in any order), or None if absent."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def scrape(base: str) -> str:
    async with aiohttp.ClientSession(headers=link_headers(NodeConfig.link_token)) as http, \
            http.get(f"{base}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_metrics_after_a_session_count_its_finals_and_latencies() -> None:
    async with running_worker(MemoryRegistry()) as (node, base):
        async with open_session(node, "sess_metrics") as remote:
            await stream_speech(remote)
            events = await collect_until_end(remote)
        text = await scrape(base)
    finals = [e for e in events if e["type"] == "transcript.final"]
    partials = [e for e in events if e["type"] == "transcript.partial"]
    starts = [e for e in events if e["type"] == "vad.speech_start"]
    assert finals and starts
    assert sample_value(text, "dalston_worker_sessions_total", model="fast") == 1
    assert sample_value(text, "dalston_worker_transcripts_total", kind="final") == len(finals)
    assert sample_value(text, "dalston_worker_vad_events_total", event="speech_start") == len(starts)
    assert sample_value(text, "dalston_worker_final_latency_seconds_count", model="fast") == len(finals)
    utterances_with_partials = len({e["start"] for e in partials})  # the fake decoder starts at the utterance
    first_partials = sample_value(text, "dalston_worker_partial_latency_seconds_count", model="fast")
    assert (first_partials or 0) == utterances_with_partials
    assert sample_value(text, "dalston_worker_decodes_total", model="fast", kind="final") == len(finals)
    assert sample_value(text, "dalston_worker_decode_seconds_count", model="fast", kind="final") == len(finals)
    assert sample_value(text, "dalston_worker_transcriber_queue_depth", model="fast", kind="final") == 0
    assert sample_value(text, "dalston_worker_capacity") == 2


async def test_active_sessions_are_read_from_the_node_at_scrape_time() -> None:
    async with running_worker(MemoryRegistry()) as (node, base), open_session(node, "sess_open") as remote:
        assert sample_value(await scrape(base), "dalston_worker_sessions_active") == 1
        await collect_until_end(remote)  # the worker closes the link once the session actor has stopped
        assert sample_value(await scrape(base), "dalston_worker_sessions_active") == 0


def test_an_arrival_is_the_time_of_the_frame_holding_that_audio() -> None:
    arrivals = AudioArrivals(sample_rate=16000)
    for i in range(5):  # 100 ms frames arriving at t = 10, 11, ... 14
        arrivals.received(3200, at=10.0 + i)
    assert arrivals.arrival_of(0.0) == 10.0
    assert arrivals.arrival_of(0.1) == 10.0
    assert arrivals.arrival_of(0.15) == 11.0
    assert arrivals.arrival_of(0.5) == 14.0
    assert arrivals.arrival_of(0.51) is None  # not received yet


def test_forgotten_frames_give_no_arrival_rather_than_a_later_one() -> None:
    arrivals = AudioArrivals(sample_rate=16000, max_frames=3)
    for i in range(5):
        arrivals.received(3200, at=float(i))
    assert arrivals.arrival_of(0.15) is None  # its frame fell out of the bounded memory
    assert arrivals.arrival_of(0.25) == 2.0
    arrivals.forget_before(0.45)
    assert arrivals.arrival_of(0.35) is None
    assert arrivals.arrival_of(0.45) == 4.0
