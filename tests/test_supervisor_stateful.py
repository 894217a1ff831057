"""The supervisor against a small pure model of OTP behaviour (Hypothesis stateful testing, DESIGN §13).

Random children (mixed restart types), strategies and limits; random exits (normal, shutdown, crash, kill),
start failures, dynamic children, clock advances, `on_stop` that hangs or raises, and monitors added and removed
at random. After every step the real supervisor must agree with the model on: the children and their order,
which are running, which were restarted (a new ref) or left alone (the same ref), each one's restart count, the
exact order of starts and completed stops (a killed child's `on_stop` never runs), and when it gives up. And the
process layer must hold: at most one live instance per child id, every `Down` exactly once and only after its
actor fully stopped, no monitor left on a dead actor, and no task left once the tree stopped (no grace wait).
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

from dalston.actors.runtime import Actor, ActorDead, ActorRef, Down, ExitReason, StartFailed, spawn
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
    dynamic: bool = False
    on_stop: str = "ok"  # the running instance's on_stop when its supervisor stops it: ok | hang | raise


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
        child.running, child.restarts, child.starts, child.on_stop = True, restarts, child.starts + 1, "ok"
        self.events.append(("ready", child.id))
        return True

    def stop(self, child: ModelChild, *, killed: bool = False, by_supervisor: bool = True) -> None:
        """A hanging on_stop outlives the shutdown timer and is killed: its stop never completes."""
        if child.running:
            child.running = False
            if not killed and not (by_supervisor and child.on_stop == "hang"):
                self.events.append(("stopped", child.id))

    def exited(self, child_id: str, how: str, now: float) -> None:
        child = self.child(child_id)
        self.stop(child, killed=how == "kill", by_supervisor=False)
        if child.restart is Restart.PERMANENT or (child.restart is Restart.TRANSIENT and how in ABNORMAL):
            self.restart(child, now)
        elif child.restart is Restart.TEMPORARY:
            self.children.remove(child)

    def restart(self, pivot: ModelChild, now: float) -> None:
        while True:
            self.restart_times = [t for t in self.restart_times if now - t <= self.period_s] + [now]
            if len(self.restart_times) > self.max_restarts:
                self.shut_down()
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
        child.dynamic = True
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
        """Dynamic children stop together (see `normalised`), then static ones in reverse start order."""
        for child in self.children:
            if child.dynamic:
                self.stop(child)
        for child in reversed(self.children):
            self.stop(child)


def normalised(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Events with each run of consecutive dynamic-child stops sorted: those children stop concurrently."""
    out: list[tuple[str, str]] = []
    run: list[tuple[str, str]] = []
    for event in [*events, ("end", "")]:
        if event[0] == "stopped" and event[1].startswith("d"):
            run.append(event)
            continue
        out += sorted(run)
        run = []
        out.append(event)
    return out[:-1]


# -- the real children ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    how: str  # normal | shutdown | crash


@dataclass
class Journal:
    events: list[tuple[str, str]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    on_stop: dict[str, str] = field(default_factory=dict)  # child id -> how its running instance's on_stop goes
    instances: dict[str, list[ActorRef]] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)  # child ids started while an old instance still ran


class Child(Actor):
    def __init__(self, child_id: str, journal: Journal) -> None:
        self.child_id, self.journal, self.exiting_by_itself = child_id, journal, False

    async def on_start(self) -> None:
        if self.child_id in self.journal.failing:
            self.journal.failing.discard(self.child_id)
            raise RuntimeError("start refused")
        instances = self.journal.instances.setdefault(self.child_id, [])
        if any(not ref.stopped for ref in instances):
            self.journal.overlaps.append(self.child_id)
        instances.append(self.ref)
        self.journal.on_stop.pop(self.child_id, None)
        self.journal.events.append(("ready", self.child_id))

    async def receive(self, message: Any) -> None:
        self.exiting_by_itself = True  # only a stop by the supervisor meets the faulty on_stop
        if message == Exit("crash"):
            raise RuntimeError("crash")
        self.stop_self(ExitReason(message.how))

    async def on_stop(self, reason: ExitReason) -> None:
        how = "ok" if self.exiting_by_itself else self.journal.on_stop.get(self.child_id, "ok")
        if how == "hang":
            await asyncio.Event().wait()  # until its supervisor's shutdown timer kills it
        self.journal.events.append(("stopped", self.child_id))
        if how == "raise":
            raise RuntimeError("on_stop failed")


