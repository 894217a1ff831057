"""`dalston tree` and `dalston workers`: what the operator sees of live nodes (DESIGN §4, §8).

`tree` reads a worker's `GET /v1/tree` (one `--url`, or every worker in the registry) and draws each actor
tree like `pstree`; `workers` lists the registry's workers in a table. `--json` prints the same data instead.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dalston.config import load_config
from dalston.supervisor.redis_registry import RedisRegistry
from dalston.supervisor.registry import RegistryUnavailable, WorkerRecord

FETCH_TIMEOUT_S = 5.0
STATUS_STYLES = {"running": "green", "starting": "yellow", "stopping": "yellow", "stopped": "red"}


@dataclass(frozen=True)
class WorkerTree:
    """One worker's answer to `/v1/tree`, or why there is none."""

    url: str  # the worker's HTTP base
    worker: dict[str, Any] | None = None
    tree: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def http_base(endpoint: str) -> str:
    """The HTTP base of a worker whose link endpoint is `ws://host:port[/path]`."""
    parts = urlsplit(endpoint)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


async def fetch_tree(http: aiohttp.ClientSession, url: str) -> WorkerTree:
    base = url.rstrip("/")
    try:
        async with http.get(f"{base}/v1/tree", timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
            response.raise_for_status()
            data = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return WorkerTree(base, error=f"{type(error).__name__}: {error}".rstrip(": "))
    return WorkerTree(base, worker=data.get("worker"), tree=data.get("tree"))


def open_registry(redis_url: str) -> RedisRegistry:
    """The registry the workers use: key prefix from the configuration (`DALSTON_REGISTRY_KEY_PREFIX`)."""
    return RedisRegistry.from_url(redis_url, prefix=load_config().registry.key_prefix)


async def list_workers(redis_url: str) -> list[WorkerRecord]:
    registry = open_registry(redis_url)
    try:
        return sorted(await registry.list_workers(), key=lambda w: w.worker_id)
    finally:
        await registry.close()


async def show_trees(url: str | None, redis_url: str | None, as_json: bool) -> int:
    """Print the live tree of the worker at `url`, or of every live worker in the registry at `redis_url`."""
    if url is not None:
        urls = [url]
    else:
        assert redis_url is not None, "give url or redis_url"
        try:
            urls = [http_base(w.endpoint) for w in await list_workers(redis_url) if w.alive]
        except RegistryUnavailable as error:
            print(f"dalston: cannot read the registry at {redis_url}: {error}", file=sys.stderr)
            return 1
    async with aiohttp.ClientSession() as http:
        trees = [await fetch_tree(http, u) for u in urls]
    if as_json:
        print(json.dumps([t.to_json() for t in trees], indent=2))
    else:
        _print_trees(trees)
    return 1 if any(t.error for t in trees) else 0


async def show_workers(redis_url: str, as_json: bool) -> int:
    """Print the registry's workers: status, capacity, active sessions, models, heartbeat age."""
    try:
        workers = await list_workers(redis_url)
    except RegistryUnavailable as error:
        print(f"dalston: cannot read the registry at {redis_url}: {error}", file=sys.stderr)
        return 1
    now = time.time()
    if as_json:
        print(json.dumps([worker_json(w, now) for w in workers], indent=2))
    else:
        _console().print(workers_table(workers, now))
    return 0


def worker_json(worker: WorkerRecord, now: float) -> dict[str, Any]:
    data = dataclasses.asdict(worker)
    data.update(status=str(worker.status), models=list(worker.models), free_slots=worker.free_slots,
                heartbeat_age_s=round(now - worker.last_heartbeat, 1))
    return data


def workers_table(workers: list[WorkerRecord], now: float) -> Table:
    table = Table(title=f"{len(workers)} worker(s)")
    for column in ("worker", "endpoint", "status", "alive", "sessions", "models", "heartbeat", "up"):
        table.add_column(column, justify="right" if column in ("sessions", "heartbeat", "up") else "left")
    for w in workers:
        status_style = "green" if w.status == "ready" else "yellow" if w.status == "draining" else "red"
        table.add_row(
            w.worker_id, w.endpoint, Text(str(w.status), style=status_style),
            Text("yes", style="green") if w.alive else Text("no", style="red"),
            f"{w.active_sessions}/{w.capacity}", ", ".join(w.models),
            f"{now - w.last_heartbeat:.1f}s ago", _duration(now - w.started_at),
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
    heading = Text(f"worker {_worker_title(worker_tree)}", style="bold")
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
