"""One client that stops reading harms nobody else (issue 10, defects 4 and 5).

- The gateway's writes to a client are bounded in time: a client that stops reading is told `slow_consumer`
  or cut off, and the handler goes on (to free its slot and key count) instead of waiting for ever.
- A model actor never waits on a session: a session whose mailbox is full does not hold an inference slot.
- The worker's writes to a gateway are bounded the same way: a link nobody reads is cut off, and its session
  stops instead of running for nobody.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from cluster_fixtures import load_clip, of_type, poll_until, stream_to_end
from test_transcriber_scheduling import Inbox

from dalston.actors.runtime import Actor, ActorRef, spawn
from dalston.actors.speech.decoder import DecodedSegment, DecodeResult
from dalston.actors.speech.protocol import StreamParams
from dalston.actors.speech.transcriber import DecodeRequest, TranscriberActor
from dalston.config import load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.node import WorkerNode
from dalston.web import worker
from dalston.web.client import StreamClient
from dalston.web.client_socket import ClientSocket, SlowConsumer
from dalston.web.gateway import STREAM_PATH, create_gateway_app
from dalston.web.introspection import link_headers
from dalston.web.link_protocol import LINK_PATH, Spawn
from dalston.web.server import start_site
from dalston.web.worker import create_worker_app

BIG_EVENT = "x" * 65536


class NonReadingClient:
    """A WebSocket client on a raw socket with a tiny receive buffer that, after the handshake, reads nothing."""

    def __init__(self, port: int, path: str = "/flood", headers: dict[str, str] | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{extra}\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += self.sock.recv(1)  # byte by byte: nothing after the handshake is read
        assert answer.startswith(b"HTTP/1.1 101")

    def close(self) -> None:
        self.sock.close()


async def test_a_client_that_stops_reading_is_dropped_as_a_slow_consumer_within_a_bounded_number_of_writes(
) -> None:
    outcome: dict[str, Any] = {}
    handler_done = asyncio.Event()

    async def flood(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client = ClientSocket(ws, request.transport, send_timeout_s=0.3)
        sent = 0
        try:
            for _ in range(1000):  # 64 MB: far beyond every buffer between the two ends
                await client.send_text(BIG_EVENT)
                sent += 1
        except SlowConsumer:
            outcome["slow_after"] = sent
            client.drop_slow_consumer()
        outcome["closed"] = ws.closed or request.transport is None or request.transport.is_closing()
        handler_done.set()
        return ws

    app = web.Application()
    app.router.add_get("/flood", flood)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = await asyncio.to_thread(NonReadingClient, port)
    try:
        async with asyncio.timeout(20):  # a bound, not a measurement: without the fix the handler never ends
            await handler_done.wait()
        assert outcome["slow_after"] < 1000 and outcome["closed"]
    finally:
        client.close()
        await runner.cleanup()


class FixedDecoder:
    def decode(self, audio: np.ndarray, *, final: bool, **_: Any) -> str:
        return "text"


class Stuck(Actor):
    """A session that cannot take anything in: its one-slot mailbox is full and it is busy for ever."""

    mailbox_size = 1

    async def receive(self, message: Any) -> None:
        await asyncio.Event().wait()


def final_request(reply_to: ActorRef, session: str, request_id: int) -> DecodeRequest:
    return DecodeRequest(session, request_id, request_id, np.zeros(1600, dtype=np.float32), 0.0, True, reply_to)


async def test_a_session_that_cannot_take_its_results_does_not_hold_the_models_thread() -> None:
    stuck = await spawn(Stuck(), "stuck")
    await stuck.tell("busy")
    await asyncio.sleep(0)
    await stuck.tell("fills the mailbox")
    inbox = Inbox()
    inbox_ref = await spawn(inbox, "inbox")
    transcriber = await spawn(TranscriberActor("fake", FixedDecoder, inference_threads=1), "transcriber")
    try:
        for request_id in range(1, 4):
            await transcriber.tell(final_request(stuck, "stuck", request_id))
        await transcriber.tell(final_request(inbox_ref, "neighbour", 1))
        async with asyncio.timeout(10):
            await inbox.arrived.wait()
        assert [answer.session_id for answer in inbox.answers] == ["neighbour"]
        assert transcriber.statistics().extra["running"] == 0
    finally:
        for ref in (transcriber, inbox_ref):
            await ref.stop()
        await stuck.kill()


# -- through a real gateway and worker ------------------------------------------------------------------------


class LoudDecoder:
    """Answers every decode with 400 KB of text: a client that stops reading fills its buffers in seconds."""

    def decode(self, audio: np.ndarray, *, final: bool, word_timestamps: bool, language: str | None,
               offset_s: float, beam_size: int | None = None) -> DecodeResult:
        duration_s = len(audio) / 16000
        text = " word" * 80000
        segment = DecodedSegment(offset_s, offset_s + duration_s, text, -0.2, 0.01, None)
        return DecodeResult(text, (segment,), "en", duration_s, 0.001)


def masked_binary_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client's WebSocket frame, binary unless told (RFC 6455 §5.2: clients mask)."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x80 | opcode]) + (bytes([0x80 | size]) if size < 126
                                       else bytes([0x80 | 126]) + size.to_bytes(2, "big"))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class NonReadingStreamer(NonReadingClient):
    """Sends speech to the stream endpoint and never reads a byte of what comes back."""

    def __init__(self, port: int) -> None:
        super().__init__(port, path=STREAM_PATH)

    def send_speech(self, samples: np.ndarray, chunk: int = 1600) -> None:
        """In real time (100 ms chunks), so that partials keep coming; stops once the gateway cut it off."""
        with contextlib.suppress(OSError):
            for start in range(0, len(samples), chunk):
                self.sock.sendall(masked_binary_frame(samples[start:start + chunk].astype("<i2").tobytes()))
                time.sleep(chunk / 16000)


@pytest.mark.slow
async def test_a_client_that_stops_reading_loses_its_session_and_frees_its_slot_while_a_neighbour_is_served(
) -> None:
    registry = MemoryRegistry()
    config = load_config(environ={}).replace("node", worker_id="w1", capacity=2, models=("fast",))
    config = config.replace("server", send_timeout_s=0.5)
    node = WorkerNode(config, registry, "", decoders={"fast": LoudDecoder})
    worker_runner, worker_port = await start_site(create_worker_app(node), "127.0.0.1", 0)
    node.endpoint = f"ws://127.0.0.1:{worker_port}"
    await node.start()
    gateway_runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
    clip = load_clip("0880")
    hog = await asyncio.to_thread(NonReadingStreamer, port)
    speaking = asyncio.create_task(asyncio.to_thread(hog.send_speech, clip.samples))
    try:

        async def hog_placed() -> list[str]:
            return [record.session_id for record in await registry.list_sessions()]

        (hog_id,) = await poll_until(hog_placed, "the non-reading client's session began", timeout_s=20)

        async def hog_gone() -> bool:  # its session ended, its slot and its address's hold given back
            record = await registry.get_session(hog_id)
            return record is not None and record.ended_at is not None and hog_id not in node._live_sessions

        async def neighbour_streams() -> list[dict[str, Any]]:  # in real time, beside the hog and after it
            async with StreamClient(f"ws://127.0.0.1:{port}{STREAM_PATH}") as neighbour:
                return await stream_to_end(neighbour, clip.samples, speed=1.0)

        neighbour = asyncio.create_task(neighbour_streams())
        await poll_until(hog_gone, "the non-reading client's session ended and its slot was freed", timeout_s=20)
        events = await neighbour
        assert events[-1]["type"] == "session.end" and of_type(events, "transcript.final")
        assert registry._holds.holders() == 0  # both holds given back: the hog's and the neighbour's
        assert await node.active_sessions() == 0
    finally:
        hog.close()
        await speaking
        await gateway_runner.cleanup()
        await node.stop()
        await worker_runner.cleanup()


class NonReadingGateway(NonReadingStreamer):
    """Opens a session over a worker's link, as a gateway does, then never reads what the worker sends."""

    def __init__(self, port: int, token: str, session_id: str) -> None:
        NonReadingClient.__init__(self, port, path=LINK_PATH, headers=link_headers(token))
        spawn = Spawn(session_id, StreamParams(model="fast", interim_results=True))
        self.sock.sendall(masked_binary_frame(json.dumps(spawn.to_json()).encode(), opcode=0x1))


