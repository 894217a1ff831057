"""The actor base class: what a subclass writes (its hooks) and what it may call on itself."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dalston.actors.exits import NORMAL, ExitReason

if TYPE_CHECKING:
    from dalston.actors.runtime import ActorRef

DEFAULT_MAILBOX_SIZE = 256


@dataclass(frozen=True)
class ActorStatistics:
    name: str
    kind: str
    status: str  # starting | running | stopping | stopped
    mailbox_depth: int
    mailbox_bound: int
    messages_handled: int
    restarts: int
    uptime_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class Actor:
    """Subclass and override `receive`; `on_start` and `on_stop` are optional hooks."""

    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    ref: ActorRef

    async def on_start(self) -> None:
        """Runs before the first message; the actor reports ready once it returns."""

    async def receive(self, message: Any) -> Any:
        raise TypeError(f"{type(self).__name__} cannot handle {type(message).__name__}")

    async def on_stop(self, reason: ExitReason) -> None:
        """Runs once when the actor stops after a successful start, unless it is killed."""

    def statistics_extra(self) -> dict[str, Any]:
        """Actor-specific figures added to `ActorRef.statistics()`."""
        return {}

    def stop_self(self, reason: ExitReason = NORMAL) -> None:
        """Stop after the current message (the OTP `{stop, Reason}` return)."""
        self.ref._request_stop(reason)

    def start_task(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` in a task this actor owns: it is cancelled and awaited when the actor stops, however."""
        return self.ref._start_task(coro, name)
