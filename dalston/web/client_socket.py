"""The gateway's end of one client's WebSocket: every write is bounded in time.

A client that stops reading fills the kernel's buffers, then aiohttp's, and a write then waits for ever. Here
each write has `send_timeout_s`; past it the client is a slow consumer. Nothing more is awaited on it: the
`slow_consumer` error (close 1008) and a close frame are queued behind what it has not read yet, the connection
is closed, and aborted after a short grace if the client still reads nothing — so that neither its slot, its API
key's count nor the buffers pinned for it outlive the bound.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import Transport

import structlog
from aiohttp import web

from dalston.actors.speech.protocol import ErrorCode, ErrorOccurred
from dalston.web.access_log import CLOSE_SENT, close_websocket
from dalston.web.bounded_send import send_text_within

log = structlog.get_logger(__name__)

GOODBYE_GRACE_S = 1.0  # how long a slow consumer's error and close frame may take before the abort


class SlowConsumer(Exception):
    """A write to the client did not complete within the send timeout."""


class ClientSocket:
    def __init__(self, ws: web.WebSocketResponse, transport: Transport | None, send_timeout_s: float) -> None:
        self.ws = ws
        self._transport = transport
        self._send_timeout_s = send_timeout_s

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send_text(self, text: str) -> None:
        """Send one event; `SlowConsumer` if it does not go out in time. A vanished client is ignored."""
        if not await send_text_within(self.ws, text, self._send_timeout_s):
            raise SlowConsumer(f"a write took over {self._send_timeout_s:g} s")

    async def send_error(self, code: ErrorCode, message: str) -> None:
        await self.send_text(json.dumps(ErrorOccurred(code, message).to_json()))

    async def close(self, code: int, message: bytes = b"") -> None:
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await close_websocket(self.ws, code, message)
        except TimeoutError:
            self._abort()

    def drop_slow_consumer(self) -> None:
        """Queue `slow_consumer` and a close frame without waiting, close, and abort after a short grace."""
        log.warning("gateway.slow_consumer", send_timeout_s=self._send_timeout_s)
        close_code = ErrorCode.SLOW_CONSUMER.close_code or 1008
        self.ws.setdefault(CLOSE_SENT, close_code)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        goodbye = json.dumps(ErrorOccurred(ErrorCode.SLOW_CONSUMER, "the client stopped reading its events").to_json())
        # Written to the transport directly: aiohttp's writer would wait for the buffer to drain, which it never
        # does. Whole frames only, so nothing is interleaved with a frame aiohttp had started.
        transport.write(_frame(0x1, goodbye.encode()) + _frame(0x8, close_code.to_bytes(2, "big")))
        transport.close()  # flushes whatever the client still reads, then closes
        asyncio.get_running_loop().call_later(GOODBYE_GRACE_S, transport.abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # frees the kernel buffers at once; the close handshake never came


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return header + payload
