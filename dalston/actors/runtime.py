"""The actor runtime: actors with bounded mailboxes, refs, tell/ask, monitors, kill and ownership.

An actor handles its messages one at a time in its own asyncio task. Others hold only its `ActorRef`.
Process semantics, after Erlang/OTP (DESIGN §3):
- `tell` is fire-and-forget and waits in line while the mailbox is full; `tell_nowait` raises `MailboxFull`.
- `ask` returns the reply or raises. An exception raised while handling an ask goes back to the asker and the
  actor lives on: asks here are requests the callee may refuse (a duplicate child, a full node), which OTP would
  answer with `{error, Reason}`; an exception while handling a `tell` crashes the actor ("let it crash").
- When an actor dies, every ask pending on it fails at once with `ActorDead` carrying the exit reason: the queued
  ones and the one being handled.
- `stop(reason, timeout_s)` asks the actor to stop after its current message and runs `on_stop` (OTP's
  `terminate`); past `timeout_s` (None: no bound, OTP's `infinity`) it kills. `kill()` is OTP's `brutal_kill`:
  the actor's task is cancelled and `on_stop` does not run; it returns within `KILL_WAIT_S` whatever the actor's
  code does (code that swallows the cancellation is declared dead anyway and logged as `actor.ignored_kill`).
- `on_stop` does not run after a failed `on_start` (OTP: `terminate` is not called when `init` fails), so
  `on_start` cleans up what it acquired before raising; tasks it started and actors it spawned are reaped anyway.
- `monitor(watcher)` delivers `Down(ref, reason, handle)` exactly once, after the actor has fully stopped
  (`on_stop` done, its tasks and owned actors reaped). To an actor it is queued in order behind every message
  already in the watcher's mailbox, so it never overtakes what the dead actor sent earlier (Erlang's per-pair
  order). Callbacks are isolated: one that raises is logged and the others still run. `demonitor(handle,
  flush=True)` also withdraws a `Down` already queued; a monitor disappears when either side dies.
- Calls to self fail fast: `ask`, `stop`, `kill` and `wait_stopped` on an actor from its own task raise
  `CalledSelf` (use `stop_self`); `tell` to itself never waits (it raises `MailboxFull` instead of deadlocking).
- Ownership: every actor has an owner, the actor whose task spawned it or, outside any actor, the loop's root
  set. Owners hold strong references (asyncio keeps tasks only weakly), and when an owner stops, whatever it
  still owns is killed: no actor outlives its owner. `Actor.start_task` gives an actor helper tasks it owns the
  same way. Cancelling `spawn` kills the half-started actor and everything it spawned before re-raising.
- `CancelledError` is never swallowed by the runtime.

Differences from OTP that remain: a coroutine cannot be killed against its will, so an actor whose code
swallows the cancellation is only declared dead (its task may run on, detached); there are no links, only
monitors and ownership; supervisors stop children through `stop`, not exit signals.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from dalston.actors import monitors
from dalston.actors.actor import Actor, ActorStatistics
from dalston.actors.exits import (
    KILLED,
    NORMAL,
    SHUTDOWN,
    ActorDead,
    CalledSelf,
    Down,
    ExitReason,
    StartFailed,
)
from dalston.actors.mailbox import Envelope, Mailbox, MailboxClosed
from dalston.actors.monitors import Watcher

__all__ = [
    "KILLED", "NORMAL", "SHUTDOWN", "Actor", "ActorDead", "ActorRef", "ActorStatistics", "CalledSelf", "Down",
    "ExitReason", "StartFailed", "Watcher", "root_actors", "spawn",
]

log = structlog.get_logger(__name__)

KILL_WAIT_S = 1.0  # how long a kill waits for the cancelled task before declaring the actor dead regardless


@dataclass(frozen=True)
class _StopSignal:
    reason: ExitReason


_ids = itertools.count(1)
_current_actor: contextvars.ContextVar[ActorRef | None] = contextvars.ContextVar("dalston_actor", default=None)
_roots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[ActorRef]] = weakref.WeakKeyDictionary()


def root_actors() -> frozenset[ActorRef]:
    """The running actors that no actor owns on this loop (spawned outside any actor)."""
    return frozenset(_roots.get(asyncio.get_running_loop(), ()))


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
        self._stop_requested = False
        self._killed = False
        self._current_reply: asyncio.Future[Any] | None = None
        self._monitors = monitors.Monitors()
        self._owner: ActorRef | None = None
        self._owned: set[ActorRef] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()
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

    @property
    def stopped(self) -> bool:
        """Fully stopped: `on_stop` done (or skipped by a kill), what it owned reaped, its watchers told."""
        return self._stopped.done()

    # -- sending ------------------------------------------------------------------------------------------

    async def tell(self, message: Any) -> None:
        """Queue a message, waiting in line while the mailbox is full (backpressure)."""
        if self._in_own_task():
            self.tell_nowait(message)  # waiting on its own mailbox would never end
            return
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
        self._refuse_own_task("ask")
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

    def tell_unbounded(self, message: Any) -> None:
        """Queue a message in order without waiting, ignoring the bound.

        For a short notice that a sender must neither block on nor lose (a session telling its model that it
        ended, a model answering a session). Not for a stream of messages: that is what the bound is for.
        """
        try:
            self._mailbox.put_signal(Envelope(message))
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None

    def send_system(self, message: Any) -> None:
        """Deliver a message ahead of the queue, ignoring the bound (timer ticks, wake-ups)."""
        try:
            self._mailbox.put_urgent(Envelope(message))
        except MailboxClosed:
            raise ActorDead(self.name, self._reason) from None

    # -- monitors -----------------------------------------------------------------------------------------

    def monitor(self, watcher: ActorRef | Watcher) -> int:
        """Deliver `Down(self, reason, handle)` to `watcher` (an actor, or a callback) once this actor stopped.

        Returns the handle for `demonitor`. Monitoring an actor that already stopped delivers at once (a
        callback from the loop, soon after, unless demonitored first).
        """
        handle = next(_ids)
        if isinstance(watcher, ActorRef):
            monitors.add(monitors.Monitor(handle, self, watcher, None))
        else:
            monitors.add(monitors.Monitor(handle, self, None, watcher))
        return handle

    def demonitor(self, handle: int, *, flush: bool = False) -> None:
        """Remove a monitor; with `flush`, also withdraw its `Down` if it is already queued for the watcher.

        A `Down` that was already delivered is flushed from the watcher it went to or, when the monitor is
        gone, from the calling actor's own mailbox (as Erlang's `demonitor(Ref, [flush])`).
        """
        monitors.remove(self, handle, flush=flush, caller=_current_actor.get())

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def stop(self, reason: ExitReason = SHUTDOWN, timeout_s: float | None = 5.0) -> ExitReason:
        """Stop after the current message, running `on_stop`; kill past `timeout_s` (None: wait for ever).

        `timeout_s=0` kills at once (OTP `brutal_kill`).
        """
        self._refuse_own_task("stop", "use stop_self() from inside an actor")
        if self._stopped.done():
            return self._stopped.result()
        if timeout_s is not None and timeout_s <= 0:
            return await self.kill()
        self._request_stop(reason)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self._stopped)
        except TimeoutError:
            return await self.kill()

    async def kill(self) -> ExitReason:
        """Cancel the actor at once, without `on_stop` (OTP `brutal_kill`); returns within `KILL_WAIT_S`."""
        self._refuse_own_task("kill", "use stop_self() from inside an actor")
        self._begin_kill()
        return await self._wait_killed()

    async def wait_stopped(self) -> ExitReason:
        self._refuse_own_task("wait_stopped")
        return await asyncio.shield(self._stopped)

    def _begin_kill(self) -> None:
        if self._stopped.done() or self._task is None:
            return
        self._killed = True
        self._task.cancel()

    async def _wait_killed(self) -> ExitReason:
        await asyncio.wait([self._stopped], timeout=KILL_WAIT_S)
        if not self._stopped.done():
            log.error("actor.ignored_kill", actor=self.name, kind=self.kind)  # its code swallowed the cancel
            self._fail_pending(KILLED)
            self._finalize(KILLED)
        return self._stopped.result()

    def _request_stop(self, reason: ExitReason) -> None:
        if not self._stop_requested and not self._mailbox.closed:
            self._stop_requested = True
            self._mailbox.put_urgent(Envelope(_StopSignal(reason)))

    def _in_own_task(self) -> bool:
        return self._task is not None and asyncio.current_task() is self._task

    def _refuse_own_task(self, call: str, hint: str = "") -> None:
        if self._in_own_task():
            raise CalledSelf(f"{self.name}: {call}() on itself from its own task would deadlock"
                             + (f"; {hint}" if hint else ""))

    def _start_task(self, coro: Coroutine[Any, Any, Any], name: str | None) -> asyncio.Task[Any]:
        if self._stopped.done():
            coro.close()
            raise ActorDead(self.name, self._reason)
        task = asyncio.get_running_loop().create_task(coro, name=name or f"{self.name}:task")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        _current_actor.set(self)
        reason, started = NORMAL, False
        try:
            try:
                await self._actor.on_start()
            except Exception as error:
                ready.set_exception(StartFailed(f"{self.name}: {type(error).__name__}: {error}"))
                reason = ExitReason.crashed(error)
                return
            self._status, started = "running", True
            ready.set_result(None)
            reason = await self._loop()
        except asyncio.CancelledError:
            reason, self._killed = KILLED, True
            if not ready.done():
                ready.set_exception(StartFailed(f"{self.name}: killed while starting"))
            raise
        except Exception as error:
            reason = ExitReason.crashed(error)
        finally:
            await self._finish(reason, run_on_stop=started)

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
        self._current_reply = reply  # kept while a kill unwinds, so that `_fail_pending` answers it
        try:
            result = await self._actor.receive(message)
        except Exception as error:
            if not reply.done():
                reply.set_exception(error)
        else:
            if not reply.done():
                reply.set_result(result)
        self._current_reply = None

    async def _finish(self, reason: ExitReason, run_on_stop: bool) -> None:
        """Stop taking messages, fail pending asks, run `on_stop` unless killed, reap what it owns, notify."""
        self._status = "stopping"
        self._reason = reason
        self._fail_pending(reason)
        try:
            if run_on_stop and not self._killed:
                try:
                    await self._actor.on_stop(reason)
                except Exception:
                    log.exception("actor.on_stop_failed", actor=self.name)
        finally:  # a kill landing in on_stop ends it here, and the rest still runs
            try:
                await self._reap_owned()
            finally:
                final = KILLED if self._killed else reason
                if final.abnormal:
                    log.error("actor.crashed", actor=self.name, kind=self.kind, reason=str(final),
                              exc_info=final.error)
                self._finalize(final)

    def _fail_pending(self, reason: ExitReason) -> None:
        """Close the mailbox and fail every ask waiting on this actor, the one being handled included."""
        dead = ActorDead(self.name, reason)
        if self._current_reply is not None and not self._current_reply.done():
            self._current_reply.set_exception(dead)
        dropped_tells = 0
        for envelope in self._mailbox.close():
            if envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(dead)
            elif envelope.reply is None and envelope.bounded:
                dropped_tells += 1
        if dropped_tells:
            log.warning("actor.stopped_with_queued_messages", actor=self.name, count=dropped_tells)

    async def _reap_owned(self) -> None:
        """End the tasks and actors this one still owns and wait for them (bounded).

        After a clean exit its actors are stopped (their `on_stop` runs, within `KILL_WAIT_S`); after a kill
        they are killed too.
        """
        tasks, owned = list(self._tasks), list(self._owned)
        for task in tasks:
            task.cancel()
        if not self._killed and owned:
            await asyncio.wait([asyncio.ensure_future(child.stop(SHUTDOWN, KILL_WAIT_S)) for child in owned])
        for child in owned:
            child._begin_kill()
        if tasks or owned:
            await asyncio.wait([*tasks, *(child._stopped for child in owned)], timeout=KILL_WAIT_S)
        for child in owned:
            if not child._stopped.done():
                await child._wait_killed()

    def _finalize(self, reason: ExitReason) -> None:
        """The actor is gone: release it from its owner and its monitors, then tell its watchers. Idempotent."""
        if self._stopped.done():
            return
        self._status, self._reason = "stopped", reason
        owner_set = self._owner._owned if self._owner is not None else _roots.get(self._stopped.get_loop(), set())
        owner_set.discard(self)
        self._stopped.set_result(reason)
        monitors.on_death(self, reason)


async def spawn(
    actor: Actor,
    name: str | None = None,
    *,
    mailbox_size: int | None = None,
    restarts: int = 0,
) -> ActorRef:
    """Start `actor` in its own task and wait until its `on_start` finished (the ready handshake).

    The new actor is owned by the actor whose task calls `spawn` (or by the loop's root set). Raises
    `StartFailed` when `on_start` raises; the actor is then already stopped. Cancelling `spawn` kills it.
    """
    ref = ActorRef(actor, name or f"{type(actor).__name__}-{next(_ids)}", mailbox_size or actor.mailbox_size,
                   restarts)
    owner = _current_actor.get()
    if owner is not None and not owner._stopped.done():
        ref._owner = owner
        owner._owned.add(ref)
    else:
        _roots.setdefault(asyncio.get_running_loop(), set()).add(ref)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ref._task = asyncio.create_task(ref._run(ready), name=f"actor:{ref.name}")
    try:
        await asyncio.shield(ready)
    except asyncio.CancelledError:
        ref._begin_kill()
        await ref._wait_killed()
        raise
    except StartFailed:
        await asyncio.wait([ref._stopped], timeout=KILL_WAIT_S)  # reaping what on_start left is bounded
        raise
    return ref