@pytest.mark.slow
async def test_a_gateway_that_stops_reading_its_link_is_cut_off_and_the_session_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "LINK_SEND_TIMEOUT_S", 0.5)
    registry = MemoryRegistry()
    config = load_config(environ={}).replace("node", worker_id="w1", capacity=1, models=("fast",))
    node = WorkerNode(config, registry, "", decoders={"fast": LoudDecoder})
    worker_runner, worker_port = await start_site(create_worker_app(node), "127.0.0.1", 0)
    node.endpoint = f"ws://127.0.0.1:{worker_port}"
    await node.start()
    gateway = await asyncio.to_thread(NonReadingGateway, worker_port, config.node.link_token, "sess_hung_link")
    speaking = asyncio.create_task(asyncio.to_thread(gateway.send_speech, load_clip("0880").samples))
    try:
        async def session_started() -> bool:
            return "sess_hung_link" in node._live_sessions

        async def session_stopped() -> bool:  # the worker gave up on the link, and the session with it
            return "sess_hung_link" not in node._live_sessions and await node.active_sessions() == 0

        await poll_until(session_started, "the session started on the worker", timeout_s=20)
        await poll_until(session_stopped, "the worker cut off the hung link and stopped its session", timeout_s=20)
    finally:
        gateway.close()
        await speaking
        await node.stop()
        await worker_runner.cleanup()
