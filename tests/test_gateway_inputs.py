"""Every client input is checked at the gateway or in the session, and none of it hurts the worker (DESIGN §7, §11).

One `dalston serve` process (gateway + one worker node, the real tiny.en model) with API key "k1" configured
serves the whole module; each test connects as a client over loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_fixtures import (
    DalstonProcess,
    ProcessGroup,
    load_clip,
    next_event,
    of_type,
    stream_to_end,
)

from dalston.web.client import StreamClient
from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

API_KEY = "k1"
MAX_FRAME_BYTES = 16000  # half a second at 16 kHz: well above the 100 ms chunks clients send here
MAX_WER = 0.35


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DalstonProcess]:
    group = ProcessGroup(Path(tmp_path_factory.mktemp("serve")))
    env = {"DALSTON_SERVER_API_KEYS": json.dumps([API_KEY]),
           "DALSTON_SESSION_MAX_FRAME_BYTES": str(MAX_FRAME_BYTES)}
    try:
        process = group.start_serve(capacity=4, env=env)
        asyncio.run(group.wait_ready(process))
        yield process
    finally:
        group.stop_all()


@pytest.fixture
def url(server: DalstonProcess) -> Iterator[str]:
    yield server.stream_url
    assert server.running, server.log_tail()  # no bad input may take the server down


async def all_events(stream: StreamClient) -> list[dict[str, Any]]:
    return [event async for event in stream.events()]


def error_codes(events: list[dict[str, Any]]) -> list[str]:
    return [event["code"] for event in of_type(events, "error")]


async def refusal(url: str, api_key: str | None = API_KEY, **params: Any) -> tuple[list[str], int | None]:
    async with StreamClient(url, api_key=api_key, **params) as stream:
        events = await all_events(stream)
    assert not of_type(events, "session.begin")
    return error_codes(events), stream.close_code


async def begin(stream: StreamClient) -> None:
    event = await next_event(stream)
    assert event is not None and event["type"] == "session.begin", event


def assert_transcribed(events: list[dict[str, Any]], reference: str) -> None:
    assert of_type(events, "transcript.final"), events
    assert events[-1]["type"] == "session.end", events[-3:]
    assert word_error_rate(reference, events[-1]["transcript"]) <= MAX_WER, events[-1]["transcript"]


@pytest.mark.parametrize("params", [{"sample_rate": 7}, {"language": "xx"}, {"colour": "blue"},
                                    {"encoding": "mp3"}, {"word_timestamps": "maybe"}])
async def test_a_bad_query_parameter_is_refused_with_invalid_request(url: str, params: dict[str, Any]) -> None:
    assert await refusal(url, **params) == (["invalid_request"], 1008)


async def test_an_unknown_model_is_refused_with_unsupported_model(url: str) -> None:
    assert await refusal(url, model="nope") == (["unsupported_model"], 1008)


@pytest.mark.parametrize("api_key", [None, "k2"])
async def test_a_client_without_a_configured_key_is_unauthorized(url: str, api_key: str | None) -> None:
    assert await refusal(url, api_key=api_key) == (["unauthorized"], 1008)


async def test_a_configured_key_in_the_authorization_header_lets_a_client_in(url: str) -> None:
    clip = load_clip("0880")
    async with StreamClient(url, api_key=API_KEY) as stream:
        await begin(stream)
        events = await stream_to_end(stream, clip.samples, speed=4.0)
    assert_transcribed(events, clip.transcript)
    assert stream.close_code == 1000


async def test_bad_json_and_unknown_message_types_are_reported_and_the_session_goes_on(url: str) -> None:
    clip = load_clip("0930")
    async with StreamClient(url, api_key=API_KEY) as stream:
        await begin(stream)
        await stream.ws.send_str("{not json")
        await stream.ws.send_str(json.dumps({"type": "dance"}))
        events = await stream_to_end(stream, clip.samples, speed=4.0)
    assert error_codes(events) == ["invalid_message", "invalid_message"]
    assert_transcribed(events, clip.transcript)
    assert stream.close_code == 1000


async def send_frames(stream: StreamClient, pcm: bytes, frame_bytes: int, speed: float) -> None:
    """Raw frames of `frame_bytes` (odd sizes split samples across frames) at `speed` x real time, then end."""
    seconds_per_frame = frame_bytes / 32000 / speed
    for offset in range(0, len(pcm), frame_bytes):
        await stream.send_audio(pcm[offset:offset + frame_bytes])
        await asyncio.sleep(seconds_per_frame)
    await stream.end()


async def test_odd_length_frames_are_carried_over_and_the_audio_is_still_transcribed(url: str) -> None:
    clip = load_clip("0880")
    async with StreamClient(url, api_key=API_KEY) as stream:
        await begin(stream)
        sender = asyncio.create_task(send_frames(stream, clip.samples.astype("<i2").tobytes(), 3201, 4.0))
        events = await all_events(stream)
        await sender
    assert error_codes(events) == []
    assert_transcribed(events, clip.transcript)
    assert events[-1]["total_duration"] == pytest.approx(clip.duration_s, abs=0.01)


async def test_an_oversize_frame_ends_only_its_session_with_invalid_audio(url: str) -> None:
    clip = load_clip("0880")
    async with StreamClient(url, api_key=API_KEY) as bystander:
        await begin(bystander)
        bystander_events = asyncio.create_task(stream_to_end(bystander, clip.samples, speed=3.0))
        async with StreamClient(url, api_key=API_KEY) as stream:
            await begin(stream)
            await stream.send_audio(np.zeros(MAX_FRAME_BYTES // 2 + 1, dtype="<i2").tobytes())
            events = await all_events(stream)
        assert error_codes(events) == ["invalid_audio"]
        assert stream.close_code == 1007
        assert_transcribed(await bystander_events, clip.transcript)

    async with StreamClient(url, api_key=API_KEY) as fresh:  # the same worker still takes sessions
        await begin(fresh)
        assert_transcribed(await stream_to_end(fresh, clip.samples, speed=4.0), clip.transcript)


def raw_get(port: int, path: str, header: bytes) -> bytes:
    """One HTTP request with a header carrying bytes that are not UTF-8, as a broken or hostile client sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header
                     + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("header", [b"Authorization: Bearer k\xff1", b"X-API-Key: \xc3\x28"])
async def test_a_key_header_with_bytes_that_are_not_utf8_is_refused_with_401_not_a_server_error(
    server: DalstonProcess, header: bytes
) -> None:
    answer = await asyncio.to_thread(raw_get, server.port, "/v1/tree", header)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert server.running
