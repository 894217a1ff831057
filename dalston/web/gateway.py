"""The client endpoint (DESIGN §7): validate, place the session on a worker, relay both ways, release.

The gateway keeps no state beyond its open sockets, so any number of gateways can stand behind one balancer.
Relay: client audio and control messages go to the remote session over the link (awaiting each send, so a
slow worker pushes back on the client through TCP); the session's events come back unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
import weakref
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from dalston.actors.cancellation import cancel_and_wait
from dalston.actors.protocol import (
    End,
    ErrorCode,
    ProtocolError,
    StreamParams,
    parse_client_message,
    parse_stream_params,
)
from dalston.actors.runtime import ActorDead
from dalston.actors.session import PushAudio
from dalston.actors.speech import session_bounds
from dalston.config import Config
from dalston.logs import bind_context
from dalston.supervisor.registry import Allocation, NodeRegistry, RegistryUnavailable, SessionInfo
from dalston.supervisor.router import PlacementPolicy, SessionRouter, SpawnOutcome
from dalston.web.access_log import close_websocket
from dalston.web.auth import ApiKeys
from dalston.web.client_socket import ClientSocket, SlowConsumer
from dalston.web.link import LINK_LOST, LinkRefused, RemoteSessionRef, open_link
from dalston.web.metrics import GatewayMetrics
from dalston.web.model_cache import ModelCache
from dalston.web.ops import OpsSources, add_ops_routes
from dalston.web.page import add_page_routes

log = structlog.get_logger(__name__)

STREAM_PATH = "/v1/audio/transcriptions/stream"


@dataclass
class GatewayState:
    config: Config
    registry: NodeRegistry
    router: SessionRouter
    keys: ApiKeys
    metrics: GatewayMetrics
    models: ModelCache
    http: aiohttp.ClientSession | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    sessions: dict[str, RemoteSessionRef] = field(default_factory=dict)  # the sessions being relayed now
    no_sessions: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    connections: int = 0  # stream sockets open, admitted or not


async def drain_gateway(app: web.Application, timeout_s: float, finish_s: float = 15.0) -> None:
    """Stop taking sessions (readiness 503), let running ones go on for `timeout_s`, then end them as a
    client's `end` would, so that their speech is finalised and `session.end` is sent (within `finish_s`)."""
    state = app[STATE_KEY]
    state.draining = True
    log.info("gateway.draining", sessions=len(state.sessions), timeout_s=timeout_s)
    if not await _sessions_gone_within(state, timeout_s):
        for remote in list(state.sessions.values()):
            with contextlib.suppress(ActorDead):
                await remote.tell(End())
        await _sessions_gone_within(state, finish_s)
    log.info("gateway.drained", sessions_left=len(state.sessions))


async def _sessions_gone_within(state: GatewayState, timeout_s: float) -> bool:
    if state.sessions:
        state.no_sessions.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await state.no_sessions.wait()
    return not state.sessions


STATE_KEY = web.AppKey("gateway", GatewayState)


def create_gateway_app(config: Config, registry: NodeRegistry) -> web.Application:
    app = web.Application()
    keys = ApiKeys(config.server.api_keys, config.server.max_sessions_per_key,
                   config.server.max_sessions_per_client_ip)
    server = config.server
    policy = PlacementPolicy(server.placement_deadline_s, server.spawn_timeout_s, server.suspect_s,
                             release_retry_s=server.placement_deadline_s + config.registry.lease_ttl_s)
    state = GatewayState(config, registry, SessionRouter(registry, policy), keys, GatewayMetrics(),
                         ModelCache(registry))
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
    # A link lives as long as its session: no connection cap below the gateway's own session limits.
    ca_file = state.config.server.link_ca_file
    tls = ssl.create_default_context(cafile=ca_file) if ca_file else True  # for wss:// worker links
    state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=tls))
    yield
    await state.http.close()
    await state.router.close()


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STATE_KEY].sockets):
        await close_websocket(ws, aiohttp.WSCloseCode.GOING_AWAY, b"server shutting down")


