"""Running the apps: a worker, a gateway, or both in one process with an in-process registry.

Each runner starts its aiohttp site(s), waits for SIGINT/SIGTERM, then stops cleanly: a worker drains (no new
sessions, running ones finish within the drain bound) and deregisters; a gateway closes its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import ssl
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from dalston.actors.speech.vad_backends import preload_vad
from dalston.config import Config, NodeConfig
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.node import WorkerNode
from dalston.supervisor.cluster.reaper import Reaper
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import NodeRegistry
from dalston.web.access_log import access_log
from dalston.web.gateway import create_gateway_app, drain_gateway
from dalston.web.worker import create_worker_app

log = structlog.get_logger(__name__)


class UnsafeBind(ValueError):
    """Listening beyond loopback without API keys."""


class NodeFailed(Exception):
    """The node's root supervisor gave up: the process must exit non-zero so that its manager restarts it."""


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


def check_bind(config: Config) -> None:
    host = config.server.host
    if not config.server.api_keys and not _is_loopback(host):
        raise UnsafeBind(f"refusing to listen on {host} without API keys; set server.api_keys or use 127.0.0.1")


def check_worker_bind(config: Config) -> None:
    """A worker beyond loopback needs its own link token, and an address others can reach it at."""
    host = config.node.host
    if _is_loopback(host):
        return
    if config.node.link_token == NodeConfig.link_token:
        raise UnsafeBind(f"refusing to listen on {host} with the default link token; set node.link_token")
    if not config.node.advertise_url and host in ("0.0.0.0", "::", ""):
        raise UnsafeBind(f"listening on {host!r}, the worker needs node.advertise_url (the ws:// URL gateways use)")


def worker_endpoint(config: Config, port: int) -> str:
    """Where gateways reach this worker: `node.advertise_url`, else the bind address and the bound port."""
    scheme = "wss" if config.node.tls_cert_file else "ws"
    return config.node.advertise_url or f"{scheme}://{config.node.host}:{port}"


def open_registry(config: Config) -> NodeRegistry:
    if config.registry.redis_url:
        return RedisRegistry.from_url(config.registry.redis_url, prefix=config.registry.key_prefix,
                                      ended_session_ttl_s=config.registry.ended_session_ttl_s,
                                      lease_ttl_s=config.registry.lease_ttl_s)
    return MemoryRegistry(ended_session_ttl_s=config.registry.ended_session_ttl_s,
                          lease_ttl_s=config.registry.lease_ttl_s)


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """A TLS context for listening, when a certificate is configured."""
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file or None)
    return context


async def start_site(app: web.Application, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                     handshake_timeout_s: float = 10.0) -> tuple[web.AppRunner, int]:
    """Serve `app`; a connection that sends no request within `handshake_timeout_s` is closed (aiohttp's
    keep-alive timer starts with the connection), so idle sockets cannot pile up."""
    app.middlewares.append(access_log)  # our structlog line instead of aiohttp's (which would print the query)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None,
                           keepalive_timeout=handshake_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def wait_for_signal_or_failure(node: WorkerNode) -> None:
    """Until SIGINT/SIGTERM; raises `NodeFailed` if the node fails first."""
    signalled = asyncio.ensure_future(wait_for_signal())
    failed = asyncio.ensure_future(node.wait_failed())
    await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (signalled, failed):
        waiter.cancel()
    await asyncio.gather(signalled, failed, return_exceptions=True)
    if node.failure is not None:
        raise NodeFailed(f"worker {node.worker_id} failed: {node.failure}")


@contextlib.asynccontextmanager
async def running_worker(config: Config, registry: NodeRegistry) -> AsyncIterator[WorkerNode]:
    """A node and its link endpoint; drains on exit."""
    check_worker_bind(config)
    preload_vad(config.vad.backend)  # a missing VAD backend stops the node here, not its first session
    node = WorkerNode(config, registry, endpoint="")
    runner, port = await start_site(create_worker_app(node), config.node.host, config.node.port,
                                    tls=server_tls(config.node.tls_cert_file, config.node.tls_key_file),
                                    handshake_timeout_s=config.server.handshake_timeout_s)
    node.endpoint = worker_endpoint(config, port)  # known once the port is bound (port 0 picks one)
    try:
        await node.start()
        yield node
    finally:
        await node.drain()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_gateway(config: Config, registry: NodeRegistry) -> AsyncIterator[int]:
    check_bind(config)
    reaper = Reaper(registry, config.registry.reap_interval_s)
    reaper.start()
    app = create_gateway_app(config, registry)
    runner, port = await start_site(app, config.server.host, config.server.port,
                                    tls=server_tls(config.server.tls_cert_file, config.server.tls_key_file),
                                    handshake_timeout_s=config.server.handshake_timeout_s)
    log.info("gateway.listening", host=config.server.host, port=port)
    try:
        yield port
    finally:
        await drain_gateway(app, config.server.shutdown_timeout_s)
        await runner.cleanup()
        await reaper.stop()


async def serve(config: Config) -> None:
    """Everything in one process: gateway + one node + the in-process registry (no Redis)."""
    registry = open_registry(config)
    worker_config = config.replace("node", port=0)
    try:
        async with running_worker(worker_config, registry) as node, running_gateway(config, registry) as port:
            scheme = "wss" if config.server.tls_cert_file else "ws"
            print(f"dalston: listening on {scheme}://{config.server.host}:{port}/v1/audio/transcriptions/stream",
                  flush=True)
            print(f"dalston: worker node at {node.endpoint.replace('ws://', 'http://')} "
                  f"(dalston tree --url http://{config.server.host}:{port}; operations page at /ops)", flush=True)
            await wait_for_signal_or_failure(node)
            log.info("serve.stopping")
    finally:
        await registry.close()


async def run_worker(config: Config) -> None:
    registry = open_registry(config)
    try:
        async with running_worker(config, registry) as node:
            print(f"dalston: worker {node.worker_id} at {node.endpoint}", flush=True)
            await wait_for_signal_or_failure(node)
    finally:
        await registry.close()


async def run_gateway(config: Config) -> None:
    registry = open_registry(config)
    async with running_gateway(config, registry) as port:
        print(f"dalston: gateway on port {port}", flush=True)
        await wait_for_signal()
    await registry.close()
