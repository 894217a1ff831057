"""The client endpoint (DESIGN §7): validate, place the session on a worker, relay both ways, release.

The gateway keeps no state beyond its open sockets and each session's replay buffer, so any number of gateways
can stand behind one balancer. Each call is relayed by a `GatewaySession` actor (gateway_session.py), a temporary
child of the gateway's sessions supervisor: client audio and control messages go to the remote session over the
link (awaiting each send, so a slow worker pushes back on the client through TCP); the session's events come
back unchanged; a lost or draining worker's session is moved to another worker with a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import ssl
import time
import weakref
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web

from dalston.actors.runtime import ActorDead, ActorRef, spawn
from dalston.actors.speech.protocol import (
    End,
    ErrorCode,
    ProtocolError,
    StreamParams,
    parse_stream_params,
)
from dalston.actors.speech.resume import ResumeRecord
from dalston.config import Config
from dalston.logs import bind_context
from dalston.supervisor.cluster.registry import (
    Allocation,
    NodeRegistry,
    RegistryError,
    RegistryUnavailable,
    SessionInfo,
)
from dalston.supervisor.cluster.router import PlacementPolicy, SessionRouter, SpawnOutcome
from dalston.supervisor.spec import ChildSpec, Restart
from dalston.supervisor.supervisor import SupervisorHandle, start_supervisor
from dalston.web.access_log import close_websocket
from dalston.web.auth import ApiKeys
from dalston.web.client_socket import ClientSocket, SlowConsumer
from dalston.web.failover_metrics import FailoverMetrics
from dalston.web.gateway_session import GatewaySession, Place
from dalston.web.link import LinkRefused, RemoteSessionRef, open_link
from dalston.web.metrics import GatewayMetrics
from dalston.web.model_cache import ModelCache
from dalston.web.ops import OpsSources, add_ops_routes
from dalston.web.page import add_page_routes
from dalston.web.replay import ReplayBuffer

log = structlog.get_logger(__name__)

STREAM_PATH = "/v1/audio/transcriptions/stream"
REPLAY_FRAME_BYTES = 32000  # a replay goes to the new worker in frames of up to 1 s of 16 kHz PCM


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
    failover: FailoverMetrics = field(init=False)
    resume_router: SessionRouter = field(init=False)  # the same registry, with the failover deadline
    supervisor: SupervisorHandle | None = None  # the gateway-side session actors (temporary children)
    sessions: dict[str, ActorRef] = field(default_factory=dict)  # the sessions being relayed now
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
        for ref in list(state.sessions.values()):
            with contextlib.suppress(ActorDead):
                await ref.tell(End())
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
    keys = ApiKeys(config.server.api_keys, config.server.max_sessions_per_key, registry,
                   config.server.max_sessions_per_client_ip, config.registry.lease_ttl_s)
    server = config.server
    policy = PlacementPolicy(server.placement_deadline_s, server.spawn_timeout_s, server.suspect_s,
                             release_retry_s=server.placement_deadline_s + config.registry.lease_ttl_s)
    state = GatewayState(config, registry, SessionRouter(registry, policy), keys, GatewayMetrics(),
                         ModelCache(registry))
    state.failover = FailoverMetrics(state.metrics.registry)
    state.resume_router = SessionRouter(registry, dataclasses.replace(policy, deadline_s=server.failover_deadline_s))
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
    state.supervisor = await start_supervisor([], name="gateway-sessions", max_restarts=1000, period_s=1.0)
    yield
    await state.supervisor.stop(timeout_s=10.0)
    await state.http.close()
    await state.router.close()
    await state.keys.close()
    await state.resume_router.close()


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
            params = await _admit(state, request, key, holder, session_id)
            try:
                await _serve(state, client, session_id, params, request.remote or "")
            finally:
                await state.keys.release(holder, session_id)
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


async def _admit(state: GatewayState, request: web.Request, key: str | None, holder: str,
                 session_id: str) -> StreamParams:
    """Check the key, the parameters and the model, then count the session against its key (or client IP)."""
    if state.draining:
        raise ProtocolError(ErrorCode.NO_CAPACITY, "this gateway is shutting down; connect again")
    if not state.keys.authorized(key):
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "a valid API key is required")
    params = parse_stream_params(request.query, state.config.session.bounds)
    if params.model not in (await state.models.get()).known:
        raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, f"no worker serves model {params.model!r}")
    if not await state.keys.acquire(holder, session_id):
        raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, "too many concurrent sessions for this API key or address")
    return params


async def _serve(state: GatewayState, client: ClientSocket, session_id: str, params: StreamParams,
                 client_ip: str) -> None:
    """Place the session, then run its gateway-side actor (relay, replay buffer, failover) until the call ends."""
    place = _placer(state, session_id, client_ip)
    remote = await place(params, None, None)
    bind_context(worker_id=remote.worker_id)
    state.metrics.session_started(params.model)
    started = time.monotonic()
    server = state.config.server
    keep_s = state.config.vad.max_segment_s + server.replay_pad_s
    buffer = ReplayBuffer(params.encoding, params.sample_rate, params.channels, keep_s=keep_s,
                          cap_bytes=server.replay_cap_bytes)
    frame_bytes = min(state.config.session.max_frame_bytes, REPLAY_FRAME_BYTES)
    actor = GatewaySession(session_id, params, client, remote, place, buffer, state.failover,
                           replay_frame_bytes=frame_bytes, max_frame_bytes=state.config.session.max_frame_bytes)
    ref: ActorRef | None = None
    try:
        assert state.supervisor is not None, "the gateway's sessions supervisor starts with the app"
        ref = await state.supervisor.start_child(
            ChildSpec(session_id, lambda restarts: spawn(actor, f"gateway-session:{session_id}", restarts=restarts),
                      Restart.TEMPORARY, shutdown_s=5.0))
        state.sessions[session_id] = ref
        reason = await ref.wait_stopped()
        if reason.abnormal and not client.closed:  # the relay itself crashed: the client must not wait
            log.error("gateway.session_crashed", reason=str(reason))
            with contextlib.suppress(SlowConsumer):
                await client.send_error(ErrorCode.INTERNAL_ERROR, "the gateway's relay for this session failed")
            await client.close(ErrorCode.INTERNAL_ERROR.close_code or 1011)
    finally:
        state.sessions.pop(session_id, None)
        if not state.sessions:
            state.no_sessions.set()
        if ref is not None and ref.alive:
            await ref.stop()
        with contextlib.suppress(ConnectionResetError):
            await actor.remote.stop()
        await state.router.release_or_retry(session_id)
        state.metrics.session_ended(params.model, time.monotonic() - started)
        log.info("gateway.session_closed", close_code=client.ws.close_code, moves=actor.moves,
                 outcome=actor.outcome, worker_id=actor.remote.worker_id)


def _placer(state: GatewayState, session_id: str, client_ip: str) -> Place:
    """How this session is placed: first on any worker, then again (resume) on any but the one it left."""

    async def place(params: StreamParams, resume: ResumeRecord | None, avoid: str | None,
                    stays: bool = False) -> RemoteSessionRef:
        if resume is None:
            return await _place(state, session_id, params, client_ip, None, None)
        # The lost worker's record of this id must go before it can be acquired again (release is idempotent).
        deadline = time.monotonic() + state.config.server.failover_deadline_s
        while True:
            try:
                await state.router.release(session_id)
                try:
                    return await _place(state, session_id, params, client_ip, resume, avoid)
                except ProtocolError:
                    if stays and avoid is not None:  # the call goes on where it was: so must its record
                        info = SessionInfo(session_id, params.model, params.language, client_ip)
                        await state.router.reinstate(info, avoid)
                    raise
            except RegistryError as error:
                if time.monotonic() >= deadline:
                    raise ProtocolError(ErrorCode.WORKER_LOST, f"the registry is unavailable: {error}") from error
                await asyncio.sleep(0.2)

    return place


async def _place(state: GatewayState, session_id: str, params: StreamParams, client_ip: str,
                 resume: ResumeRecord | None, avoid: str | None) -> RemoteSessionRef:
    opened: list[RemoteSessionRef] = []
    refusals: list[LinkRefused] = []
    server = state.config.server

    async def try_spawn(allocation: Allocation, timeout_s: float) -> SpawnOutcome:
        assert state.http is not None
        if allocation.worker_id == avoid:
            return SpawnOutcome.UNREACHABLE  # the worker this session just left: never back there
        result = await open_link(state.http, allocation.endpoint, state.config.node.link_token, session_id, params,
                                 client_ip, 8 * state.config.session.max_frame_bytes, timeout_s, resume,
                                 server.link_heartbeat_s)
        if isinstance(result, LinkRefused):
            refusals.append(result)
            log.warning("gateway.spawn_refused", worker_id=allocation.worker_id, code=str(result.code),
                        message=result.message)
            return SpawnOutcome.UNREACHABLE if result.unreachable else SpawnOutcome.REFUSED
        opened.append(result)
        return SpawnOutcome.SPAWNED

    info = SessionInfo(session_id, params.model, params.language, client_ip)
    router = state.router if resume is None else state.resume_router
    if await router.place(info, try_spawn) is None or not opened:
        unsupported = [r for r in refusals if r.code is ErrorCode.UNSUPPORTED_MODEL]
        if unsupported:
            raise ProtocolError(ErrorCode.UNSUPPORTED_MODEL, unsupported[0].message)
        raise ProtocolError(ErrorCode.NO_CAPACITY, "no worker has a free slot for this model; try again later")
    return opened[0]
