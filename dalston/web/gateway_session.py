"""The gateway's side of one call, as a supervised actor that outlives the worker serving it (DESIGN §6).

`GatewaySession` owns the client's socket for the call's relay, the link to the worker running the session, and
the replay buffer. Client audio goes into the buffer and from there over the link (a pump with a cursor, so the
client's frames and control messages keep their order); the worker's events go back to the client, each relayed
final trimming the buffer. When the link is lost (closed abnormally, or silent past the ping timeout: a hung
worker) or the worker hands the session back (it is draining), the session is placed on another worker with the
same id and a resume record, the kept audio is replayed there as fast as the link takes it, and the live audio
received meanwhile follows. The client sees one `session.resumed` and no error; only when no worker takes the
session within the placement deadline does it get `worker_lost`.

Sessions are temporary children of the gateway's sessions supervisor: a crashed one is not re-run with lost
state; its client's socket is closed by the handler that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import WSMsgType

from dalston.actors.actor import Actor
from dalston.actors.cancellation import cancel_and_wait
from dalston.actors.runtime import ActorDead, ExitReason
from dalston.actors.speech.protocol import (
    ClientMessage,
    Configure,
    End,
    ErrorCode,
    ProtocolError,
    SessionResumed,
    StreamParams,
    parse_client_message,
)
from dalston.actors.speech.resume import ResumedFinal, ResumeRecord
from dalston.actors.speech.session import PushAudio
from dalston.web.client_socket import ClientSocket, SlowConsumer
from dalston.web.failover_metrics import FailoverMetrics
from dalston.web.link import LINK_LOST, RemoteSessionRef
from dalston.web.link_protocol import HANDBACK
from dalston.web.replay import RelayedFinal, ReplayBuffer

log = structlog.get_logger(__name__)

# `place(params, resume, avoid_worker_id, stays)`: a session spawned on a worker, or ProtocolError (no worker took
# it). `stays`: the worker it leaves goes on with the call if no other one takes it (a handback).
Place = Callable[[StreamParams, ResumeRecord | None, str | None, bool], Awaitable[RemoteSessionRef]]


@dataclass(frozen=True)
class _Control:
    """A client control message, and how much of the client's audio came before it (it goes out after that)."""

    offset: int
    message: ClientMessage


