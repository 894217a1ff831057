"""Logs an operator can read: a client's mistake is not a crash, a crash is, and every request leaves one
access line without secrets. A real gateway and worker app on loopback (real VAD, a fake decoder at the model
interface), log records captured from structlog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import structlog
from test_metrics import FixedTextDecoder, running_worker

from dalston.actors.runtime import spawn
from dalston.actors.speech.protocol import StreamParams
from dalston.actors.speech.session import PushAudio, SessionActor
from dalston.actors.speech.silero import SileroVad, SpeechSegmenter
from dalston.actors.speech.transcriber import TranscriberActor
from dalston.config import load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.web.client import StreamClient
from dalston.web.gateway import STREAM_PATH, create_gateway_app
from dalston.web.server import start_site

API_KEY = "key-never-logged-7f3a"


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


async def test_a_clients_oversize_frame_is_one_warning_with_its_code_and_no_error_record(
    records: list[dict[str, Any]],
) -> None:
    registry = MemoryRegistry()
    config = load_config(environ={}).replace("server", api_keys=(API_KEY,))
    async with running_worker(registry):
        runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
        try:
            url = f"ws://127.0.0.1:{port}{STREAM_PATH}"
            async with StreamClient(f"{url}?api_key={API_KEY}") as stream:
                await stream.send_audio(np.zeros(config.session.max_frame_bytes // 2 + 1, "<i2").tobytes())
                events = [event async for event in stream.events()]
        finally:
            await runner.cleanup()
    assert [e["code"] for e in events if e["type"] == "error"] == ["invalid_audio"]
    assert stream.close_code == 1007
    assert [r for r in records if r["log_level"] in ("error", "critical")] == []
    coded = [r for r in records if r.get("code") == "invalid_audio"]
    assert len(coded) == 1 and coded[0]["log_level"] == "warning", coded
    closed = [r for r in records if r["event"] == "websocket.closed" and r["path"] == STREAM_PATH]
    assert len(closed) == 1 and closed[0]["close_code"] == 1007 and closed[0]["log_level"] == "info"
    assert API_KEY not in json.dumps(records, default=str)  # neither from the query string nor a header


async def test_every_http_request_leaves_one_access_line_without_the_query_string(
    records: list[dict[str, Any]],
) -> None:
    registry = MemoryRegistry()
    config = load_config(environ={}).replace("server", api_keys=(API_KEY,))
    async with running_worker(registry):
        runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/v1/workers?api_key={API_KEY}") as response:
                    assert response.status == 200
                async with http.get(f"http://127.0.0.1:{port}/v1/tree", headers={"X-API-Key": "wrong"}) as response:
                    assert response.status == 401
        finally:
            await runner.cleanup()
    lines = [(r["path"], r["status"]) for r in records if r["event"] == "http.request"]
    assert ("/v1/workers", 200) in lines and ("/v1/tree", 401) in lines
    assert API_KEY not in json.dumps(records, default=str)


class _BrokenSegmenter(SpeechSegmenter):
    def push(self, samples: np.ndarray) -> list[Any]:
        raise RuntimeError("a bug in the segmenter")


async def test_a_real_crash_is_still_logged_at_error_level_with_its_traceback(
    records: list[dict[str, Any]],
) -> None:
    transcriber = await spawn(TranscriberActor("fast", FixedTextDecoder))

    async def sink(event: object) -> None:
        pass

    session = await spawn(SessionActor("s-crash", StreamParams(), transcriber=transcriber,
                                       segmenter=_BrokenSegmenter(SileroVad()), sink=sink))
    await session.tell(PushAudio(b"\0\0" * 1600))
    reason = await session.wait_stopped()
    await transcriber.stop()
    assert reason.abnormal
    crashes = [r for r in records if r["log_level"] == "error" and r.get("exc_info")]
    assert crashes and isinstance(crashes[0]["exc_info"], RuntimeError), records