async def health_handler(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready_handler(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.draining:  # first, so that balancers stop sending clients here
        return web.json_response({"status": "draining"}, status=503)
    try:
        models = (await state.models.get()).ready
    except Exception as error:  # the registry is unreachable: not ready, and say why
        return web.json_response({"status": "unavailable", "reason": str(error)}, status=503)
    status = 200 if models else 503
    return web.json_response({"status": "ready" if models else "no_workers", "models": sorted(models)}, status=status)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if state.connections >= state.config.server.max_connections:
        raise web.HTTPServiceUnavailable(text="too many connections; try again later")
    state.connections += 1
    try:
        return await _stream(state, request)
    finally:
        state.connections -= 1


async def _stream(state: GatewayState, request: web.Request) -> web.WebSocketResponse:
    offered = state.keys.subprotocol(request)
    ws = web.WebSocketResponse(max_msg_size=4 * state.config.session.max_frame_bytes, heartbeat=20.0,
                               protocols=(offered,) if offered else ())  # echoed, as browsers require
    await ws.prepare(request)
    state.sockets.add(ws)
    client = ClientSocket(ws, request.transport, state.config.server.send_timeout_s)
    session_id = f"sess_{secrets.token_hex(8)}"
    bind_context(session_id=session_id)
    key = state.keys.key_of(request)
    holder = state.keys.holder(key, request.remote or "")
    try:
        try:
            params = await _admit(state, request, key, holder)
            try:
                await _serve(state, client, session_id, params, request.remote or "")
            finally:
                state.keys.release(holder)
        except RegistryUnavailable as error:
            log.warning("gateway.registry_unavailable", error=str(error))
            raise ProtocolError(ErrorCode.NO_CAPACITY, "the session registry is unavailable; try again") from error
    except ProtocolError as error:
        state.metrics.rejected(error.code)
        with contextlib.suppress(SlowConsumer):
            await client.send_error(error.code, error.message)
        await client.close(error.code.close_code or 1000)
    except SlowConsumer:
        client.drop_slow_consumer()
    return ws


async def _admit(state: GatewayState, request: web.Request, key: str | None, holder: str) -> StreamParams:
    """Check the key, the parameters and the model, then count the session against its key (or client IP)."""
    if state.draining:
        raise ProtocolError(ErrorCode.NO_CAPACITY, "this gateway is shutting down; connect again")
    if not state.keys.authorized(key):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "a valid API key is required")
    params = parse_stream_params(request.query, session_bounds(state.config.session))
    if params.model not in (await state.models.get()).known:
        raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, f"no worker serves model {params.model!r}")
    if not state.keys.acquire(holder):
        raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, "too many concurrent sessions for this API key or address")
    return params


async def _serve(state: GatewayState, client: ClientSocket, session_id: str, params: StreamParams,
                 client_ip: str) -> None:
    remote = await _place(state, session_id, params, client_ip)
    bind_context(worker_id=remote.worker_id)
    state.metrics.session_started(params.model)
    started = time.monotonic()
    state.sessions[session_id] = remote
    forward = asyncio.create_task(_client_to_worker(client, remote))
    try:
        await _worker_to_client(client, remote)
    finally:
        del state.sessions[session_id]
        if not state.sessions:
            state.no_sessions.set()
        await cancel_and_wait(forward)
        with contextlib.suppress(ConnectionResetError):
            await remote.stop()
        await state.router.release_or_retry(session_id)
        state.metrics.session_ended(params.model, time.monotonic() - started)
        log.info("gateway.session_closed", close_code=client.ws.close_code, link=str(remote.exit_reason))


async def _place(state: GatewayState, session_id: str, params: StreamParams, client_ip: str) -> RemoteSessionRef:
    opened: list[RemoteSessionRef] = []
    refusals: list[LinkRefused] = []

    async def try_spawn(allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        assert state.http is not None
        result = await open_link(state.http, allocation.endpoint, state.config.node.link_token, session_id, params,
                                 client_ip, 8 * state.config.session.max_frame_bytes, timeout_s)
        if isinstance(result, LinkRefused):
            refusals.append(result)
            log.warning("gateway.spawn_refused", worker_id=allocation.worker_id, code=str(result.code),
                        message=result.message)
            return SpawnOutcome.UNREACHABLE if result.unreachable else SpawnOutcome.REFUSED
        opened.append(result)
        return SpawnOutcome.SPAWNED

    info = SessionInfo(session_id, params.model, params.language, client_ip)
    if await state.router.place(info, try_spawn) is None or not opened:
        unsupported = [r for r in refusals if r.code is ErrorCode.UNSUPPORTED_MODEL]
        if unsupported:
            raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, unsupported[0].message)
        raise ProtocolError(ErrorCode.NO_CAPACITY, "no worker has a free slot for this model; try again later")
    return opened[0]


async def _client_to_worker(client: ClientSocket, remote: RemoteSessionRef) -> None:
    try:
        async for msg in client.ws:
            if msg.type is WSMsgType.BINARY:
                await remote.tell(PushAudio(msg.data))
            elif msg.type is WSMsgType.TEXT:
                try:
                    await remote.tell(parse_client_message(msg.data))
                except ProtocolError as error:  # reported; the session goes on
                    await client.send_error(error.code, error.message)
    except (ActorDead, SlowConsumer):
        return  # the link is gone, or the client: the other direction reports it
    finally:
        with contextlib.suppress(ConnectionResetError):
            await remote.stop()  # the client went away: stop the remote session


async def _worker_to_client(client: ClientSocket, remote: RemoteSessionRef) -> None:
    try:
        async for text in remote.events():
            await client.send_text(text)
        if client.closed:
            return  # the client left first, and closing the link is how its session was stopped
        if remote.exit_reason == LINK_LOST:
            log.warning("gateway.worker_lost", worker_id=remote.worker_id)
            await client.send_error(ErrorCode.WORKER_LOST, "the worker serving this session stopped answering")
            await client.close(ErrorCode.WORKER_LOST.close_code or 1011)
        else:
            await client.close(remote.close_code or 1000)
    except SlowConsumer:
        with contextlib.suppress(ConnectionResetError):
            await remote.stop()  # nobody reads this session any more: stop it and free its slot now
        client.drop_slow_consumer()