class GatewaySession(Actor):
    mailbox_size = 16

    def __init__(self, session_id: str, params: StreamParams, client: ClientSocket, remote: RemoteSessionRef,
                 place: Place, buffer: ReplayBuffer, metrics: FailoverMetrics, *, replay_frame_bytes: int,
                 max_frame_bytes: int) -> None:
        self.session_id = session_id
        self.params = params
        self.client = client
        self.remote = remote
        self._place = place
        self.buffer = buffer
        self._metrics = metrics
        self._frame_bytes = replay_frame_bytes
        self._max_frame_bytes = max_frame_bytes
        self._controls: deque[_Control] = deque()
        self._cursor = 0  # how much of the client's audio the current worker has been sent (absolute offset)
        self._wake = asyncio.Event()  # audio or a control message to send
        self._progress = asyncio.Event()  # the cursor moved, or the link changed
        self._end_offset: int | None = None  # the client sent `end` after this much audio
        self._client_gone = False
        self._events: AsyncIterator[str] | None = None  # the current link's events
        self._expect_begin = False  # a new worker's session.begin is not the client's business
        self._last_event_at = time.monotonic()
        self.moves = 0
        self.outcome = "normal"
        self._log = log.bind(session_id=session_id)

    async def on_start(self) -> None:
        self.start_task(self._run(), name=f"relay:{self.session_id}")

    async def receive(self, message: Any) -> None:
        match message:
            case End():  # the gateway drains: end the call as the client's `end` would
                self._add_control(message)
            case _:
                await super().receive(message)

    def statistics_extra(self) -> dict[str, Any]:
        stats = self.buffer.statistics()
        return {"session_id": self.session_id, "worker_id": self.remote.worker_id, "moves": self.moves,
                "replay_kept_bytes": stats.kept_bytes, "replay_kept_s": stats.kept_s}

    # -- the call -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        reader = self.start_task(self._read_client(), name=f"client:{self.session_id}")
        reason = ExitReason("normal")
        try:
            while (outcome := await self._serve_link()) != "over":
                if not await self._move(outcome):
                    break
        except SlowConsumer:
            self.outcome = "slow_consumer"
            self.client.drop_slow_consumer()
        except Exception as error:  # a bug in the relay: the actor exits abnormally, the handler tells the client
            self._log.exception("gateway.relay_crashed")
            self.outcome, reason = "crashed", ExitReason.crashed(error)
        finally:
            await cancel_and_wait(reader)
            with contextlib.suppress(ConnectionResetError):
                await self.remote.stop()
            self.stop_self(reason if reason.abnormal else ExitReason("normal", self.outcome))

    async def _serve_link(self) -> str:
        """Relay over the current link until it ends: "over" (the call ended), "lost" or "handback" (move it)."""
        if self._events is None:  # a new link (one whose handback could not be taken goes on where it was)
            self._events = self.remote.events()
        pump = self.start_task(self._pump(self.remote), name=f"pump:{self.session_id}")
        try:
            handed_back = await self._relay_events(self._events)
        finally:
            await cancel_and_wait(pump)
        if self._client_gone or self.client.closed:
            self.outcome = "client_left"
            return "over"
        if handed_back:
            self._log.info("gateway.session_handed_back", worker_id=self.remote.worker_id)
            return "handback"
        if self.remote.exit_reason == LINK_LOST:
            self._log.warning("gateway.link_lost", worker_id=self.remote.worker_id)
            return "lost"
        await self.client.close(self.remote.close_code or 1000)
        return "over"

    async def _relay_events(self, events: AsyncIterator[str]) -> bool:
        """The worker's events to the client; True if the worker handed the session back."""
        async for text in events:
            kind, data = _decode(text)
            if kind == HANDBACK:
                return True  # the iterator stays open: if no other worker takes the call, it goes on here
            self._last_event_at = time.monotonic()
            if self._expect_begin and kind == "session.begin":
                self._expect_begin = False
                continue  # the client has its session.begin: this is the same session, resumed
            self._expect_begin = False
            if kind == "transcript.final" and data is not None:
                self.buffer.final_relayed(RelayedFinal(str(data.get("text", "")), float(data["start"]),
                                                       float(data["end"]), data.get("channel")))
            await self.client.send_text(text)
        return False

    async def _move(self, why: str) -> bool:
        """Place the session on another worker and replay what was kept; False if that could not be done.

        A handed-back session that no other worker takes stays where it was (its worker ends it, finalised,
        at its drain deadline): no worse than before the drain began.
        """
        lost = self.remote
        started = time.monotonic()
        silent_s = started - self._last_event_at
        if why == "lost":
            with contextlib.suppress(ConnectionResetError):
                await lost.stop()  # a hung worker must not go on with its copy of the session
        self._progress.set()
        if not self.buffer.movable:
            return await self._stay_or_give_up(lost, why, "its audio outgrew the replay buffer")
        resume = ResumeRecord(round(self.buffer.start_s, 6),
                              tuple(ResumedFinal(f.text, f.start_s, f.end_s, f.channel) for f in self.buffer.finals))
        try:
            self.remote = await self._place(self.params, resume, lost.worker_id, why == "handback" and lost.alive)
        except ProtocolError as error:
            return await self._stay_or_give_up(lost, why, error.message)
        self._events, self._expect_begin = None, True
        with contextlib.suppress(ConnectionResetError):
            await lost.stop()  # a draining worker's copy of the session stops
        if self._client_gone:
            with contextlib.suppress(ConnectionResetError):
                await self.remote.stop()
            return False
        self.moves += 1
        self._cursor = self.buffer.start_offset
        replayed_s = self.buffer.kept_s if self.buffer.indexed else None  # a container stream: not decoded here
        gap_s = time.monotonic() - self._last_event_at
        if self._end_offset is not None and not any(isinstance(c.message, End) for c in self._controls):
            self._controls.appendleft(_Control(self._end_offset, End()))  # sent to the lost worker: again, after replay
        self._metrics.moved(why, replayed_s, gap_s, time.monotonic() - started)
        self._log.info("gateway.session_moved", reason=why, from_worker=lost.worker_id,
                       to_worker=self.remote.worker_id, replay_from_s=round(resume.offset_s, 3),
                       replayed_s=replayed_s, gap_s=round(gap_s, 3), silent_before_s=round(silent_s, 3))
        resumed = SessionResumed(self.session_id, None if replayed_s is None else round(replayed_s, 3),
                                 round(gap_s, 3))
        await self.client.send_text(json.dumps(resumed.to_json()))
        self._wake.set()
        return True

    async def _stay_or_give_up(self, lost: RemoteSessionRef, why: str, message: str) -> bool:
        self._metrics.failed(why)
        if why == "handback" and lost.alive:
            self._log.warning("gateway.handback_kept", worker_id=lost.worker_id, why=message)
            return True
        self._log.warning("gateway.worker_lost", worker_id=lost.worker_id, reason=why, why=message)
        self.outcome = "worker_lost"
        await self.client.send_error(ErrorCode.WORKER_LOST,
                                     f"the worker serving this session stopped answering and {message}")
        await self.client.close(ErrorCode.WORKER_LOST.close_code or 1011)
        return False

    # -- client -> buffer -> worker -----------------------------------------------------------------------

    async def _read_client(self) -> None:
        try:
            async for msg in self.client.ws:
                if msg.type is WSMsgType.BINARY:
                    if len(msg.data) > self._max_frame_bytes:  # checked here: the replay re-frames the audio
                        await self._refuse_frame(len(msg.data))
                        return
                    await self._wait_for_room(len(msg.data))
                    self.buffer.append(msg.data)
                    self._wake.set()
                elif msg.type is WSMsgType.TEXT:
                    try:
                        self._add_control(parse_client_message(msg.data))
                    except ProtocolError as error:  # reported; the session goes on
                        await self.client.send_error(error.code, error.message)
        except SlowConsumer:
            pass
        finally:
            self._client_gone = True
            with contextlib.suppress(ConnectionResetError):
                await self.remote.stop()  # the client went away: stop the remote session

    async def _refuse_frame(self, size: int) -> None:
        self.outcome = "invalid_audio"
        # The client's mistake, logged once with its code (not as a crash), as the worker's session does.
        log.warning("gateway.session_ended_by_client_error", code=str(ErrorCode.INVALID_AUDIO), frame_bytes=size)
        await self.client.send_error(ErrorCode.INVALID_AUDIO, f"audio frame of {size} bytes exceeds the limit of "
                                                              f"{self._max_frame_bytes} bytes")
        await self.client.close(ErrorCode.INVALID_AUDIO.close_code or 1007)

    async def _wait_for_room(self, size: int) -> None:
        """Backpressure: never drop client audio a worker has not been sent yet to keep within the bound."""
        if not self.buffer.indexed or size >= self.buffer.bound_bytes:
            return
        while self.buffer.end_offset + size - self.buffer.bound_bytes > self._cursor:
            self._progress.clear()
            await self._progress.wait()

    def _add_control(self, message: ClientMessage) -> None:
        if isinstance(message, End):
            if self._end_offset is not None:
                return
            self._end_offset = self.buffer.end_offset
        if isinstance(message, Configure):  # a worker taking the session over starts with these settings
            changes = {k: v for k, v in dataclasses.asdict(message).items() if v is not None}
            if message.keyterms is not None:
                changes["keyterms"] = tuple(message.keyterms)
            self.params = dataclasses.replace(self.params, **changes)
        self._controls.append(_Control(self.buffer.end_offset, message))
        self._wake.set()

    async def _pump(self, remote: RemoteSessionRef) -> None:
        """Send the worker the client's audio from the cursor on, and each control message after its audio."""
        try:
            while True:
                self._wake.clear()
                control = self._controls[0] if self._controls else None
                until = control.offset if control is not None else self.buffer.end_offset
                if self._cursor < until:
                    for piece in self.buffer.chunks_from(self._cursor, self._frame_bytes, until):
                        await remote.tell(PushAudio(piece))
                        self._cursor += len(piece)
                        self._progress.set()
                    self._cursor = max(self._cursor, min(until, self.buffer.start_offset))
                elif control is not None:
                    await remote.tell(control.message)
                    self._controls.popleft()
                else:
                    await self._wake.wait()
        except ActorDead:
            return  # the link is gone: the event side sees it end
        except Exception:
            with contextlib.suppress(ConnectionResetError):
                await remote.stop()  # ends the event side too; the error is re-raised where the pump is awaited
            raise


def _decode(text: str) -> tuple[str | None, dict[str, Any] | None]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    return data.get("type"), data
