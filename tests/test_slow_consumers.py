"""One client that stops reading harms nobody else (issue 10, defects 4 and 5).

- The gateway's writes to a client are bounded in time: a client that stops reading is told `slow_consumer`
  or cut off, and the handler goes on (to free its slot and key count) instead of waiting for ever.
- A model actor never waits on a session: a session whose mailbox is full does not hold an inference slot.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import numpy as np
from aiohttp import web
from test_transcriber_scheduling import Inbox

from dalston.actors.runtime import Actor, ActorRef, spawn
from dalston.actors.transcriber import DecodeRequest, TranscriberActor
from dalston.web.client_socket import ClientSocket, SlowConsumer

BIG_EVENT = "x" * 65536


class NonReadingClient:
    """A WebSocket client on a raw socket with a tiny receive buffer that, after the handshake, reads nothing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /flood HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
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
