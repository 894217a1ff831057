"""`dalston tree` and `dalston workers` against a real worker app on loopback and a real redis-server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from test_metrics import open_session, running_worker

from dalston import cli, commands
from dalston.inspect import http_base, show_trees, show_workers
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import WorkerInfo

if TYPE_CHECKING:
    from redis_server import RedisServer



@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """The worker runs in this process: keep its log lines out of the command output under test."""
    with structlog.testing.capture_logs():
        yield


def find(node: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    if node["id"] == node_id:
        return node
    for child in node["children"]:
        found = find(child, node_id)
        if found is not None:
            return found
    return None


async def test_tree_shows_an_open_session_under_the_sessions_supervisor(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_worker(MemoryRegistry()) as (node, base), open_session(node, "sess_tree"):
        assert await show_trees(url=base, redis_url=None, as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    sessions = next(i for i, line in enumerate(lines) if "sessions [supervisor" in line)
    session = next(i for i, line in enumerate(lines) if "sess_tree" in line)
    assert session > sessions
    assert lines[session].index("sess_tree") > lines[sessions].index("sessions")  # drawn one level deeper
    assert "SessionActor" in lines[session] and "model=fast" in lines[session]
    assert "node:w1" in "\n".join(lines[:sessions]) and "transcriber:fast" in "\n".join(lines[:sessions])


async def test_tree_json_from_the_command_line_parses_and_holds_the_session(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running_worker(MemoryRegistry()) as (node, base), open_session(node, "sess_json"):
        args = cli._parser().parse_args(["tree", "--url", base, "--json"])
        assert await commands.tree(args) == 0
    [answer] = json.loads(capsys.readouterr().out)
    assert answer["error"] is None and answer["worker"]["worker_id"] == "w1"
    sessions = find(answer["tree"], "sessions")
    assert sessions is not None
    [session] = sessions["children"]
    assert session["id"] == "sess_json" and session["actor"] == "SessionActor"
    assert session["extra"]["model"] == "fast" and session["status"] == "running"


async def test_tree_of_an_unreachable_worker_says_so_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert await show_trees(url="http://127.0.0.1:1", redis_url=None, as_json=False) == 1
    assert "unreachable" in capsys.readouterr().out


def test_the_http_base_of_a_link_endpoint_keeps_host_and_port() -> None:
    assert http_base("ws://10.0.0.5:8100") == "http://10.0.0.5:8100"
    assert http_base("wss://worker.example:443/v1/link") == "https://worker.example:443"


@pytest.fixture
async def redis_registry(redis_server: RedisServer, redis_prefix: str,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisRegistry]:
    monkeypatch.setenv("DALSTON_REGISTRY_KEY_PREFIX", redis_prefix)  # what the commands read the prefix from
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    yield registry
    await registry.close()


async def test_workers_lists_the_registered_workers(redis_server: RedisServer, redis_registry: RedisRegistry,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    await redis_registry.register(WorkerInfo("ghost", "ws://127.0.0.1:1", 3, ("accurate",)), 30.0)
    async with running_worker(redis_registry, worker_id="w-redis"):
        assert await show_workers(redis_server.url, as_json=True) == 0
        listed = {w["worker_id"]: w for w in json.loads(capsys.readouterr().out)}
        assert await show_workers(redis_server.url, as_json=False) == 0
        table = capsys.readouterr().out
    assert set(listed) == {"ghost", "w-redis"}
    assert listed["w-redis"]["status"] == "ready" and listed["w-redis"]["models"] == ["fast"]
    assert listed["ghost"]["capacity"] == 3 and listed["ghost"]["active_sessions"] == 0
    assert "w-redis" in table and "ghost" in table


async def test_tree_from_the_registry_fetches_every_live_worker(
    redis_server: RedisServer, redis_registry: RedisRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    await redis_registry.register(WorkerInfo("ghost", "ws://127.0.0.1:1", 3, ("fast",)), 30.0)
    async with running_worker(redis_registry, worker_id="w-tree") as (node, base), open_session(node, "sess_r"):
        code = await show_trees(url=None, redis_url=redis_server.url, as_json=True)
    answers = {a["url"]: a for a in json.loads(capsys.readouterr().out)}
    assert code == 1  # the ghost cannot be reached
    assert answers["http://127.0.0.1:1"]["error"]
    assert find(answers[base]["tree"], "sess_r") is not None
