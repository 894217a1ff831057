"""The gateway's side of the link: a remote ref to a session actor running on a worker.

`RemoteSessionRef.tell` takes the same messages as a local session's ref (`PushAudio`, `Flush`, `End`) and
sends them over the link; `events()` yields the session's events as the JSON text the client gets. A link that
breaks before the session said goodbye is reported as `link_lost` (the client then gets `worker_lost`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from dalston.actors.runtime import ActorDead, ExitReason
from dalston.actors.speech.protocol import ClientMessage, ErrorCode, StreamParams
from dalston.actors.speech.resume import ResumeRecord
from dalston.actors.speech.session import PushAudio
from dalston.web.link_protocol import LINK_PATH, LINK_SEND_TIMEOUT_S, TOKEN_HEADER, Spawn, bearer

LINK_LOST = ExitReason("link_lost")
SPAWN_REPLY_TIMEOUT_S = 30.0  # a worker may be busy; a spawn must still not hang forever



@dataclass(frozen=True)
class LinkRefused:
    """The worker would not start the session (full, draining, model not loaded) or could not be reached."""

    code: ErrorCode
    message: str
    unreachable: bool = False  # no answer at all (connection failed or timed out), not a "no"


class RemoteSessionRef:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str, worker_id: str) -> None:
        self.name = f"session:{session_id}@{worker_id}"
        self.session_id = session_id
        self.worker_id = worker_id
        self._ws = ws
        self.saw_goodbye = False  # session.end or an error event that ends the session arrived
        self.exit_reason: ExitReason | None = None

    @property
    def alive(self) -> bool:
        return not self._ws.closed

    async def tell(self, message: PushAudio | ClientMessage) -> None:
        if self._ws.closed:
            raise ActorDead(self.name, self.exit_reason or LINK_LOST)
        try:
            async with asyncio.timeout(LINK_SEND_TIMEOUT_S):
                if isinstance(message, PushAudio):
                    await self._ws.send_bytes(message.data)
                else:
                    await self._ws.send_str(json.dumps(message.to_json()))
        except (ConnectionResetError, aiohttp.ClientError, TimeoutError) as error:
            await self._ws.close()
            raise ActorDead(self.name, LINK_LOST) from error

    async def stop(self) -> None:
        """The client went away: closing the link stops the remote session."""
        await self._ws.close()

    async def events(self) -> AsyncIterator[str]:
        """The session's events (JSON text) until the link closes; then `exit_reason` says how it ended."""
        async for msg in self._ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._note_goodbye(msg.data)
                yield msg.data
            elif msg.type is aiohttp.WSMsgType.ERROR:
                break
        normal = self.saw_goodbye and self._ws.close_code is not None
        self.exit_reason = ExitReason("normal") if normal else LINK_LOST

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def _note_goodbye(self, text: str) -> None:
        kind, code = _event_kind(text)
        error_code = ErrorCode.lookup(code)
        if kind == "session.end" or (error_code is not None and error_code.close_code is not None):
            self.saw_goodbye = True


def _event_kind(text: str) -> tuple[str | None, str | None]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    return data.get("type"), data.get("code")


async def open_link(
    http: aiohttp.ClientSession,
    endpoint: str,
    token: str,
    session_id: str,
    params: StreamParams,
    client_ip: str = "",
    max_frame_bytes: int = 1 << 20,
    timeout_s: float = SPAWN_REPLY_TIMEOUT_S,
    resume: ResumeRecord | None = None,
    heartbeat_s: float = 10.0,
) -> RemoteSessionRef | LinkRefused:
    """Connect to a worker and spawn the session there within `timeout_s`.

    A refusal, or a worker that cannot be reached or does not answer in time, is a `LinkRefused`. A worker
    that stops answering pings for `heartbeat_s / 2` after one is sent (hung, SIGSTOPped) loses the link.
    """
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(timeout_s):
            ws = await http.ws_connect(
                endpoint.rstrip("/") + LINK_PATH, headers={TOKEN_HEADER: bearer(token)},
                max_msg_size=max_frame_bytes, heartbeat=heartbeat_s, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
            await ws.send_json(Spawn(session_id, params, client_ip, resume).to_json())
            reply = await ws.receive_json()
    except (TimeoutError, aiohttp.ClientError, OSError, TypeError, ValueError) as error:
        if ws is not None:
            await ws.close()  # a late spawn on the worker sees the link closed and stops its session
        return LinkRefused(ErrorCode.NO_CAPACITY, f"worker did not answer: {type(error).__name__}", unreachable=True)
    if reply.get("type") != "spawned":
        await ws.close()
        code = ErrorCode.lookup(reply.get("code")) or ErrorCode.NO_CAPACITY
        return LinkRefused(code, str(reply.get("message", "refused")))
    return RemoteSessionRef(ws, session_id, str(reply.get("worker_id", "")))
