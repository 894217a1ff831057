"""The tuning options end to end: `dalston stream` (a user's command) and raw clients through `dalston serve`.

One `dalston serve` process (gateway + one worker, tiny.en) serves the module, with narrow configured bounds on
min_silence_ms, so the gateway is seen applying [session] bounds rather than the protocol's hard limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_fixtures import DalstonProcess, ProcessGroup, of_type, stream_to_end
from speech_synthesis import joined, needs_flite, synthesise

from dalston.actors.speech.audio import read_wav
from dalston.web.client import StreamClient, encode_samples
from dalston.wer import normalize_words, word_error_rate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "dalston" / "data" / "sample.wav"
SAMPLE_TEXT = (REPO / "dalston" / "data" / "sample.txt").read_text()
IDLE_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DalstonProcess]:
    group = ProcessGroup(Path(tmp_path_factory.mktemp("serve")))
    env = {"DALSTON_SESSION_MIN_SILENCE_MS_MIN": "200", "DALSTON_SESSION_MIN_SILENCE_MS_MAX": "2000",
           "DALSTON_SESSION_IDLE_TIMEOUT_S": str(IDLE_S), "DALSTON_NODE_MODELS": "fast"}
    try:
        process = group.start_serve(capacity=4, env=env)
        asyncio.run(group.wait_ready(process))
        yield process
    finally:
        group.stop_all()


def dalston_stream(server: DalstonProcess, wav: Path, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "dalston.cli", "--log-level", "warning", "stream", str(wav),
                           "--url", server.stream_url, "--speed", "0", "--json", *args], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_dalston_stream_sends_a_wav_as_8_khz_mulaw_and_gets_its_transcript(server: DalstonProcess) -> None:
    events = dalston_stream(server, SAMPLE, "--encoding", "pcm_mulaw")
    begin = events[0]
    assert (begin["encoding"], begin["sample_rate"]) == ("pcm_mulaw", 8000)
    assert len(of_type(events, "transcript.final")) == 5
    assert word_error_rate(SAMPLE_TEXT, events[-1]["transcript"]) <= 0.15


@needs_flite
def test_dalston_stream_sends_a_stereo_wav_as_two_channels_of_ogg_opus(server: DalstonProcess,
                                                                        tmp_path: Path) -> None:
    left = joined(0.3, synthesise("Good morning, this is the front desk.", "slt"), 4.0)
    right = joined(3.0, synthesise("I would like to book a table for two.", "rms"), 1.0)
    length = max(len(left.pcm), len(right.pcm))
    stereo = np.stack([np.pad(c.pcm, (0, length - len(c.pcm))) for c in (left, right)], axis=1)
    path = tmp_path / "call.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(stereo.astype("<i2").tobytes())
    events = dalston_stream(server, path, "--channels", "2", "--encoding", "ogg_opus")
    finals = of_type(events, "transcript.final")
    assert {final["channel"] for final in finals} == {0, 1}
    by_channel = {c["channel"]: c["transcript"] for c in events[-1]["channels"]}
    assert "desk" in normalize_words(by_channel[0]) and "table" in normalize_words(by_channel[1])
    assert [item["channel"] for item in events[-1]["merged"]] == [0, 1]


@pytest.mark.parametrize(("params", "named"), [({"min_silence_ms": 100}, "min_silence_ms"),  # under [session]'s 200
                                               ({"min_silence_ms": 3000}, "min_silence_ms"),
                                               ({"channels": 9}, "channels"),
                                               ({"vad_threshold": 2}, "vad_threshold"),
                                               ({"keyterms": "x" * 60}, "keyterms")])
async def test_a_tuning_parameter_out_of_bounds_is_refused_naming_it(server: DalstonProcess,
                                                                      params: dict[str, Any], named: str) -> None:
    async with StreamClient(server.stream_url, **params) as stream:
        events = [event async for event in stream.events()]
    assert [event["code"] for event in of_type(events, "error")] == ["invalid_request"]
    assert named in events[0]["message"] and stream.close_code == 1008


async def test_a_corrupt_ogg_page_ends_its_session_with_invalid_audio_and_a_neighbour_is_unharmed(
    server: DalstonProcess,
) -> None:
    samples, _ = read_wav(SAMPLE)
    data = bytearray(encode_samples(samples[: 16000 * 6], 16000, "ogg_opus"))
    data[len(data) // 2] ^= 0xFF
    async with StreamClient(server.stream_url) as neighbour:
        neighbour_events = asyncio.create_task(stream_to_end(neighbour, samples, speed=4.0))
        async with StreamClient(server.stream_url, encoding="ogg_opus") as stream:
            for offset in range(0, len(data), 997):
                if stream.ws.closed:
                    break
                await stream.send_audio(bytes(data[offset:offset + 997]))
            events = [event async for event in stream.events()]
        errors = of_type(events, "error")
        assert [e["code"] for e in errors] == ["invalid_audio"] and "CRC mismatch" in errors[0]["message"]
        assert stream.close_code == 1007
        done = await neighbour_events
    assert of_type(done, "error") == []
    assert word_error_rate(SAMPLE_TEXT, done[-1]["transcript"]) <= 0.15
    assert server.running


async def test_keepalives_through_the_gateway_hold_a_silent_session_past_the_idle_timeout(
    server: DalstonProcess,
) -> None:
    samples, _ = read_wav(SAMPLE)
    async with StreamClient(server.stream_url) as stream:
        for _ in range(int(2 * IDLE_S / 0.5)):
            await stream.keepalive()
            await asyncio.sleep(0.5)
        events = await stream_to_end(stream, samples[: 16000 * 8], speed=0)
    assert of_type(events, "error") == [], events
    assert of_type(events, "transcript.final")


async def test_configure_through_the_gateway_is_answered_with_session_configured(server: DalstonProcess) -> None:
    async with StreamClient(server.stream_url) as stream:
        await stream.configure(keyterms=["Dalston"], min_silence_ms=900)
        first = [await anext(aiter(stream.events())) for _ in range(2)]
        await stream.end()
    assert first[1]["type"] == "session.configured" and first[1]["keyterms"] == ["Dalston"]