@dataclass(frozen=True)
class Demonitor:
    ref: ActorRef
    handle: int
    flush: bool


@dataclass(frozen=True)
class Sync:
    pass


class Watcher(Actor):
    """Monitors children at random; records every Down and whether its actor had fully stopped by then."""

    def __init__(self) -> None:
        self.downs: list[tuple[int, bool]] = []  # (handle, the actor had fully stopped)

    async def receive(self, message: Any) -> None:
        match message:
            case Down(ref, _reason, handle):
                assert ref._task is not None
                self.downs.append((handle, ref.stopped and ref._task.done()))
            case Demonitor(ref, handle, flush):
                ref.demonitor(handle, flush=flush)


SHUTDOWN_S = 0.05  # a hanging on_stop is killed after this


def child_spec(child_id: str, restart: Restart, journal: Journal) -> ChildSpec:
    return worker_spec(child_id, lambda: Child(child_id, journal), restart=restart, shutdown_s=SHUTDOWN_S)


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
        self.watcher = Watcher()
        self.watcher_ref = self.run(spawn(self.watcher, "watcher"))
        self.monitors: dict[int, ActorRef] = {}  # handle -> the watched child instance
        self.withdrawn: set[int] = set()  # handles demonitored while their actor ran, or with flush
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
        await self.watcher_ref.ask(Sync(), timeout=WAIT_S)

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

    @precondition(lambda self: not self.model.dead and self.running())
    @rule(pick=st.integers(min_value=0, max_value=50), how=st.sampled_from(["hang", "raise"]))
    def on_stop_of_a_running_child_goes_wrong(self, pick: int, how: str) -> None:
        child = self.running()[pick % len(self.running())]
        child.on_stop = self.journal.on_stop[child.id] = how

    @precondition(lambda self: not self.model.dead and self.running())
    @rule(pick=st.integers(min_value=0, max_value=50))
    def a_watcher_monitors_a_running_child(self, pick: int) -> None:
        ref = self.refs[self.running()[pick % len(self.running())].id][1]
        self.monitors[ref.monitor(self.watcher_ref)] = ref

    @precondition(lambda self: self.monitors)
    @rule(pick=st.integers(min_value=0, max_value=50), flush=st.booleans())
    def the_watcher_demonitors(self, pick: int, flush: bool) -> None:
        handle = sorted(self.monitors)[pick % len(self.monitors)]
        ref = self.monitors[handle]
        if not ref.stopped:  # a Down already handled stays handled, flush or not (settle handles each one)
            self.withdrawn.add(handle)
        self.run(self.watcher_ref.ask(Demonitor(ref, handle, flush), timeout=WAIT_S))

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
    def the_process_layer_keeps_its_promises(self) -> None:
        assert self.journal.overlaps == [], "a child started while its old instance was still running"
        counts: dict[int, int] = {}
        for handle, fully_stopped in self.watcher.downs:
            assert fully_stopped, "Down arrived before its actor fully stopped"
            counts[handle] = counts.get(handle, 0) + 1
        for handle, ref in self.monitors.items():
            expected = 0 if handle in self.withdrawn or not ref.stopped else 1
            assert counts.get(handle, 0) == expected, (handle, ref)
        for instances in self.journal.instances.values():
            for ref in instances:
                if ref.stopped:
                    assert ref._monitors.on_me == {} and ref._monitors.by_me == {}
        assert all(not m.watched.stopped for m in self.watcher_ref._monitors.by_me.values())

    @invariant()
    def the_supervisor_agrees_with_the_model(self) -> None:
        if self.sup is None:
            return
        assert normalised(self.journal.events) == normalised(self.model.events)
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
                assert normalised(self.journal.events) == normalised(self.model.events)
            self.run(self.watcher_ref.stop())
            assert asyncio.all_tasks(self.loop) == set()  # no grace wait: nothing outlives the tree
        finally:
            self.loop.close()
            self.logs_cm.__exit__(None, None, None)


SupervisorMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSupervisorAgainstTheOtpModel = SupervisorMachine.TestCase
