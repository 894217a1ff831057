"""A small Python client for the stream endpoint: send PCM at a chosen pace, iterate over the events.

    async with StreamClient(url, sample_rate=16000) as stream:
        sender = asyncio.create_task(stream.send_pcm(pcm_int16, speed=1.0))
        async for event in stream.events():
            print(event["type"], event.get("text"))
"""

from __future__ import annotations

import asyncio
import io
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

from dalston.actors.speech.g711 import encode_alaw, encode_mulaw

DEFAULT_URL = "ws://127.0.0.1:8000/v1/audio/transcriptions/stream"


class StreamClient:
    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, tls: ssl.SSLContext | None = None,
                 **params: Any) -> None:
        query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        self.url = f"{url}?{urlencode(query)}" if query else url
        self.sample_rate = int(params.get("sample_rate", 16000))
        self.encoding = str(params.get("encoding", "pcm_s16le"))
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
        """Send int16 samples (shape (n,) or (n, channels)) in `chunk_ms` chunks at `speed` x real time
        (0 = as fast as possible), encoded as the stream's `encoding` asks (Opus: whole file, then paced)."""
        if self.encoding in ("ogg_opus", "webm_opus"):
            data = encode_samples(samples, self.sample_rate, self.encoding)
            await self._send_paced(data, len(samples) / self.sample_rate, speed=speed, chunk_ms=chunk_ms, end=end)
            return
        chunk = max(1, self.sample_rate * chunk_ms // 1000)
        started = time.monotonic()
        for offset in range(0, len(samples), chunk):
            if speed > 0:
                due = started + offset / self.sample_rate / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.ws.closed:
                return
            await self.send_audio(encode_samples(samples[offset:offset + chunk], self.sample_rate, self.encoding))
            self.sent_at.append((time.monotonic(), min(len(samples), offset + chunk)))
        if end and not self.ws.closed:
            await self.end()

    async def _send_paced(self, data: bytes, duration_s: float, *, speed: float, chunk_ms: int, end: bool) -> None:
        """A container stream cut into byte chunks, each sent when the audio it holds (roughly) is due."""
        chunk = max(1, int(len(data) * chunk_ms / 1000 / max(duration_s, 1e-3)))
        started = time.monotonic()
        for offset in range(0, len(data), chunk):
            if speed > 0:
                due = started + offset / len(data) * duration_s / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.ws.closed:
                return
            await self.send_audio(data[offset:offset + chunk])
        if end and not self.ws.closed:
            await self.end()

    async def keepalive(self) -> None:
        await self.ws.send_str(json.dumps({"type": "keepalive"}))

    async def configure(self, **fields: Any) -> None:
        """Change keyterms, prompt or endpointing mid-stream; the session answers `session.configured`."""
        await self.ws.send_str(json.dumps({"type": "configure", **fields}))

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


def encode_samples(samples: np.ndarray, sample_rate: int, encoding: str) -> bytes:
    """int16 samples, shape (n,) or (n, channels) -> what a client of `encoding` sends (interleaved).

    G.711 is coded here; Opus goes through PyAV's libopus encoder into an Ogg or WebM stream (a whole file)."""
    pcm = np.ascontiguousarray(samples, dtype="<i2")
    if encoding == "pcm_s16le":
        return pcm.tobytes()
    if encoding == "pcm_f32le":
        return (pcm.astype("<f4") / 32768.0).tobytes()
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        return encode_mulaw(pcm) if encoding == "pcm_mulaw" else encode_alaw(pcm)
    if encoding in ("ogg_opus", "webm_opus"):
        return _encode_opus(pcm.reshape(len(pcm), -1), sample_rate, "ogg" if encoding == "ogg_opus" else "webm")
    raise ValueError(f"cannot encode {encoding!r}")


def _encode_opus(pcm: np.ndarray, sample_rate: int, container: str) -> bytes:
    import av  # installed with faster-whisper; imported only by clients that send Opus

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream("libopus", rate=48000)
        stream.layout = {1: "mono", 2: "stereo"}.get(pcm.shape[1], f"{pcm.shape[1]}c")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=stream.layout.name)
        frame.sample_rate, frame.pts = sample_rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


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
