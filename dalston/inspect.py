"""`dalston tree` and `dalston workers`: what the operator sees of live nodes (DESIGN §4, §8).

Both read the address the operator knows: a gateway (or `dalston serve`), by default http://127.0.0.1:8000,
which answers for every node it can place sessions on; `--url` may also name one worker. With `--redis-url`
they read the registry and fetch each live worker themselves. `tree` draws each actor tree like `pstree`;
`workers` lists the workers in a table. `--json` prints the same data instead.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dalston.config import load_config
from dalston.supervisor.cluster.redis_registry import RedisRegistry
from dalston.supervisor.cluster.registry import RegistryUnavailable, WorkerRecord
from dalston.web.introspection import (
    WorkerTree,
    cluster_trees,
    get_json,
    http_base,
    link_headers,
    worker_json,
)

DEFAULT_URL = "http://127.0.0.1:8000"
STATUS_STYLES = {"running": "green", "starting": "yellow", "stopping": "yellow", "stopped": "red"}

__all__ = ["DEFAULT_URL", "WorkerTree", "http_base", "show_trees", "show_workers"]


class Unreadable(Exception):
    """The address answered nothing usable; the message says why, for the operator."""


def open_registry(redis_url: str) -> RedisRegistry:
    """The registry the workers use: key prefix from the configuration (`DALSTON_REGISTRY_KEY_PREFIX`)."""
    return RedisRegistry.from_url(redis_url, prefix=load_config().registry.key_prefix)


async def list_workers(redis_url: str) -> list[WorkerRecord]:
    registry = open_registry(redis_url)
    try:
        return sorted(await registry.list_workers(), key=lambda w: w.worker_id)
    finally:
        await registry.close()


def _headers(api_key: str | None) -> dict[str, str]:
    """A gateway wants the API key (when it has keys); a worker wants the link token (from the configuration)."""
    return {"X-API-Key": api_key} if api_key else link_headers(load_config().node.link_token)


async def _read(http: aiohttp.ClientSession, url: str, api_key: str | None) -> Any:
    try:
        return await get_json(http, url, _headers(api_key))
    except aiohttp.ClientResponseError as error:
        if error.status == 401:
            raise Unreadable(f"{url} needs an API key (--api-key or DALSTON_API_KEY)") from error
        raise Unreadable(f"{url} answered {error.status} {error.message}") from error
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise Unreadable(f"cannot read {url}: {type(error).__name__}: {error}".rstrip(": ")) from error


async def trees_at(http: aiohttp.ClientSession, url: str, api_key: str | None = None) -> list[WorkerTree]:
    """The trees a gateway serves, or the one tree of a worker, at `url`."""
    base = url.rstrip("/")
    try:
        data = await _read(http, f"{base}/v1/tree", api_key)
    except Unreadable as error:
        return [WorkerTree(base, error=str(error))]
    if isinstance(data, dict) and isinstance(data.get("trees"), list):
        return [WorkerTree.from_json(t) for t in data["trees"]]
    return [WorkerTree(base, worker=data.get("worker"), tree=data.get("tree"))]


async def show_trees(url: str | None, redis_url: str | None, as_json: bool, api_key: str | None = None) -> int:
    """Print the live trees behind `url` (a gateway or a worker; default the local gateway), or of every live
    worker in the registry at `redis_url`."""
    async with aiohttp.ClientSession() as http:
        if redis_url is None:
            trees = await trees_at(http, url or DEFAULT_URL, api_key)
        else:
            try:
                workers = await list_workers(redis_url)
            except RegistryUnavailable as error:
                print(f"dalston: cannot read the registry at {redis_url}: {error}", file=sys.stderr)
                return 1
            trees = await cluster_trees(http, workers, link_headers(load_config().node.link_token))
    if as_json:
        print(json.dumps([t.to_json() for t in trees], indent=2))
    else:
        _print_trees(trees)
    return 1 if any(t.error for t in trees) else 0


async def workers_at(url: str, api_key: str | None = None) -> list[dict[str, Any]]:
    """A gateway's `/v1/workers`; a worker (which has none) answers for itself from `/healthz`."""
    base = url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        try:
            return list((await _read(http, f"{base}/v1/workers", api_key))["workers"])
        except Unreadable as error:
            if "answered 404" not in str(error):
                raise
            health = await _read(http, f"{base}/healthz", api_key)
    if "worker_id" not in health:
        raise Unreadable(f"{base} is neither a Dalston gateway nor a worker")
    return [{**health, "endpoint": base, "alive": True, "last_heartbeat": None, "started_at": None}]


