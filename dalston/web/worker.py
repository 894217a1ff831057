"""The worker's aiohttp app: the link endpoint that spawns and drives session actors, health and tree.

Per link: read `spawn`, start a session actor on the node (or answer `refused`), then relay the gateway's
frames into the actor's mailbox (awaiting `tell`, so a slow session pushes back on the gateway through TCP)
and the actor's events out. When the session stops the link is closed with the client's close code; when the
gateway goes away first the session is stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from dalston.actors.runtime import SHUTDOWN, ActorDead, ActorRef
from dalston.actors.speech.protocol import (
    ErrorCode,
    ErrorOccurred,
    ProtocolError,
    ServerEvent,
    SessionEnded,
    parse_client_message,
)
from dalston.actors.speech.session import PushAudio
from dalston.logs import bind_context
from dalston.supervisor.cluster.node import SpawnRefused, WorkerNode
from dalston.web.bounded_send import send_text_within
from dalston.web.link_protocol import (
    HANDBACK,
    LINK_PATH,
    LINK_SEND_TIMEOUT_S,
    TOKEN_HEADER,
    Refused,
    Spawn,
    token_matches,
)
from dalston.web.worker_metrics import SessionProbe, WorkerMetrics

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NODE_KEY = web.AppKey("node", WorkerNode)
SOCKETS_KEY = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
METRICS_KEY = web.AppKey("metrics", WorkerMetrics)
SPAWN_TIMEOUT_S = 10.0
DRAIN_PATH = "/v1/drain"
HAND_BACK_POLL_S = 0.05  # how often a draining link looks for its session's next pause


def create_worker_app(node: WorkerNode) -> web.Application:
    app = web.Application()
    app[NODE_KEY] = node
    app[SOCKETS_KEY] = weakref.WeakSet()
    app[METRICS_KEY] = WorkerMetrics(node)
    app.router.add_get(LINK_PATH, link_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/v1/tree", _token_required(tree_handler))
    app.router.add_get("/metrics", _token_required(app[METRICS_KEY].handler))
    app.router.add_post(DRAIN_PATH, _token_required(drain_handler))
    app.on_shutdown.append(_close_links)
    return app


async def _close_links(app: web.Application) -> None:
    for ws in list(app[SOCKETS_KEY]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"worker shutting down")


def _has_link_token(request: web.Request) -> bool:
    return token_matches(request.headers.get(TOKEN_HEADER), request.app[NODE_KEY].config.node.link_token)


def _token_required(handler: Handler) -> Handler:
    """Introspection (the tree, metrics) is for the cluster's own gateways and operators: it needs the token."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _has_link_token(request):
            raise web.HTTPUnauthorized(text="the link token is required")
        return await handler(request)

    return guarded


async def health_handler(request: web.Request) -> web.Response:
    """The status for probes without a token; the details with it."""
    node = request.app[NODE_KEY]
    stats = await node.statistics()
    if not _has_link_token(request):
        return web.json_response({"status": stats.status})
    return web.json_response({"status": stats.status, "worker_id": stats.worker_id, "capacity": stats.capacity,
                              "active_sessions": stats.active_sessions, "models": list(stats.models),
                              "unavailable_models": stats.unavailable_models})


async def drain_handler(request: web.Request) -> web.Response:
    """`dalston drain`: take no new sessions and hand the running ones back to their gateways; the process stays
    up (draining) until the operator stops it."""
    node = request.app[NODE_KEY]
    await node.begin_drain()
    return web.json_response({"status": str(node.status), "worker_id": node.worker_id,
                              "active_sessions": await node.active_sessions()})


async def tree_handler(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    tree = await node.tree()
    return web.json_response({"worker": node.describe(), "tree": tree.to_json() if tree else None})


async def link_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    if not token_matches(request.headers.get(TOKEN_HEADER), node.config.node.link_token):
        raise web.HTTPUnauthorized(text="bad link token")
    ws = web.WebSocketResponse(max_msg_size=8 * node.config.session.max_frame_bytes, heartbeat=10.0)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    try:
        spawn = Spawn.from_json(await ws.receive_json(timeout=SPAWN_TIMEOUT_S))
    except (TimeoutError, ValueError, ProtocolError, TypeError) as error:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=f"bad spawn: {error}"[:120].encode())
        return ws
    bind_context(session_id=spawn.session_id, worker_id=node.worker_id)
    await _serve_session(node, ws, request.transport, spawn, request.app[METRICS_KEY])
    return ws


