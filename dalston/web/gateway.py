"""The client endpoint (DESIGN §7): validate, place the session on a worker, relay both ways, release.

The gateway keeps no state beyond its open sockets, so any number of gateways can stand behind one balancer.
Relay: client audio and control messages go to the remote session over the link (awaiting each send, so a
slow worker pushes back on the client through TCP); the session's events come back unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import weakref
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from dalston.actors.cancellation import cancel_and_wait
from dalston.actors.protocol import (
    ErrorCode,
    ErrorOccurred,
    ProtocolError,
    StreamParams,
    parse_client_message,
    parse_stream_params,
)
from dalston.actors.runtime import ActorDead
from dalston.actors.session import PushAudio
from dalston.config import Config
from dalston.logs import bind_context
from dalston.supervisor.registry import Allocation, NodeRegistry, RegistryUnavailable, SessionInfo, WorkerStatus
from dalston.supervisor.router import SessionRouter
from dalston.web.access_log import close_websocket
from dalston.web.auth import ApiKeys
from dalston.web.link import LINK_LOST, LinkRefused, RemoteSessionRef, open_link
from dalston.web.metrics import GatewayMetrics
from dalston.web.ops import OpsSources, add_ops_routes
from dalston.web.page import add_page_routes

log = structlog.get_logger(__name__)

STREAM_PATH = "/v1/audio/transcriptions/stream"
MODELS_CACHE_S = 2.0


@dataclass
class GatewayState:
    config: Config
    registry: NodeRegistry
    router: SessionRouter
    keys: ApiKeys
    metrics: GatewayMetrics
    http: aiohttp.ClientSession | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    _models: tuple[float, frozenset[str], frozenset[str]] = (0.0, frozenset(), frozenset())

    async def known_models(self) -> frozenset[str]:
        """Models some registered worker has loaded, draining or lapsed ones included (cached briefly).

        A model whose workers are all draining or briefly silent is still served: its clients get
        `no_capacity` (try again), not `unsupported_model`.
        """
        return (await self._read_models())[0]

    async def ready_models(self) -> frozenset[str]:
        """Models some live, ready worker has loaded: what a new session can be placed on now."""
        return (await self._read_models())[1]

    async def _read_models(self) -> tuple[frozenset[str], frozenset[str]]:
        fetched_at, known, ready = self._models
        if time.monotonic() - fetched_at > MODELS_CACHE_S:  # this reads every worker: not once per session
            workers = await self.registry.list_workers()
            known = frozenset(m for w in workers for m in w.models)
            ready = frozenset(m for w in workers if w.alive and w.status is WorkerStatus.READY for m in w.models)
            self._models = (time.monotonic(), known, ready)
        return known, ready


STATE_KEY = web.AppKey("gateway", GatewayState)


def create_gateway_app(config: Config, registry: NodeRegistry) -> web.Application:
    app = web.Application()
    keys = ApiKeys(config.server.api_keys, config.server.max_sessions_per_key)
    state = GatewayState(config, registry, SessionRouter(registry), keys, GatewayMetrics())
    app[STATE_KEY] = state
    app.router.add_get(STREAM_PATH, stream_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/readyz", ready_handler)
    app.router.add_get("/metrics", state.metrics.handler)
    add_page_routes(app)
    add_ops_routes(app, OpsSources(registry, keys, config.node.link_token))
    app.cleanup_ctx.append(_http_client)
    app.on_shutdown.append(_close_sockets)
    return app


async def _http_client(app: web.Application):  # type: ignore[no-untyped-def]
    state = app[STATE_KEY]
    state.http = aiohttp.ClientSession()
    yield
    await state.http.close()


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STATE_KEY].sockets):
        await close_websocket(ws, aiohttp.WSCloseCode.GOING_AWAY, b"server shutting down")


async def health_handler(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        models = await state.ready_models()
    except Exception as error:  # the registry is unreachable: not ready, and say why
        return web.json_response({"status": "unavailable", "reason": str(error)}, status=503)
    status = 200 if models else 503
    return web.json_response({"status": "ready" if models else "no_workers", "models": sorted(models)}, status=status)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    ws = web.WebSocketResponse(max_msg_size=4 * state.config.session.max_frame_bytes, heartbeat=20.0)
    await ws.prepare(request)
    state.sockets.add(ws)
    session_id = f"sess_{secrets.token_hex(8)}"
    bind_context(session_id=session_id)
    key = state.keys.key_of(request)
    try:
        try:
            params = await _admit(state, request, key)
            try:
                await _serve(state, ws, session_id, params, request.remote or "")
            finally:
                state.keys.release(key)
        except RegistryUnavailable as error:
            log.warning("gateway.registry_unavailable", error=str(error))
            raise ProtocolError(ErrorCode.NO_CAPACITY, "the session registry is unavailable; try again") from error
    except ProtocolError as error:
        state.metrics.rejected(error.code)
        await _send_error(ws, error.code, error.message)
        await close_websocket(ws, error.code.close_code or 1000)
    return ws


async def _admit(state: GatewayState, request: web.Request, key: str | None) -> StreamParams:
    """Check the key, the parameters and the model, then count the session against its key."""
    if not state.keys.authorized(key):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "a valid API key is required")
    params = parse_stream_params(request.query)
    if params.model not in await state.known_models():
        raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, f"no worker serves model {params.model!r}")
    if not state.keys.acquire(key):
        raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, "too many concurrent sessions for this API key")
    return params


async def _serve(state: GatewayState, ws: web.WebSocketResponse, session_id: str, params: StreamParams,
                 client_ip: str) -> None:
    remote = await _place(state, session_id, params, client_ip)
    bind_context(worker_id=remote.worker_id)
    state.metrics.session_started(params.model)
    started = time.monotonic()
    try:
        forward = asyncio.create_task(_client_to_worker(ws, remote))
        await _worker_to_client(ws, remote)
        await cancel_and_wait(forward)
    finally:
        with contextlib.suppress(ConnectionResetError):
            await remote.stop()
        await state.router.release(session_id)
        state.metrics.session_ended(params.model, time.monotonic() - started)
        log.info("gateway.session_closed", close_code=ws.close_code, link=str(remote.exit_reason))


async def _place(state: GatewayState, session_id: str, params: StreamParams, client_ip: str) -> RemoteSessionRef:
    opened: list[RemoteSessionRef] = []
    refusals: list[LinkRefused] = []

    async def try_spawn(allocation: Allocation) -> bool:
        assert state.http is not None
        result = await open_link(state.http, allocation.endpoint, state.config.node.link_token, session_id, params,
                                 client_ip, 8 * state.config.session.max_frame_bytes)
        if isinstance(result, LinkRefused):
            refusals.append(result)
            log.warning("gateway.spawn_refused", worker_id=allocation.worker_id, code=str(result.code),
                        message=result.message)
            return False
        opened.append(result)
        return True

    info = SessionInfo(session_id, params.model, params.language, client_ip)
    if await state.router.place(info, try_spawn) is None or not opened:
        unsupported = [r for r in refusals if r.code is ErrorCode.UNSUPPORTED_MODEL]
        if unsupported:
            raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, unsupported[0].message)
        raise ProtocolError(ErrorCode.NO_CAPACITY, "no worker has a free slot for this model; try again later")
    return opened[0]


async def _client_to_worker(ws: web.WebSocketResponse, remote: RemoteSessionRef) -> None:
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await remote.tell(PushAudio(msg.data))
            elif msg.type is WSMsgType.TEXT:
                try:
                    await remote.tell(parse_client_message(msg.data))
                except ProtocolError as error:  # reported; the session goes on
                    await _send_error(ws, error.code, error.message)
    except ActorDead:
        return  # the link is gone; the other direction reports it
    finally:
        with contextlib.suppress(ConnectionResetError):
            await remote.stop()  # the client went away: stop the remote session


async def _worker_to_client(ws: web.WebSocketResponse, remote: RemoteSessionRef) -> None:
    async for text in remote.events():
        if ws.closed:
            continue
        with contextlib.suppress(ConnectionResetError):
            await ws.send_str(text)
    if ws.closed:
        return  # the client left first, and closing the link is how its session was stopped
    if remote.exit_reason == LINK_LOST:
        log.warning("gateway.worker_lost", worker_id=remote.worker_id)
        await _send_error(ws, ErrorCode.WORKER_LOST, "the worker serving this session stopped answering")
        await close_websocket(ws, ErrorCode.WORKER_LOST.close_code or 1011)
    else:
        await close_websocket(ws, remote.close_code or 1000)


async def _send_error(ws: web.WebSocketResponse, code: ErrorCode, message: str) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionResetError):
            await ws.send_str(json.dumps(ErrorOccurred(code, message).to_json()))
