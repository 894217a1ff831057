"""Monitors: who hears that an actor stopped, each exactly once, and when.

Each actor keeps a `Monitors` with both sides: the monitors on it and the ones it holds on others, so that a
monitor disappears when either side dies. A `Down` to an actor is queued as an ordered signal (behind what
the dead actor sent earlier, ignoring the bound); a callback is called in isolation (one that raises is logged
and the others still run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from dalston.actors.exits import Down, ExitReason
from dalston.actors.mailbox import Envelope

if TYPE_CHECKING:
    from dalston.actors.runtime import ActorRef

log = structlog.get_logger(__name__)

Watcher = Callable[["ActorRef", ExitReason], None]


@dataclass(eq=False)
class Monitor:
    handle: int
    watched: ActorRef
    watcher: ActorRef | None  # an actor to send `Down` to, or
    callback: Watcher | None  # a function to call


@dataclass(eq=False)
class Monitors:
    on_me: dict[int, Monitor] = field(default_factory=dict)  # who watches this actor
    by_me: dict[int, Monitor] = field(default_factory=dict)  # what this actor watches


def add(entry: Monitor) -> None:
    """Register a monitor; on an actor that already stopped, deliver at once (a callback: soon, from the loop)."""
    watched, handle = entry.watched, entry.handle
    if entry.watcher is not None and entry.watcher.stopped:
        return  # a dead watcher hears nothing and keeps nothing alive
    watched._monitors.on_me[handle] = entry
    if entry.watcher is not None:
        entry.watcher._monitors.by_me[handle] = entry
    if watched.stopped:
        reason = watched._stopped.result()
        if entry.watcher is not None:
            notify(watched, handle, reason)
        else:
            asyncio.get_running_loop().call_soon(notify, watched, handle, reason)


def remove(watched: ActorRef, handle: int, *, flush: bool, caller: ActorRef | None) -> None:
    """Drop a monitor; with `flush`, withdraw its queued `Down` from its watcher (or else from `caller`)."""
    entry = watched._monitors.on_me.pop(handle, None)
    watcher = entry.watcher if entry is not None else caller
    if watcher is None:
        return
    watcher._monitors.by_me.pop(handle, None)
    if flush:
        watcher._mailbox.remove_signals(lambda m: isinstance(m, Down) and m.handle == handle)


def notify(watched: ActorRef, handle: int, reason: ExitReason) -> None:
    entry = watched._monitors.on_me.pop(handle, None)
    if entry is None:
        return  # demonitored meanwhile
    if entry.watcher is not None:
        entry.watcher._monitors.by_me.pop(handle, None)
        if not entry.watcher._mailbox.closed:
            entry.watcher._mailbox.put_signal(Envelope(Down(watched, reason, handle)))
        return
    assert entry.callback is not None
    try:
        entry.callback(watched, reason)
    except Exception:  # one watcher's bug must not keep the others from hearing about the death
        log.exception("actor.monitor_callback_failed", actor=watched.name)


def on_death(ref: ActorRef, reason: ExitReason) -> None:
    """`ref` has fully stopped: drop the monitors it held, then tell its watchers, each once."""
    for entry in list(ref._monitors.by_me.values()):
        entry.watched._monitors.on_me.pop(entry.handle, None)
    ref._monitors.by_me.clear()
    while ref._monitors.on_me:  # popped one at a time: a callback may demonitor another one
        notify(ref, next(iter(ref._monitors.on_me)), reason)