async def _serve_session(node: WorkerNode, ws: web.WebSocketResponse, transport: asyncio.Transport | None,
                         spawn: Spawn, metrics: WorkerMetrics) -> None:
    link = _SessionLink(ws, transport)
    probe = metrics.session_probe(spawn.params)
    try:
        ref = await node.start_session(spawn.session_id, spawn.params, probe.wrap(link.send_event), spawn.client_ip,
                                       spawn.resume)
    except SpawnRefused as refusal:
        await _refuse(ws, Refused(refusal.code, refusal.message))
        return
    except Exception as error:  # any other failure to start is the client's internal_error, never a traceback
        log.exception("link.spawn_failed")
        await _refuse(ws, Refused(ErrorCode.INTERNAL_ERROR, f"the session could not start: {type(error).__name__}"))
        return
    metrics.session_started(spawn.params.model)
    watcher: asyncio.Task[None] | None = None
    hand_back = asyncio.create_task(_hand_back_when_draining(node, ref, link))
    try:
        # A gateway that gave up waiting has closed the link by now: the relay ends at once and so does the
        # session, instead of running for nobody until its idle timeout.
        await link.open({"type": "spawned", "worker_id": node.worker_id})
        log.info("link.session_started", model=spawn.params.model)
        watcher = asyncio.create_task(_close_when_stopped(ref, ws, link))
        await _relay_frames(ws, ref, probe)
    finally:
        hand_back.cancel()
        if ref.alive:  # the gateway went away first: nobody is left to hear this session
            await ref.stop(SHUTDOWN)
        if watcher is not None:
            await watcher
    log.info("link.session_closed", close_code=ws.close_code)


async def _hand_back_when_draining(node: WorkerNode, ref: ActorRef, link: _SessionLink) -> None:
    """While the node drains: at the session's next pause (no speech, no final pending, nothing queued), or at
    the drain deadline, tell the gateway to move it. The gateway replays what it kept since the last final to
    the new worker and then closes this link, which stops the session here."""
    await node.handing_back.wait()
    while ref.alive and time.monotonic() < node.hand_back_by:
        stats = ref.statistics()
        if not stats.extra.get("in_speech", True) and not stats.extra.get("finals_pending", 1) \
                and stats.mailbox_depth == 0:
            break
        await asyncio.sleep(HAND_BACK_POLL_S)
    if ref.alive:
        log.info("link.handing_back", at_pause=time.monotonic() < node.hand_back_by)
        await link.hand_back()


async def _refuse(ws: web.WebSocketResponse, refusal: Refused) -> None:
    await ws.send_json(refusal.to_json())
    await ws.close()


class _SessionLink:
    """The session's event sink: each event goes out as the JSON text the client receives.

    Events the session emits while starting (`session.begin`) wait until the `spawned` reply is out.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.last_error: ErrorOccurred | None = None
        self.ended = False
        self._transport = transport
        self._held: list[ServerEvent] | None = []

    async def open(self, spawned: dict[str, Any]) -> None:
        await self._send(json.dumps(spawned))
        held, self._held = self._held or [], None
        for event in held:
            await self.send_event(event)

    async def hand_back(self) -> None:
        """Ask the gateway to move the session; it closes this link once another worker has it (or, if none
        can take it, goes on sending audio here until the drain deadline ends the session)."""
        await self._send(json.dumps({"type": HANDBACK}))

    async def send_event(self, event: ServerEvent) -> None:
        if self._held is not None:
            self._held.append(event)
            return
        if isinstance(event, ErrorOccurred):
            self.last_error = event
        self.ended = self.ended or isinstance(event, SessionEnded)
        await self._send(json.dumps(event.to_json()))

    async def _send(self, text: str) -> None:
        """A gateway that stops reading for `LINK_SEND_TIMEOUT_S` is cut off, which stops the session."""
        if not await send_text_within(self.ws, text, LINK_SEND_TIMEOUT_S):
            log.warning("link.gateway_not_reading", timeout_s=LINK_SEND_TIMEOUT_S)
            if self._transport is not None:
                self._transport.abort()


async def _relay_frames(ws: web.WebSocketResponse, ref: ActorRef, probe: SessionProbe) -> None:
    async for msg in ws:
        try:
            if msg.type is WSMsgType.BINARY:
                probe.audio_received(len(msg.data))
                await ref.tell(PushAudio(msg.data))
            elif msg.type is WSMsgType.TEXT:
                await ref.tell(parse_client_message(msg.data))  # the gateway checked it; re-parse, never trust
        except ProtocolError as error:
            log.warning("link.bad_control_message", error=error.message)
        except ActorDead:
            return


async def _close_when_stopped(ref: ActorRef, ws: web.WebSocketResponse, link: _SessionLink) -> None:
    reason = await ref.wait_stopped()
    if not link.ended and (link.last_error is None or link.last_error.code.close_code is None):
        # Stopped without saying why (a crash, or the node shutting down): tell the client before closing.
        code = ErrorCode.INTERNAL_ERROR if reason.abnormal else ErrorCode.WORKER_LOST
        await link.send_event(ErrorOccurred(code, f"the session stopped: {reason}"))
    error = link.last_error
    close_code = error.code.close_code if error is not None and error.code.close_code is not None else 1000
    await ws.close(code=close_code)
