"""The supervisor against a small pure model of OTP behaviour (Hypothesis stateful testing, DESIGN §13).

Random children (mixed restart types), strategies and limits; random exits (normal, shutdown, crash, kill),
start failures, dynamic children and clock advances. After every step the real supervisor must agree with
the model on: the children and their order, which are running, which were restarted (a new ref) or left
alone (the same ref), each one's restart count, the exact order of starts and stops, and when it gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dalston.actors.runtime import Actor, ActorDead, ActorRef, ExitReason, StartFailed
from dalston.supervisor.spec import ChildSpec, Restart, Strategy, worker_spec
from dalston.supervisor.supervisor import GAVE_UP, CapacityReached, SupervisorHandle, start_supervisor

ABNORMAL = {"crash", "kill"}
WAIT_S = 2.0  # every wait is bounded, so a diverging implementation fails fast instead of hanging

# -- the model -----------------------------------------------------------------------------------------------


@dataclass
class ModelChild:
    id: str
    restart: Restart
    running: bool = False
    restarts: int = 0
    starts: int = 0  # how many actors were started for it: a new start means a new ref


@dataclass
class OtpModel:
    strategy: Strategy
    max_restarts: int
    period_s: float
    max_children: int | None
    children: list[ModelChild] = field(default_factory=list)
    restart_times: list[float] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # ("ready" | "stopped", child id)
    failing: set[str] = field(default_factory=set)  # children whose next start fails
    dead: bool = False

    def child(self, child_id: str) -> ModelChild:
        return next(c for c in self.children if c.id == child_id)

    def start(self, child: ModelChild, restarts: int) -> bool:
        if child.id in self.failing:
            self.failing.discard(child.id)
            return False
        child.running, child.restarts, child.starts = True, restarts, child.starts + 1
        self.events.append(("ready", child.id))
        return True

    def stop(self, child: ModelChild) -> None:
        if child.running:
            child.running = False
            self.events.append(("stopped", child.id))

    def exited(self, child_id: str, how: str, now: float) -> None:
        child = self.child(child_id)
        self.stop(child)
        if child.restart is Restart.PERMANENT or (child.restart is Restart.TRANSIENT and how in ABNORMAL):
            self.restart(child, now)
        elif child.restart is Restart.TEMPORARY:
            self.children.remove(child)

    def restart(self, pivot: ModelChild, now: float) -> None:
        while True:
            self.restart_times = [t for t in self.restart_times if now - t <= self.period_s] + [now]
            if len(self.restart_times) > self.max_restarts:
                for child in reversed(self.children):
                    self.stop(child)
                self.dead = True
                return
            failed = self.restart_group(pivot)
            if failed is None:
                return
            pivot = failed

    def restart_group(self, pivot: ModelChild) -> ModelChild | None:
        at = self.children.index(pivot)
        group = {
            Strategy.ONE_FOR_ONE: [pivot],
            Strategy.ONE_FOR_ALL: list(self.children),
            Strategy.REST_FOR_ONE: self.children[at:],
        }[self.strategy]
        for child in reversed(group):
            if child is not pivot:
                self.stop(child)
        for child in group:
            if child is not pivot and child.restart is Restart.TEMPORARY:
                self.children.remove(child)
        for child in [c for c in group if c in self.children]:
            if not self.start(child, child.restarts + 1):
                return child
        return None

    def start_child(self, child: ModelChild) -> str:
        if self.max_children is not None and sum(c.running for c in self.children) >= self.max_children:
            return "capacity"
        if not self.start(child, 0):
            return "failed"
        self.children.append(child)
        return "started"

    def terminate(self, child_id: str) -> None:
        child = self.child(child_id)
        self.stop(child)
        self.children.remove(child)

    def shut_down(self) -> None:
        for child in reversed(self.children):
            self.stop(child)


# -- the real children ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    how: str  # normal | shutdown | crash


@dataclass
class Journal:
    events: list[tuple[str, str]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)


class Child(Actor):
    def __init__(self, child_id: str, journal: Journal) -> None:
        self.child_id, self.journal, self.ready = child_id, journal, False

    async def on_start(self) -> None:
        if self.child_id in self.journal.failing:
            self.journal.failing.discard(self.child_id)
            raise RuntimeError("start refused")
        self.journal.events.append(("ready", self.child_id))
        self.ready = True

    async def receive(self, message: Any) -> None:
        if message == Exit("crash"):
            raise RuntimeError("crash")
        self.stop_self(ExitReason(message.how))

    async def on_stop(self, reason: ExitReason) -> None:
        if self.ready:
            self.journal.events.append(("stopped", self.child_id))


def child_spec(child_id: str, restart: Restart, journal: Journal) -> ChildSpec:
    return worker_spec(child_id, lambda: Child(child_id, journal), restart=restart)


# -- the machine ---------------------------------------------------------------------------------------------


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 0.0
        self.journal = Journal()
        self.sup: SupervisorHandle | None = None
        self.refs: dict[str, tuple[int, ActorRef]] = {}  # child id -> (model starts, ref) last seen
        self.dynamic_ids = 0
        self.supervisors_given_up = 0
        # Captured, not rendered: rendering hundreds of crash tracebacks would dominate the run (and shrinking).
        self.logs_cm = structlog.testing.capture_logs()
        self.logs = self.logs_cm.__enter__()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    @initialize(
        strategy=st.sampled_from(Strategy),
        restarts=st.lists(st.sampled_from(Restart), min_size=1, max_size=5),
        max_restarts=st.integers(min_value=0, max_value=3),
        period_s=st.sampled_from([1.0, 5.0]),
        max_children=st.none() | st.integers(min_value=1, max_value=7),
    )
    def start(
        self, strategy: Strategy, restarts: list[Restart], max_restarts: int, period_s: float,
        max_children: int | None,
    ) -> None:
        self.model = OtpModel(strategy, max_restarts, period_s, max_children)
        self.model.children = [ModelChild(f"c{i}", r) for i, r in enumerate(restarts)]
        self.specs = [child_spec(c.id, c.restart, self.journal) for c in self.model.children]
        self.launch()

    def launch(self) -> None:
        for child in self.model.children:
            self.model.start(child, 0)
        m = self.model
        self.sup = self.run(start_supervisor(
            self.specs, m.strategy, max_restarts=m.max_restarts, period_s=m.period_s,
            max_children=m.max_children, clock=lambda: self.now,
        ))

    def running(self) -> list[ModelChild]:
        return [c for c in self.model.children if c.running]

    async def settle(self) -> None:
        """Wait until the supervisor has handled everything sent so far: an ask queues behind Downs."""
        assert self.sup is not None
        with contextlib.suppress(ActorDead):
            await self.sup.which_children(timeout_s=WAIT_S)
        if self.model.dead:
            assert await asyncio.wait_for(self.sup.ref.wait_stopped(), WAIT_S) == GAVE_UP

    @precondition(lambda self: not self.model.dead and self.running())
    @rule(pick=st.integers(min_value=0, max_value=50), how=st.sampled_from(["normal", "shutdown", "crash", "kill"]))
    def child_exits(self, pick: int, how: str) -> None:
        child = self.running()[pick % len(self.running())]
        ref = self.refs[child.id][1]

        async def act() -> None:
            if how == "kill":
                await ref.kill()
            else:
                await ref.tell(Exit(how))
                await asyncio.wait_for(ref.wait_stopped(), WAIT_S)
            await self.settle()

        self.model.exited(child.id, how, self.now)
        self.run(act())

    @precondition(lambda self: not self.model.dead and self.model.children)
    @rule(pick=st.integers(min_value=0, max_value=50))
    def next_start_of_a_child_fails(self, pick: int) -> None:
        child_id = self.model.children[pick % len(self.model.children)].id
        self.model.failing.add(child_id)
        self.journal.failing.add(child_id)

    @precondition(lambda self: not self.model.dead)
    @rule(dt=st.sampled_from([0.3, 1.0, 2.0, 6.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: not self.model.dead)
    @rule(restart=st.sampled_from(Restart), fails=st.booleans())
    def start_a_dynamic_child(self, restart: Restart, fails: bool) -> None:
        assert self.sup is not None
        self.dynamic_ids += 1
        child = ModelChild(f"d{self.dynamic_ids}", restart)
        if fails:
            self.model.failing.add(child.id)
            self.journal.failing.add(child.id)
        expected = self.model.start_child(child)
        try:
            self.run(self.sup.start_child(child_spec(child.id, restart, self.journal)))
            got = "started"
        except CapacityReached:
            got = "capacity"
        except StartFailed:
            got = "failed"
        assert got == expected

    @precondition(lambda self: not self.model.dead and self.model.children)
    @rule(pick=st.integers(min_value=0, max_value=50))
    def terminate_a_child(self, pick: int) -> None:
        assert self.sup is not None
        child_id = self.model.children[pick % len(self.model.children)].id
        self.model.terminate(child_id)
        self.run(self.sup.terminate_child(child_id))

    @precondition(lambda self: self.model.dead)
    @rule()
    def a_fresh_supervisor_starts_after_one_gave_up(self) -> None:
        self.supervisors_given_up += 1
        self.model = OtpModel(self.model.strategy, self.model.max_restarts, self.model.period_s,
                              self.model.max_children, events=self.model.events)
        self.model.children = [ModelChild(s.id, s.restart) for s in self.specs]
        self.journal.failing.clear()
        self.refs.clear()
        self.launch()

    @invariant()
    def the_supervisor_agrees_with_the_model(self) -> None:
        if self.sup is None:
            return
        assert self.journal.events == self.model.events
        gave_up = sum(entry["event"] == "supervisor.gave_up" for entry in self.logs)
        assert gave_up == self.supervisors_given_up + self.model.dead
        if self.model.dead:
            assert self.sup.ref.exit_reason == GAVE_UP
            return
        infos = self.run(self.sup.which_children(timeout_s=WAIT_S))
        assert [i.id for i in infos] == [c.id for c in self.model.children]
        for info, child in zip(infos, self.model.children, strict=True):
            assert (info.ref is not None) == child.running, child.id
            if info.ref is None:
                continue
            assert info.ref.alive and info.ref.statistics().restarts == child.restarts
            seen = self.refs.get(child.id)
            if seen is not None:
                # The same ref exactly when the model started no new actor for this child.
                assert (seen[1] is info.ref) == (seen[0] == child.starts), child.id
            self.refs[child.id] = (child.starts, info.ref)

    def teardown(self) -> None:
        try:
            if self.sup is not None and not self.model.dead:
                self.run(self.sup.stop(timeout_s=WAIT_S))
                self.model.shut_down()
                assert self.journal.events == self.model.events
            leftover = asyncio.all_tasks(self.loop)
            if leftover:
                self.run(asyncio.wait(leftover, timeout=5))
            assert all(task.done() for task in leftover)
        finally:
            self.loop.close()
            self.logs_cm.__exit__(None, None, None)


SupervisorMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSupervisorAgainstTheOtpModel = SupervisorMachine.TestCase
