"""Trees and workers from the address clients use: `dalston tree --url <gateway>` and `dalston workers --url
<gateway>` against real `dalston serve` / `gateway` + `worker` processes (real Redis, real tiny.en), and the
API key guarding those routes (an in-process gateway over a worker with a fake decoder)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from cluster_fixtures import DalstonProcess, ProcessGroup, load_clip, next_event
from test_metrics import running_worker

from dalston.config import load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.web.client import StreamClient
from dalston.web.gateway import create_gateway_app
from dalston.web.server import start_site

REPO = Path(__file__).resolve().parent.parent


def dalston(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALSTON_")}
    return subprocess.run([sys.executable, "-m", "dalston.cli", "--log-level", "warning", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def actors(node: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    if node is None:
        return
    yield node
    for child in node["children"]:
        yield from actors(child)


@contextlib.asynccontextmanager
async def live_session(process: DalstonProcess) -> AsyncIterator[str]:
    """A session on `process` that has heard some speech and stays open; yields its id."""
    async with StreamClient(process.stream_url) as stream:
        begin = await next_event(stream)
        assert begin is not None and begin["type"] == "session.begin"
        await stream.send_pcm(load_clip("0880").samples[:16000], speed=0, end=False)
        yield begin["session_id"]


async def tree_shows_session(process: DalstonProcess, session_id: str) -> None:
    done = await asyncio.to_thread(dalston, "tree", "--url", process.http_url, "--json")
    assert done.returncode == 0, done.stderr
    [answer] = json.loads(done.stdout)
    assert answer["error"] is None and answer["worker"]["status"] == "ready"
    sessions = [a for a in actors(answer["tree"]) if a["actor"] == "SessionActor"]
    assert [s["extra"]["session_id"] for s in sessions] == [session_id]
    assert sessions[0]["status"] == "running" and sessions[0]["extra"]["model"] == "fast"
    drawn = await asyncio.to_thread(dalston, "tree", "--url", process.http_url)
    assert drawn.returncode == 0 and session_id in drawn.stdout and "SessionActor" in drawn.stdout


@pytest.mark.slow
async def test_dalston_tree_against_the_address_serve_printed_shows_the_live_session(
    dalston_processes: ProcessGroup,
) -> None:
    serve = dalston_processes.start_serve()
    await dalston_processes.wait_ready(serve)
    async with live_session(serve) as session_id:
        await tree_shows_session(serve, session_id)
        done = await asyncio.to_thread(dalston, "workers", "--url", serve.http_url, "--json")
    assert done.returncode == 0, done.stderr
    [worker] = json.loads(done.stdout)
    assert worker["status"] == "ready" and worker["alive"] and worker["models"] == ["fast"]


@pytest.mark.slow
async def test_dalston_tree_against_a_cluster_gateway_shows_the_session_on_its_worker(
    dalston_processes: ProcessGroup,
) -> None:
    gateway, worker = dalston_processes.start_gateway(), dalston_processes.start_worker("w-trees", capacity=2)
    await dalston_processes.wait_ready(worker, gateway)
    async with live_session(gateway) as session_id:
        await tree_shows_session(gateway, session_id)
        done = await asyncio.to_thread(dalston, "workers", "--url", gateway.http_url)
    assert done.returncode == 0, done.stderr
    assert "w-trees" in done.stdout and "1/2" in done.stdout, done.stdout  # one session of two slots


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with structlog.testing.capture_logs():
        yield


async def test_with_api_keys_the_gateway_shows_trees_and_workers_only_to_a_key_holder() -> None:
    registry = MemoryRegistry()
    config = load_config(environ={}).replace("server", api_keys=("k-ops",))
    async with running_worker(registry, worker_id="w-keys"):
        runner, port = await start_site(create_gateway_app(config, registry), "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:
                for path in ("/v1/tree", "/v1/workers", "/v1/ops/snapshot"):
                    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 401, path
                    async with http.get(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": "wrong"}) as response:
                        assert response.status == 401, path
                async with http.get(f"http://127.0.0.1:{port}/v1/tree?api_key=k-ops") as response:
                    assert response.status == 200
                    [tree] = (await response.json())["trees"]
            assert tree["worker"]["worker_id"] == "w-keys" and tree["error"] is None and tree["tree"]["children"]
            refused = await asyncio.to_thread(dalston, "tree", "--url", f"http://127.0.0.1:{port}")
            allowed = await asyncio.to_thread(dalston, "workers", "--url", f"http://127.0.0.1:{port}",
                                              "--api-key", "k-ops", "--json")
        finally:
            await runner.cleanup()
    assert refused.returncode == 1 and "needs an API key" in refused.stdout + refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert [w["worker_id"] for w in json.loads(allowed.stdout)] == ["w-keys"]


def test_dalston_tree_with_no_address_asks_the_local_gateway_on_port_8000() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("something listens on 127.0.0.1:8000 here")
    done = dalston("tree", "--json")
    assert done.returncode == 1  # nothing there: said, not a usage error
    [answer] = json.loads(done.stdout)
    assert answer["url"] == "http://127.0.0.1:8000" and "cannot read http://127.0.0.1:8000" in answer["error"]
