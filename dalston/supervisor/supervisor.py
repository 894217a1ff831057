"""The supervisor: an actor that starts, watches and restarts other actors (Erlang/OTP semantics, DESIGN §4).

- Children start in order; each is ready (its `spawn` returned) before the next starts. If a static child
  fails to start, the ones already started are stopped in reverse order and the supervisor's start fails.
- Children are watched with monitors: a child's exit arrives as a `Down` message. Nothing polls.
- On an exit: permanent children are restarted, transient ones only after an abnormal exit, temporary ones
  never (they are removed). `one_for_all` stops the other children (reverse order) and restarts all (start
  order); `rest_for_one` does the same for the children started after the one that exited.
- Each restart counts toward the restart intensity; a child that fails to restart counts again and is
  retried. Past the intensity the supervisor stops all children in reverse order and exits with reason
  `shutdown`, letting its parent decide.
- Stopping a supervisor stops its dynamic children (`start_child`) first, all at once under one shutdown timer
  (OTP's dynamic-children shutdown), then its static children in reverse start order, each given its
  `shutdown_s` (`BRUTAL_KILL`: killed at once; `INFINITY`: no bound) and then killed.
- A child's `Down` arrives only once it has fully stopped, so a restarted child never overlaps its old instance;
  a child the supervisor stops itself is demonitored with `flush`, so its exit is not mistaken for a crash.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import structlog

from dalston.actors.runtime import SHUTDOWN, Actor, ActorRef, Down, ExitReason, spawn
from dalston.supervisor.intensity import RestartIntensity
from dalston.supervisor.spec import ChildKind, ChildSpec, Restart, Strategy

log = structlog.get_logger(__name__)

GAVE_UP = ExitReason("shutdown", "reached max restart intensity")


class CapacityReached(Exception):
    """`start_child` on a supervisor already running `max_children` children."""


class DuplicateChild(ValueError):
    """A child with this id is already known to the supervisor."""


class NoSuchChild(LookupError):
    """No child with this id."""


@dataclass(frozen=True)
class ChildInfo:
    id: str
    ref: ActorRef | None  # None while not running (a transient child that exited normally)
    kind: ChildKind
    restart: Restart


@dataclass(frozen=True)
class ChildCounts:
    specs: int  # children known, running or not
    active: int  # children running
    supervisors: int  # children whose kind is supervisor, running or not
    workers: int


# Commands to a supervisor, sent as asks (use `SupervisorHandle` rather than sending them by hand).
@dataclass(frozen=True)
class StartChild:
    spec: ChildSpec


@dataclass(frozen=True)
class TerminateChild:
    id: str


@dataclass(frozen=True)
class WhichChildren:
    pass


@dataclass(frozen=True)
class CountChildren:
    pass


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    ref: ActorRef | None = None
    monitor: int | None = None
    restarts: int = 0
    dynamic: bool = False  # started by `start_child`, not from the supervisor's static list


class _RestartFailed(Exception):
    def __init__(self, child: _Child) -> None:
        self.child = child


def _should_restart(restart: Restart, reason: ExitReason) -> bool:
    return restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and reason.abnormal)


class Supervisor(Actor):
    # Down messages bypass the bound anyway; the bound only limits queued commands.
    mailbox_size = 1024

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        *,
        max_restarts: int = 3,
        period_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_children: int | None = None,
    ) -> None:
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise DuplicateChild(f"child ids must be unique, got {ids}")
        self.strategy = Strategy(strategy)
        self.max_children = max_children
        self._children = [_Child(spec) for spec in children]
        self._intensity = RestartIntensity(max_restarts, period_s)
        self._clock = clock
        self._giving_up = False
        self._log = log

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._log = log.bind(supervisor=self.ref.name, strategy=str(self.strategy))
        for child in self._children:
            try:
                await self._start(child, restarts=0)
            except Exception as error:
                self._log.error("supervisor.start_failed", child=child.spec.id, error=str(error))
                await self._stop_all()
                raise
        self._log.info("supervisor.started", children=[c.spec.id for c in self._children])

    async def on_stop(self, reason: ExitReason) -> None:
        await self._stop_all()
        self._log.info("supervisor.stopped", reason=str(reason))

    async def receive(self, message: Any) -> Any:
        match message:
            case Down(ref, reason):
                await self._child_exited(ref, reason)
            case StartChild(spec):
                return await self._start_child(spec)
            case TerminateChild(child_id):
                await self._terminate_child(child_id)
            case WhichChildren():
                return [ChildInfo(c.spec.id, c.ref, c.spec.kind, c.spec.restart) for c in self._children]
            case CountChildren():
                return self._count()
            case _:
                # OTP's supervisor logs unexpected messages and carries on rather than crash its subtree.
                self._log.error("supervisor.unexpected_message", message=repr(message))
        return None

    def statistics_extra(self) -> dict[str, Any]:
        return {
            "strategy": str(self.strategy),
            "max_restarts": self._intensity.max_restarts,
            "period_s": self._intensity.period_s,
            "max_children": self.max_children,
            "active_children": sum(c.ref is not None for c in self._children),
        }

    # -- starting and stopping one child ------------------------------------------------------------------

    async def _start(self, child: _Child, restarts: int) -> ActorRef:
        ref = await child.spec.start(restarts)
        child.ref, child.restarts = ref, restarts
        child.monitor = ref.monitor(self.ref)  # an actor that already died delivers Down at once
        return ref

    async def _stop_child(self, child: _Child) -> None:
        ref = child.ref
        if ref is None:
            return
        if child.monitor is not None:
            ref.demonitor(child.monitor, flush=True)  # a stop we asked for is not an exit to react to
        shutdown_s = child.spec.shutdown_s
        reason = await ref.stop(SHUTDOWN, timeout_s=None if math.isinf(shutdown_s) else shutdown_s)
        child.ref = child.monitor = None
        self._log.info("supervisor.child_stopped", child=child.spec.id, reason=str(reason))

    async def _stop_all(self) -> None:
        """Stop the dynamic children together, then the static ones in reverse start order.

        If the supervisor is killed meanwhile, the runtime kills whatever it still owns.
        """
        await asyncio.gather(*(self._stop_child(c) for c in self._children if c.dynamic))
        for child in reversed(self._children):
            await self._stop_child(child)

    # -- reacting to exits --------------------------------------------------------------------------------

    async def _child_exited(self, ref: ActorRef, reason: ExitReason) -> None:
        child = next((c for c in self._children if c.ref is ref), None)
        if child is None or self._giving_up:
            return  # a stale Down: that child was already stopped or replaced
        child.ref = child.monitor = None
        restart = _should_restart(child.spec.restart, reason)
        report = self._log.error if reason.abnormal else self._log.info
        report("supervisor.child_exited", child=child.spec.id, reason=str(reason), restart=restart)
        if restart:
            await self._restart(child)
        elif child.spec.restart is Restart.TEMPORARY:
            self._children.remove(child)

    async def _restart(self, pivot: _Child) -> None:
        """Restart per the strategy; a failed start counts as one more restart and is retried from there."""
        while True:
            self._intensity = self._intensity.record(self._clock())
            if self._intensity.exceeded:
                await self._give_up(pivot)
                return
            try:
                await self._restart_group(pivot)
                return
            except _RestartFailed as failed:
                pivot = failed.child

    def _group(self, pivot: _Child) -> list[_Child]:
        if self.strategy is Strategy.ONE_FOR_ALL:
            return list(self._children)
        if self.strategy is Strategy.REST_FOR_ONE:
            return self._children[self._children.index(pivot):]
        return [pivot]

    async def _restart_group(self, pivot: _Child) -> None:
        group = self._group(pivot)
        for child in reversed(group):
            if child is not pivot and child.ref is not None:
                await self._stop_child(child)
        for child in group:
            if child is not pivot and child.spec.restart is Restart.TEMPORARY:
                self._children.remove(child)  # temporary siblings are stopped, never restarted (OTP)
        for child in [c for c in group if c in self._children]:
            try:
                await self._start(child, restarts=child.restarts + 1)
            except Exception as error:
                self._log.error("supervisor.restart_failed", child=child.spec.id, error=str(error))
                raise _RestartFailed(child) from error
            self._log.info("supervisor.child_restarted", child=child.spec.id, restarts=child.restarts)

    async def _give_up(self, pivot: _Child) -> None:
        self._giving_up = True
        self._log.error(
            "supervisor.gave_up", child=pivot.spec.id,
            max_restarts=self._intensity.max_restarts, period_s=self._intensity.period_s,
        )
        await self._stop_all()
        self.stop_self(GAVE_UP)

    # -- dynamic children ---------------------------------------------------------------------------------

    async def _start_child(self, spec: ChildSpec) -> ActorRef:
        if any(c.spec.id == spec.id for c in self._children):
            raise DuplicateChild(f"a child {spec.id!r} already exists")
        active = sum(c.ref is not None for c in self._children)
        if self.max_children is not None and active >= self.max_children:
            raise CapacityReached(f"{active} of {self.max_children} children running")
        child = _Child(spec, dynamic=True)
        ref = await self._start(child, restarts=0)
        self._children.append(child)
        self._log.info("supervisor.child_started", child=spec.id)
        return ref

    async def _terminate_child(self, child_id: str) -> None:
        child = next((c for c in self._children if c.spec.id == child_id), None)
        if child is None:
            raise NoSuchChild(child_id)
        await self._stop_child(child)
        self._children.remove(child)

    def _count(self) -> ChildCounts:
        supervisors = sum(c.spec.kind == "supervisor" for c in self._children)
        return ChildCounts(
            specs=len(self._children),
            active=sum(c.ref is not None for c in self._children),
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )


class SupervisorHandle:
    """The caller's side of a supervisor: its ref and the dynamic-children API as plain awaitables.

    Also an async context manager that stops the tree on exit, however the block ends (cancellation too).
    """

    def __init__(self, ref: ActorRef) -> None:
        self.ref = ref

    async def start_child(self, spec: ChildSpec, timeout_s: float = 30.0) -> ActorRef:
        """Start a child and return its ref once ready; `CapacityReached`, `DuplicateChild`, `StartFailed`."""
        return await self.ref.ask(StartChild(spec), timeout=timeout_s)

    async def terminate_child(self, child_id: str, timeout_s: float = 30.0) -> None:
        """Stop the child (its `shutdown_s`, then killed) and forget its spec; `NoSuchChild` if unknown."""
        await self.ref.ask(TerminateChild(child_id), timeout=timeout_s)

    async def which_children(self, timeout_s: float = 5.0) -> list[ChildInfo]:
        return await self.ref.ask(WhichChildren(), timeout=timeout_s)

    async def count_children(self, timeout_s: float = 5.0) -> ChildCounts:
        return await self.ref.ask(CountChildren(), timeout=timeout_s)

    async def stop(self, timeout_s: float = 60.0) -> ExitReason:
        return await self.ref.stop(SHUTDOWN, timeout_s=timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def start_supervisor(
    children: Sequence[ChildSpec] = (),
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    *,
    name: str = "supervisor",
    **options: Any,
) -> SupervisorHandle:
    """Spawn a root supervisor (options as for `Supervisor`); returns once all its children are ready."""
    return SupervisorHandle(await spawn(Supervisor(children, strategy, **options), name))


def supervisor_spec(
    id: str,
    children: Sequence[ChildSpec] = (),
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown_s: float = 60.0,
    **options: Any,
) -> ChildSpec:
    """A child spec for a nested supervisor; each start builds a fresh `Supervisor` with fresh children."""

    async def start(restarts: int) -> ActorRef:
        return await spawn(Supervisor(children, strategy, **options), id, restarts=restarts)

    return ChildSpec(id, start, restart, shutdown_s, "supervisor")