async def show_workers(redis_url: str | None = None, as_json: bool = False, url: str | None = None,
                       api_key: str | None = None) -> int:
    """Print the workers: status, capacity, active sessions, models, heartbeat age."""
    try:
        if redis_url is not None:
            now = time.time()
            rows = [worker_json(w, now) for w in await list_workers(redis_url)]
        else:
            rows = await workers_at(url or DEFAULT_URL, api_key)
    except RegistryUnavailable as error:
        print(f"dalston: cannot read the registry at {redis_url}: {error}", file=sys.stderr)
        return 1
    except Unreadable as error:
        print(f"dalston: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _console().print(workers_table(rows))
    return 0


def workers_table(rows: list[dict[str, Any]]) -> Table:
    """Rows as `worker_json` writes them (from the registry, or a gateway's `/v1/workers`)."""
    now = time.time()
    table = Table(title=f"{len(rows)} worker(s)")
    for column in ("worker", "endpoint", "status", "alive", "sessions", "models", "heartbeat", "up"):
        table.add_column(column, justify="right" if column in ("sessions", "heartbeat", "up") else "left")
    for w in rows:
        status = str(w.get("status"))
        status_style = "green" if status == "ready" else "yellow" if status == "draining" else "red"
        age_s, started_at = w.get("heartbeat_age_s"), w.get("started_at")
        table.add_row(
            str(w.get("worker_id")), str(w.get("endpoint")), Text(status, style=status_style),
            Text("yes", style="green") if w.get("alive") else Text("no", style="red"),
            f"{w.get('active_sessions')}/{w.get('capacity')}", ", ".join(w.get("models") or []),
            "-" if age_s is None else f"{age_s:.1f}s ago",
            "-" if started_at is None else _duration(now - float(started_at)),
        )
    return table


# -- drawing trees --------------------------------------------------------------------------------------------


def _console() -> Console:
    # Piped output is not cut to 80 columns: a tree line is easier to grep whole.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _print_trees(trees: list[WorkerTree]) -> None:
    console = _console()
    if not trees:
        console.print("no live workers")
    for worker_tree in trees:
        console.print(render_worker(worker_tree))


def render_worker(worker_tree: WorkerTree) -> Tree | Text:
    heading = Text(f"{'worker ' if worker_tree.worker else ''}{_worker_title(worker_tree)}", style="bold")
    if worker_tree.error is not None:
        return heading.append(f"  unreachable: {worker_tree.error}", style="red")
    if worker_tree.tree is None:
        return heading.append("  not running", style="yellow")
    root = Tree(heading)
    _add_actor(root, worker_tree.tree)
    return root


def _worker_title(worker_tree: WorkerTree) -> str:
    info = worker_tree.worker or {}
    if not info:
        return worker_tree.url
    models = ",".join(info.get("models", []))
    return (f"{info.get('worker_id')} ({worker_tree.url}) {info.get('status')}"
            f" capacity={info.get('capacity')} models={models}")


def _add_actor(parent: Tree, node: dict[str, Any]) -> None:
    branch = parent.add(actor_label(node))
    for child in node.get("children", []):
        _add_actor(branch, child)


def actor_label(node: dict[str, Any]) -> Text:
    """One line per actor: id, kind and class, status, restarts, uptime, mailbox, and what the actor adds."""
    status = str(node.get("status", "?"))
    label = Text(str(node.get("id")), style="bold")
    label.append(f" [{node.get('kind')} {node.get('actor')}]".replace(" ]", "]"), style="dim")
    label.append(f" {status}", style=STATUS_STYLES.get(status, ""))
    if status == "stopped" and not node.get("actor"):
        return label
    label.append(f" restarts={node.get('restarts')} up={_duration(float(node.get('uptime_s', 0.0)))}"
                 f" mailbox={node.get('mailbox_depth')}/{node.get('mailbox_bound')}")
    details = _details(str(node.get("actor")), node.get("extra") or {}, float(node.get("uptime_s", 0.0)))
    if details:
        label.append(f"  {details}", style="cyan")
    return label


def _details(actor: str, extra: dict[str, Any], uptime_s: float) -> str:
    if actor == "SessionActor":
        speech = " in speech" if extra.get("in_speech") else ""
        return (f"model={extra.get('model')} age={_duration(uptime_s)} audio={extra.get('audio_s')}s"
                f" finals_pending={extra.get('finals_pending')}{speech}")
    if actor == "TranscriberActor":
        decodes = extra.get("decodes") or {}
        mean_s = extra.get("mean_decode_s")
        return (f"model={extra.get('model')} running={extra.get('running')}"
                f" queued={extra.get('finals_queued')} final/{extra.get('partials_queued')} partial"
                f" decodes={decodes.get('final', 0)} final/{decodes.get('partial', 0)} partial"
                + (f" mean_decode={mean_s}s" if mean_s is not None else ""))
    if "strategy" in extra:
        bound = extra.get("max_children")
        children = f" children={extra.get('active_children')}" + (f"/{bound}" if bound else "")
        return f"{extra['strategy']}{children}"
    return ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
