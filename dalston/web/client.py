"""A small Python client for the stream endpoint: send PCM at a chosen pace, iterate over the events.

    async with StreamClient(url, sample_rate=16000) as stream:
        sender = asyncio.create_task(stream.send_pcm(pcm_int16, speed=1.0))
        async for event in stream.events():
            print(event["type"], event.get("text"))
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import aiohttp
import numpy as np

DEFAULT_URL = "ws://127.0.0.1:8000/v1/audio/transcriptions/stream"


class StreamClient:
    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, tls: ssl.SSLContext | None = None,
                 **params: Any) -> None:
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        self.url = f"{url}?{urlencode(query)}" if query else url
        self.sample_rate = int(params.get("sample_rate", 16000))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._tls = tls  # for wss:// with a certificate the system does not trust (a private CA)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_code: int | None = None
        self.sent_at: list[tuple[float, int]] = []  # (monotonic time, samples sent so far) per chunk

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await self._http.ws_connect(self.url, headers=self._headers, max_msg_size=1 << 24,
                                                   ssl=self._tls if self._tls is not None else True)
        except BaseException:
            await self._http.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse:
        assert self._ws is not None, "use StreamClient as an async context manager"
        return self._ws

    async def send_audio(self, pcm: bytes) -> None:
        await self.ws.send_bytes(pcm)

    async def send_pcm(self, samples: np.ndarray, *, speed: float = 1.0, chunk_ms: int = 100,
                       end: bool = True) -> None:
        """Send int16 samples in `chunk_ms` chunks at `speed` x real time (0 = as fast as possible)."""
        chunk = max(1, self.sample_rate * chunk_ms // 1000)
        started = time.monotonic()
        for offset in range(0, len(samples), chunk):
            if speed > 0:
                due = started + offset / self.sample_rate / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.ws.closed:
                return
            await self.send_audio(samples[offset:offset + chunk].astype("<i2").tobytes())
            self.sent_at.append((time.monotonic(), min(len(samples), offset + chunk)))
        if end and not self.ws.closed:
            await self.end()

    async def flush(self) -> None:
        await self.ws.send_str(json.dumps({"type": "flush"}))

    async def end(self) -> None:
        await self.ws.send_str(json.dumps({"type": "end"}))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event the server sends, until it closes the connection (`close_code` then says how)."""
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                yield json.loads(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                break
        self.close_code = self.ws.close_code


async def transcribe_file(url: str, samples: np.ndarray, *, speed: float = 1.0, chunk_ms: int = 100,
                          **params: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Stream int16 samples and collect every event; returns (events, close code)."""
    async with StreamClient(url, **params) as stream:
        sender = asyncio.create_task(stream.send_pcm(samples, speed=speed, chunk_ms=chunk_ms))
        events = [event async for event in stream.events()]
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        return events, stream.close_code


class ServerExited(RuntimeError):
    """The server process being waited for exited instead of becoming ready."""


async def wait_until_ready(url: str, process: subprocess.Popen[bytes] | None = None, *,
                           timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
    """Poll a `/readyz` (gateway) or `/healthz` (worker) URL until it answers 200 with a ready status.

    Raises `ServerExited` if `process` exits first, TimeoutError after `timeout_s`.
    """
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(timeout_s):
            while True:
                if process is not None and process.poll() is not None:
                    raise ServerExited(f"{process.args} exited with code {process.returncode}")
                try:
                    async with http.get(url) as response:
                        body = await response.json(content_type=None)
                        if response.status == 200 and body.get("status") in ("ready", "ok"):
                            return
                except (aiohttp.ClientError, ValueError):
                    pass
                await asyncio.sleep(poll_s)
