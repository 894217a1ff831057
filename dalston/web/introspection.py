"""Reading live nodes over HTTP: their supervision trees and metrics, and the registry's worker records.

Used by the gateway (which shows every node it can place sessions on, fetching from each node with the link
token) and by `dalston tree` / `dalston workers` (which read a gateway or a single worker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from dalston.supervisor.cluster.registry import NodeRegistry, WorkerRecord
from dalston.web.link_protocol import TOKEN_HEADER, bearer

FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerTree:
    """One worker's answer to `/v1/tree`, or why there is none."""

    url: str  # the worker's HTTP base
    worker: dict[str, Any] | None = None
    tree: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerTree:
        return cls(str(data.get("url", "")), data.get("worker"), data.get("tree"), data.get("error"))


def http_base(endpoint: str) -> str:
    """The HTTP base of a worker whose link endpoint is `ws://host:port[/path]`."""
    parts = urlsplit(endpoint)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def link_headers(token: str) -> dict[str, str]:
    """What a gateway sends to a worker's introspection endpoints: the link's shared token."""
    return {TOKEN_HEADER: bearer(token)}


def worker_json(worker: WorkerRecord, now: float) -> dict[str, Any]:
    data = dataclasses.asdict(worker)
    data.update(status=str(worker.status), models=list(worker.models), free_slots=worker.free_slots,
                heartbeat_age_s=round(now - worker.last_heartbeat, 1))
    return data


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".rstrip(": ")


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    """GET `url` as JSON; raises aiohttp.ClientError (HTTP errors included), TimeoutError or ValueError."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with http.get(url, headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        return await response.json()


async def fetch_worker_tree(http: aiohttp.ClientSession, url: str,
                            headers: dict[str, str] | None = None) -> WorkerTree:
    base = url.rstrip("/")
    try:
        data = await get_json(http, f"{base}/v1/tree", headers)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return WorkerTree(base, error=_error_text(error))
    return WorkerTree(base, worker=data.get("worker"), tree=data.get("tree"))


async def fetch_metrics(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> str | None:
    """A node's Prometheus text, or None if it cannot be read now."""
    try:
        async with http.get(f"{url.rstrip('/')}/metrics", headers=headers,
                            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
            response.raise_for_status()
            return await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def live_workers(registry: NodeRegistry) -> list[WorkerRecord]:
    return sorted(await registry.list_workers(), key=lambda w: w.worker_id)


async def cluster_trees(http: aiohttp.ClientSession, workers: list[WorkerRecord],
                        headers: dict[str, str]) -> list[WorkerTree]:
    """The tree of every live worker, fetched at once (an unreachable one is reported, not skipped);
    `headers` carry the link token (`link_headers`)."""
    live = [w for w in workers if w.alive]
    return list(await asyncio.gather(*(fetch_worker_tree(http, http_base(w.endpoint), headers) for w in live)))


def workers_answer(workers: list[WorkerRecord]) -> dict[str, Any]:
    now = time.time()
    return {"workers": [worker_json(w, now) for w in workers]}
