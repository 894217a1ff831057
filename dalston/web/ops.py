"""What the gateway shows operators: every node's live tree and the registry's workers, from the address clients
use (`/v1/tree`, `/v1/workers`), and the live operations page (`/ops`, fed by `/v1/ops/events`).

The gateway reads the nodes it can place sessions on through the registry (in `dalston serve` that is its own
node) and fetches each node's tree and metrics with the link token. When API keys are configured these routes
need a key like the stream endpoint does (header, or `?api_key=` for the page and its event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from dalston.supervisor.cluster.registry import NodeRegistry, RegistryUnavailable
from dalston.web.access_log import POLLER_HEADER
from dalston.web.auth import ApiKeys
from dalston.web.introspection import (
    WorkerTree,
    cluster_trees,
    fetch_metrics,
    http_base,
    link_headers,
    live_workers,
    workers_answer,
)
from dalston.web.ops_view import OpsSnapshot, build_snapshot
from dalston.web.page import STATIC_DIR

SNAPSHOT_INTERVAL_S = 1.0


@dataclass
class OpsSources:
    """Where the gateway's operator views read from."""

    registry: NodeRegistry
    keys: ApiKeys
    link_token: str
    interval_s: float = SNAPSHOT_INTERVAL_S
    http: aiohttp.ClientSession | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown: open feeds end at once
    _latest: OpsSnapshot | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the ops routes' HTTP client lives with the app"
        return self.http

    async def trees(self) -> list[WorkerTree]:
        return await cluster_trees(self.client(), await live_workers(self.registry), link_headers(self.link_token))

    async def snapshot(self) -> OpsSnapshot:
        """The latest view of the cluster, shared by every open page (refreshed at most once per interval)."""
        async with self._lock:
            latest = self._latest
            if latest is None or time.monotonic() - latest.taken_at >= self.interval_s:
                self._latest = await self._take(latest)
            return self._latest

    async def _take(self, previous: OpsSnapshot | None) -> OpsSnapshot:
        workers = await live_workers(self.registry)
        # Marked as the feed's polling, which workers log at debug level (it comes every second).
        http, headers = self.client(), {**link_headers(self.link_token), POLLER_HEADER: "ops"}
        live = [w for w in workers if w.alive]
        trees, metrics = await asyncio.gather(
            cluster_trees(http, workers, headers),
            asyncio.gather(*(fetch_metrics(http, http_base(w.endpoint), headers) for w in live)),
        )
        texts = {w.worker_id: text for w, text in zip(live, metrics, strict=True) if text is not None}
        return build_snapshot(workers, trees, texts, previous)


OPS_KEY = web.AppKey("ops", OpsSources)


def add_ops_routes(app: web.Application, sources: OpsSources) -> None:
    app[OPS_KEY] = sources
    app.router.add_get("/v1/tree", _guarded(tree_handler))
    app.router.add_get("/v1/workers", _guarded(workers_handler))
    app.router.add_get("/v1/ops/snapshot", _guarded(snapshot_handler))
    app.router.add_get("/v1/ops/events", _guarded(events_handler))
    app.router.add_get("/ops", ops_page_handler)
    app.cleanup_ctx.append(_http_client)
    app.on_shutdown.append(_end_feeds)


async def _end_feeds(app: web.Application) -> None:
    app[OPS_KEY].closing.set()


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    sources = app[OPS_KEY]
    sources.http = aiohttp.ClientSession()
    yield
    await sources.http.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """The API key when keys are configured; a registry that cannot be read is a 503 that says why."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        keys = request.app[OPS_KEY].keys
        if not keys.authorized(keys.key_of(request)):
            return web.json_response({"error": "unauthorized", "message": "a valid API key is required"},
                                     status=401)
        try:
            return await handler(request)
        except RegistryUnavailable as error:
            return web.json_response({"error": "registry_unavailable", "message": str(error)}, status=503)

    return guarded


async def tree_handler(request: web.Request) -> web.Response:
    trees = await request.app[OPS_KEY].trees()
    return web.json_response({"trees": [t.to_json() for t in trees]})


async def workers_handler(request: web.Request) -> web.Response:
    return web.json_response(workers_answer(await live_workers(request.app[OPS_KEY].registry)))


async def snapshot_handler(request: web.Request) -> web.Response:
    return web.json_response((await request.app[OPS_KEY].snapshot()).to_json())


async def events_handler(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one `snapshot` event per interval until the page goes away or the gateway stops."""
    sources = request.app[OPS_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        while not sources.closing.is_set():
            try:
                data: dict[str, Any] = (await sources.snapshot()).to_json()
            except RegistryUnavailable as error:
                data = {"error": "registry_unavailable", "message": str(error)}
            await response.write(f"event: snapshot\ndata: {json.dumps(data)}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sources.closing.wait(), sources.interval_s)
    return response


async def ops_page_handler(request: web.Request) -> web.FileResponse:
    # The page itself holds no data; its event stream checks the key.
    return web.FileResponse(STATIC_DIR / "ops.html", headers={"Cache-Control": "no-cache"})

