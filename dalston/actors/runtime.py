"""The actor runtime: actors with bounded mailboxes, refs, tell/ask, monitors.

An actor handles its messages one at a time in its own asyncio task. Others hold only its `ActorRef`.
Semantics (DESIGN §3):
- `tell` is fire-and-forget and waits while the mailbox is full; `tell_nowait` raises `MailboxFull` instead.
- `ask` returns the reply or raises; an exception raised while handling an ask goes back to the asker and the
  actor lives on. An exception while handling a tell crashes the actor.
- When an actor stops, every ask still queued fails at once with `ActorDead`.
- `monitor` delivers `Down(ref, reason)` to the watcher when the actor stops, however it stops.
- `CancelledError` is never swallowed: cancelling an actor's task stops it (reason `killed`) and re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from dalston.actors.mailbox import Envelope, Mailbox, MailboxClosed

log = structlog.get_logger(__name__)

DEFAULT_MAILBOX_SIZE = 256


@dataclass(frozen=True)
class ExitReason:
    """Why an actor stopped. `normal` and `shutdown` are clean exits; anything else is abnormal (OTP)."""

    kind: str
    detail: str = ""
    error: BaseException | None = field(default=None, compare=False)

    @property
    def abnormal(self) -> bool:
        return self.kind not in ("normal", "shutdown")

    @classmethod
    def crashed(cls, error: BaseException) -> ExitReason:
        return cls("error", f"{type(error).__name__}: {error}", error)

    def __str__(self) -> str:
        return f"{self.kind}({self.detail})" if self.detail else self.kind


NORMAL = ExitReason("normal")
SHUTDOWN = ExitReason("shutdown")
KILLED = ExitReason("killed")


class ActorDead(Exception):
    """The actor is not running: a message to it cannot be delivered, or a queued ask was never handled."""

    def __init__(self, name: str, reason: ExitReason | None = None) -> None:
        super().__init__(f"actor {name} is dead" + (f" ({reason})" if reason else ""))
        self.name = name
        self.reason = reason


class StartFailed(Exception):
    """`on_start` raised: the actor never became ready."""


@dataclass(frozen=True)
class Down:
    """Delivered to a monitoring actor when the watched actor stops."""

    ref: ActorRef
    reason: ExitReason


@dataclass(frozen=True)
class _StopSignal:
    reason: ExitReason


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
        """Runs once when the actor stops, whatever the reason."""

    def statistics_extra(self) -> dict[str, Any]:
        """Actor-specific figures added to `ActorRef.statistics()`."""
        return {}

    def stop_self(self, reason: ExitReason = NORMAL) -> None:
        """Stop after the current message (the OTP `{stop, Reason}` return)."""
        self.ref._request_stop(reason)


_ids = itertools.count(1)
Watcher = Callable[["ActorRef", ExitReason], None]


class ActorRef:
    """The handle to a running actor. Create with `spawn`."""

    def __init__(self, actor: Actor, name: str, mailbox_size: int, restarts: int) -> None:
        self.name = name
        self.kind = type(actor).__name__
        self.id = next(_ids)
        self._actor = actor
        self._mailbox = Mailbox(mailbox_size)
        self._restarts = restarts
        self._status = "starting"
        self._started_at = time.monotonic()
        self._handled = 0
        self._reason: ExitReason | None = None
        self._stop_requested: ExitReason | None = None
        self._watchers: dict[int, Watcher] = {}
        self._stopped = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        actor.ref = self

    def __repr__(self) -> str:
        return f"<ActorRef {self.kind} {self.name} {self._status}>"

    @property
    def alive(self) -> bool:
        return self._reason is None

    @property
    def exit_reason(self) -> ExitReason | None:
        return self._reason

    # -- sending ------------------------------------------------------------------------------------------

    async def tell(self, message: Any) -> None:
        """Queue a message, waiting while the mailbox is full (backpressure)."""
        try:
            await self._mailbox.put(Envelope(message))
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None

    def tell_nowait(self, message: Any) -> None:
        """Queue a message or raise `MailboxFull` at once."""
        try:
            self._mailbox.put_nowait(Envelope(message))
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None

    async def ask(self, message: Any, timeout: float) -> Any:
        """Send a message and wait for the reply; the timeout covers queueing and handling."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._mailbox.put(Envelope(message, reply))
                return await reply
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None
        finally:
            if not reply.done():
                reply.cancel()  # a timed-out ask is skipped, not handled for nobody

    def send_system(self, message: Any) -> None:
        """Deliver a message ahead of the queue, ignoring the bound (monitors, link signals)."""
        try:
            self._mailbox.put_system(Envelope(message))
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def monitor(self, watcher: ActorRef | Watcher) -> int:
        """Deliver `Down(self, reason)` to `watcher` (an actor, or a callback) when this actor stops.

        Returns a handle for `demonitor`. Monitoring an actor that already stopped delivers at once.
        """
        callback = _deliver_down_to(watcher) if isinstance(watcher, ActorRef) else watcher
        handle = next(_ids)
        if self._reason is not None:
            asyncio.get_running_loop().call_soon(callback, self, self._reason)
        else:
            self._watchers[handle] = callback
        return handle

    def demonitor(self, handle: int) -> None:
        self._watchers.pop(handle, None)

    async def stop(self, reason: ExitReason = SHUTDOWN, timeout_s: float = 5.0) -> ExitReason:
        """Ask the actor to stop after its current message; cancel it if it takes over `timeout_s`."""
        if self._stopped.done():
            return self._stopped.result()
        # An actor already stopping (its on_stop running) is waited for too, under the same timeout.
        self._request_stop(reason)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self._stopped)
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> ExitReason:
        """Cancel the actor's task at once (OTP `brutal_kill`)."""
        if self._task is not None and not self._task.done():
            self._stop_requested = KILLED
            self._task.cancel()
        return await asyncio.shield(self._stopped)

    async def wait_stopped(self) -> ExitReason:
        return await asyncio.shield(self._stopped)

    def _request_stop(self, reason: ExitReason) -> None:
        if self._stop_requested is None and not self._mailbox.closed:
            self._stop_requested = reason
            self._mailbox.put_system(Envelope(_StopSignal(reason)))

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            name=self.name,
            kind=self.kind,
            status=self._status,
            mailbox_depth=len(self._mailbox),
            mailbox_bound=self._mailbox.bound,
            messages_handled=self._handled,
            restarts=self._restarts,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            extra=self._actor.statistics_extra(),
        )

    # -- the actor's task ---------------------------------------------------------------------------------

    async def _run(self, ready: asyncio.Future[None]) -> None:
        reason = NORMAL
        try:
            try:
                await self._actor.on_start()
            except Exception as error:
                ready.set_exception(StartFailed(f"{self.name}: {type(error).__name__}: {error}"))
                reason = ExitReason.crashed(error)
                return
            self._status = "running"
            ready.set_result(None)
            reason = await self._loop()
        except asyncio.CancelledError:
            reason = self._stop_requested or KILLED
            if not ready.done():
                ready.set_exception(StartFailed(f"{self.name}: cancelled while starting"))
            raise
        except Exception as error:
            reason = ExitReason.crashed(error)
        finally:
            await self._finish(reason)

    async def _loop(self) -> ExitReason:
        while True:
            envelope = await self._mailbox.get()
            message = envelope.message
            if isinstance(message, _StopSignal):
                return message.reason
            if envelope.reply is not None:
                await self._handle_ask(envelope.reply, message)
            else:
                await self._actor.receive(message)
            self._handled += 1

    async def _handle_ask(self, reply: asyncio.Future[Any], message: Any) -> None:
        if reply.done():  # the asker timed out or the ask was superseded: nobody waits for this
            return
        try:
            result = await self._actor.receive(message)
        except Exception as error:
            if not reply.done():
                reply.set_exception(error)
        else:
            if not reply.done():
                reply.set_result(result)

    async def _finish(self, reason: ExitReason) -> None:
        self._status = "stopping"
        self._reason = reason
        left = self._mailbox.close()
        dropped_tells = 0
        for envelope in left:
            if envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(ActorDead(self.name, reason))
            elif envelope.reply is None and not isinstance(envelope.message, _StopSignal):
                dropped_tells += 1
        if dropped_tells:
            log.warning("actor.stopped_with_queued_messages", actor=self.name, count=dropped_tells)
        if reason.abnormal:
            log.error(
                "actor.crashed", actor=self.name, kind=self.kind, reason=str(reason), exc_info=reason.error
            )
        try:
            await self._actor.on_stop(reason)
        except Exception:
            log.exception("actor.on_stop_failed", actor=self.name)
        finally:
            self._status = "stopped"
            self._stopped.set_result(reason)
            for callback in self._watchers.values():
                callback(self, reason)
            self._watchers.clear()


def _deliver_down_to(watcher: ActorRef) -> Watcher:
    def deliver(ref: ActorRef, reason: ExitReason) -> None:
        with contextlib.suppress(ActorDead):  # the watcher stopped first: nobody is left to tell
            watcher.send_system(Down(ref, reason))

    return deliver


async def spawn(
    actor: Actor,
    name: str | None = None,
    *,
    mailbox_size: int | None = None,
    restarts: int = 0,
) -> ActorRef:
    """Start `actor` in its own task and wait until its `on_start` finished (the ready handshake).

    Raises `StartFailed` when `on_start` raises; the actor is then already stopped.
    """
    ref = ActorRef(actor, name or f"{type(actor).__name__}-{next(_ids)}", mailbox_size or actor.mailbox_size,
                   restarts)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ref._task = asyncio.create_task(ref._run(ready), name=f"actor:{ref.name}")
    try:
        await asyncio.shield(ready)
    except asyncio.CancelledError:
        ref._task.cancel()
        raise
    return ref
