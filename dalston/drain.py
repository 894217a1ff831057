"""`dalston drain WORKER_ID --redis-url URL`: drain one worker without stopping it (a rolling restart, by hand).

The worker is marked `draining` in the registry (no gateway places a new session there) and told over its own
HTTP endpoint (found in the registry, with the link token) to hand its running sessions back at their next
pause: each moves to another worker and its client sees `session.resumed`. The process stays up, draining, until
the operator stops it; `dalston workers` shows when it is empty.
"""

from __future__ import annotations

import sys

import aiohttp

from dalston.config import load_config
from dalston.inspect import open_registry
from dalston.supervisor.cluster.registry import RegistryUnavailable, WorkerStatus
from dalston.web.introspection import link_headers

DRAIN_PATH = "/v1/drain"  # the worker's endpoint (dalston.web.worker)
DRAIN_REQUEST_TIMEOUT_S = 10.0


def http_url(endpoint: str) -> str:
    """The worker's HTTP base URL from the ws:// (or wss://) link endpoint it registered."""
    if endpoint.startswith("ws"):
        endpoint = "http" + endpoint[2:]
    return endpoint.rstrip("/")


async def drain_worker(worker_id: str, redis_url: str, link_token: str | None = None) -> int:
    token = link_token if link_token is not None else load_config().node.link_token
    registry = open_registry(redis_url)
    try:
        workers = {w.worker_id: w for w in await registry.list_workers()}
        worker = workers.get(worker_id)
        if worker is None:
            print(f"dalston: no worker {worker_id!r} in the registry (known: {sorted(workers)})", file=sys.stderr)
            return 1
        await registry.set_status(worker_id, WorkerStatus.DRAINING)
    except RegistryUnavailable as error:
        print(f"dalston: cannot reach the registry at {redis_url}: {error}", file=sys.stderr)
        return 1
    finally:
        await registry.close()
    try:
        timeout = aiohttp.ClientTimeout(total=DRAIN_REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.post(http_url(worker.endpoint) + DRAIN_PATH, headers=link_headers(token)) as response:
            if response.status != 200:
                print(f"dalston: {worker_id} is marked draining (no new sessions), but it refused the drain: "
                      f"HTTP {response.status} {await response.text()}", file=sys.stderr)
                return 1
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError) as error:
        print(f"dalston: {worker_id} is marked draining (no new sessions), but could not be told to hand its "
              f"sessions back: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"{worker_id}: draining; {body.get('active_sessions', '?')} session(s) moving to other workers")
    return 0
