"""Behaviour of supervisors and supervision trees (DESIGN §4): start and stop order, restarts, intensity."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from dalston.actors.runtime import Actor, ActorDead, ActorRef, ExitReason, StartFailed, spawn
from dalston.supervisor.spec import ChildSpec, Restart, Strategy, worker_spec
from dalston.supervisor.supervisor import (
    GAVE_UP,
    CapacityReached,
    ChildCounts,
    DuplicateChild,
    NoSuchChild,
    Supervisor,
    SupervisorHandle,
    start_supervisor,
    supervisor_spec,
)
from dalston.supervisor.tree import render_tree, snapshot


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class Hang:
    pass


@dataclass
class Journal:
    """What the test children did, in order, across all of them."""

    events: list[tuple[str, str]] = field(default_factory=list)
    fail_start: set[str] = field(default_factory=set)
    reasons: dict[str, ExitReason] = field(default_factory=dict)

    def of(self, what: str) -> list[str]:
        return [child for event, child in self.events if event == what]


class Child(Actor):
    def __init__(self, child_id: str, journal: Journal) -> None:
        self.child_id = child_id
        self.journal = journal
        self.ready = False

    async def on_start(self) -> None:
        self.journal.events.append(("starting", self.child_id))
        await asyncio.sleep(0)  # a start that yields: the next child must still wait for it
        if self.child_id in self.journal.fail_start:
            self.journal.fail_start.discard(self.child_id)
            raise RuntimeError(f"{self.child_id} cannot start")
        self.journal.events.append(("ready", self.child_id))
        self.ready = True

    async def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError(f"{self.child_id} crashed")
            case Finish():
                self.stop_self()
            case Hang():
                await asyncio.Event().wait()
        return self.child_id

    async def on_stop(self, reason: ExitReason) -> None:
        if self.ready:
            self.journal.events.append(("stopped", self.child_id))
            self.journal.reasons[self.child_id] = reason


def spec(journal: Journal, child_id: str, restart: Restart = Restart.PERMANENT, **kw: Any) -> ChildSpec:
    return worker_spec(child_id, lambda: Child(child_id, journal), restart=restart, **kw)


async def refs_of(sup: SupervisorHandle) -> dict[str, ActorRef | None]:
    return {info.id: info.ref for info in await sup.which_children()}


async def crash(sup: SupervisorHandle, child_id: str, message: Any = None) -> ActorRef:
    """Make a child exit and wait until the supervisor has dealt with it; returns the old ref."""
    ref = (await refs_of(sup))[child_id]
    assert ref is not None
    await ref.tell(message or Crash())
    await ref.wait_stopped()
    # An ask queues behind the Down, so the reaction is over when it returns (or the supervisor gave up).
    with contextlib.suppress(ActorDead):
        await sup.which_children()
    return ref


async def test_children_start_in_order_each_ready_before_the_next_starts() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, c) for c in "abc"])
    assert journal.events == [
        ("starting", "a"), ("ready", "a"), ("starting", "b"), ("ready", "b"), ("starting", "c"), ("ready", "c"),
    ]
    assert list(await refs_of(sup)) == ["a", "b", "c"]
    await sup.stop()


async def test_a_child_failing_to_start_stops_the_started_ones_in_reverse_and_fails_the_supervisor() -> None:
    journal = Journal(fail_start={"c"})
    with pytest.raises(StartFailed, match="c cannot start"):
        await start_supervisor([spec(journal, c) for c in "abcd"])
    assert journal.of("ready") == ["a", "b"]
    assert journal.of("stopped") == ["b", "a"]
    assert "d" not in journal.of("starting")


async def test_stopping_a_supervisor_stops_its_children_in_reverse_start_order() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, c) for c in "abcd"])
    assert await sup.stop() == ExitReason("shutdown")
    assert journal.of("stopped") == ["d", "c", "b", "a"]
    assert all(reason.kind == "shutdown" for reason in journal.reasons.values())


async def test_a_child_that_outlives_its_shutdown_s_is_killed_and_the_others_stop_gracefully() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, "a"), spec(journal, "stuck", shutdown_s=0.05), spec(journal, "c")])
    stuck = (await refs_of(sup))["stuck"]
    assert stuck is not None
    await stuck.tell(Hang())
    await sup.stop()
    assert journal.of("stopped") == ["c", "a"]  # the killed one's on_stop does not run (brutal kill)
    assert stuck.exit_reason is not None and stuck.exit_reason.kind == "killed"
    assert journal.reasons["a"].kind == journal.reasons["c"].kind == "shutdown"


async def test_a_crashed_permanent_child_is_restarted_as_a_fresh_actor_with_its_restart_count() -> None:
    journal = Journal()
    built: list[Child] = []

    def build() -> Child:
        built.append(Child("a", journal))
        return built[-1]

    sup = await start_supervisor([worker_spec("a", build)])
    old = await crash(sup, "a")
    new = (await refs_of(sup))["a"]
    assert new is not None and new is not old and new.alive
    assert len(built) == 2 and built[0] is not built[1]
    assert new.statistics().restarts == 1
    await sup.stop()


async def test_transient_children_are_restarted_only_after_an_abnormal_exit() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, "t", Restart.TRANSIENT), spec(journal, "u", Restart.TRANSIENT)])
    await crash(sup, "t", Crash())
    await crash(sup, "u", Finish())
    refs = await refs_of(sup)
    assert refs["t"] is not None and refs["t"].alive
    assert refs["u"] is None  # kept as a spec, not running, as in OTP
    assert await sup.count_children() == ChildCounts(specs=2, active=1, supervisors=0, workers=2)
    await sup.stop()


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, c) for c in "abcd"], Strategy.ONE_FOR_ALL)
    journal.events.clear()
    await crash(sup, "b")
    assert journal.of("stopped") == ["b", "d", "c", "a"]
    assert journal.of("ready") == ["a", "b", "c", "d"]
    await sup.stop()


async def test_rest_for_one_restarts_the_child_and_those_started_after_it() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, c) for c in "abcd"], Strategy.REST_FOR_ONE)
    before = await refs_of(sup)
    journal.events.clear()
    await crash(sup, "b")
    after = await refs_of(sup)
    assert journal.of("stopped") == ["b", "d", "c"]
    assert journal.of("ready") == ["b", "c", "d"]
    assert after["a"] is before["a"] and all(after[c] is not before[c] for c in "bcd")
    await sup.stop()


async def test_a_child_that_fails_to_restart_counts_as_another_restart_and_is_retried() -> None:
    journal = Journal()
    sup = await start_supervisor([spec(journal, "a")], max_restarts=2, clock=lambda: 0.0)
    journal.fail_start.add("a")
    await crash(sup, "a")
    assert journal.of("starting")[-2:] == ["a", "a"] and (await refs_of(sup))["a"] is not None
    journal.fail_start.add("a")
    await crash(sup, "a")  # a third restart within the period: 3 > 2
    assert sup.ref.exit_reason == GAVE_UP


async def test_dynamic_children_are_refused_with_capacity_reached_beyond_max_children() -> None:
    journal = Journal()
    sup = await start_supervisor(max_children=2)
    await sup.start_child(spec(journal, "s1", Restart.TEMPORARY))
    await sup.start_child(spec(journal, "s2", Restart.TEMPORARY))
    with pytest.raises(CapacityReached):
        await sup.start_child(spec(journal, "s3", Restart.TEMPORARY))
    await sup.terminate_child("s1")
    await sup.start_child(spec(journal, "s3", Restart.TEMPORARY))
    assert list(await refs_of(sup)) == ["s2", "s3"]
    await sup.stop()


async def test_a_crashed_temporary_child_is_not_restarted_and_frees_its_place() -> None:
    journal = Journal()
    sup = await start_supervisor(max_children=1)
    await sup.start_child(spec(journal, "s1", Restart.TEMPORARY))
    await crash(sup, "s1")
    assert await refs_of(sup) == {}
    assert journal.of("ready") == ["s1"]
    assert await sup.start_child(spec(journal, "s2", Restart.TEMPORARY))
    await sup.stop()


async def test_dynamic_child_errors_are_reported_to_the_caller_and_the_supervisor_lives_on() -> None:
    journal = Journal(fail_start={"bad"})
    sup = await start_supervisor([spec(journal, "a")])
    with pytest.raises(DuplicateChild):
        await sup.start_child(spec(journal, "a"))
    with pytest.raises(NoSuchChild):
        await sup.terminate_child("nobody")
    with pytest.raises(StartFailed):
        await sup.start_child(spec(journal, "bad"))
    assert list(await refs_of(sup)) == ["a"] and sup.ref.alive
    await sup.stop()


async def test_past_the_intensity_a_supervisor_exits_with_shutdown_and_its_parent_decides() -> None:
    journal = Journal()
    inner = supervisor_spec("inner", [spec(journal, "w")], max_restarts=1, clock=lambda: 0.0)
    root = await start_supervisor([spec(journal, "first"), inner, spec(journal, "last")])
    first_inner = (await refs_of(root))["inner"]
    assert first_inner is not None
    inner_sup = SupervisorHandle(first_inner)
    await crash(inner_sup, "w")  # one restart: allowed
    journal.events.clear()
    await (await refs_of(inner_sup))["w"].tell(Crash())  # type: ignore[union-attr]
    assert await first_inner.wait_stopped() == GAVE_UP
    refs = await refs_of(root)
    assert refs["inner"] is not None and refs["inner"] is not first_inner
    assert refs["inner"].statistics().restarts == 1
    assert journal.of("ready") == ["w"]  # the parent restarted the inner supervisor; its siblings ran on
    await root.stop()


async def test_a_transient_supervisor_that_gives_up_is_not_restarted_by_its_parent() -> None:
    journal = Journal()
    inner = supervisor_spec(
        "inner", [spec(journal, "w")], restart=Restart.TRANSIENT, max_restarts=0, clock=lambda: 0.0
    )
    root = await start_supervisor([inner])
    inner_ref = (await refs_of(root))["inner"]
    assert inner_ref is not None
    await crash(SupervisorHandle(inner_ref), "w")
    assert inner_ref.exit_reason == GAVE_UP
    await root.which_children()
    assert (await refs_of(root))["inner"] is None  # shutdown is a clean exit for a transient child
    await root.stop()


async def test_cancelling_a_supervisor_trees_task_kills_the_whole_tree_and_leaves_no_task_running() -> None:
    before = asyncio.all_tasks()
    journal = Journal()
    tree = [spec(journal, "a"), supervisor_spec("inner", [spec(journal, "b"), spec(journal, "c")])]
    root = await start_supervisor(tree)
    inner = (await refs_of(root))["inner"]
    assert root.ref._task is not None and inner is not None
    everyone = [root.ref, inner, *(r for r in (await refs_of(SupervisorHandle(inner))).values() if r)]
    everyone += [r for r in (await refs_of(root)).values() if r and r not in everyone]
    root.ref._task.cancel()
    assert (await root.ref.wait_stopped()).kind == "killed"
    assert asyncio.all_tasks() - before == set()  # no grace wait: nothing outlives its owner
    assert len(everyone) == 5 and all(r.exit_reason == ExitReason("killed") for r in everyone)
    assert journal.of("stopped") == []  # killed, not stopped: no on_stop ran


async def test_a_supervisor_killed_while_stopping_its_children_kills_the_rest_rather_than_orphan_them() -> None:
    before = asyncio.all_tasks()
    journal = Journal()
    root = await start_supervisor([spec(journal, "a"), spec(journal, "stuck", shutdown_s=60)])
    stuck = (await refs_of(root))["stuck"]
    assert stuck is not None
    await stuck.tell(Hang())
    # The root's graceful stop waits on "stuck" (60 s allowed); the root itself is given far less, then killed.
    a = (await refs_of(root))["a"]
    await root.ref.stop(timeout_s=0.05)
    assert asyncio.all_tasks() - before == set()
    assert a is not None and a.exit_reason == stuck.exit_reason == ExitReason("killed")


async def test_cancelling_the_application_task_that_holds_a_tree_stops_the_tree() -> None:
    before = asyncio.all_tasks()
    journal = Journal()
    started = asyncio.Event()

    async def application() -> None:
        async with await start_supervisor([spec(journal, "a"), spec(journal, "b")]):
            started.set()
            await asyncio.Event().wait()

    app = asyncio.create_task(application())
    await started.wait()
    app.cancel()
    with pytest.raises(asyncio.CancelledError):
        await app
    left = asyncio.all_tasks() - before
    if left:
        await asyncio.wait(left, timeout=5)
    assert [task for task in asyncio.all_tasks() - before if not task.done()] == []
    assert journal.of("stopped") == ["b", "a"]


async def test_a_snapshot_of_a_nested_tree_is_json_with_every_actor() -> None:
    journal = Journal()
    sessions = supervisor_spec("sessions", [], max_children=4)
    root = await start_supervisor([spec(journal, "fast"), sessions], name="node")
    sessions_ref = (await refs_of(root))["sessions"]
    assert sessions_ref is not None
    await SupervisorHandle(sessions_ref).start_child(spec(journal, "sess_1", Restart.TEMPORARY))
    await crash(root, "fast")
    tree = json.loads(json.dumps((await snapshot(root.ref)).to_json()))
    assert (tree["id"], tree["kind"], tree["status"]) == ("node", "supervisor", "running")
    assert [c["id"] for c in tree["children"]] == ["fast", "sessions"]
    fast, sess = tree["children"]
    assert (fast["kind"], fast["restarts"], fast["actor"]) == ("worker", 1, "Child")
    assert sess["kind"] == "supervisor" and sess["extra"]["max_children"] == 4
    assert [c["id"] for c in sess["children"]] == ["sess_1"]
    assert set(fast) >= {"uptime_s", "mailbox_depth", "mailbox_bound", "messages_handled", "extra", "children"}
    text = render_tree(await snapshot(root.ref))
    assert text.splitlines()[0].startswith("node [supervisor Supervisor] running")
    assert "└── sess_1 [worker Child] running" in text
    await root.stop()


async def test_a_supervisor_ignores_unexpected_messages_and_lives_on() -> None:
    ref = await spawn(Supervisor(), "sup")
    await ref.tell("what is this")
    assert await SupervisorHandle(ref).which_children() == [] and ref.alive
    await ref.stop()


async def test_stopping_an_actor_that_is_already_stopping_waits_until_its_on_stop_is_over() -> None:
    # Supervisors rely on this for reverse-order stops: a child that is stopping on its own (a nested
    # supervisor that gave up, stopping its children) must be over before its older siblings are stopped.
    stopping, release = asyncio.Event(), asyncio.Event()

    class SlowToStop(Actor):
        finished = False

        async def receive(self, message: Any) -> None:
            self.stop_self()

        async def on_stop(self, reason: ExitReason) -> None:
            stopping.set()
            await release.wait()
            self.finished = True

    actor = SlowToStop()
    ref = await spawn(actor, "slow")
    await ref.tell("finish")
    await stopping.wait()
    asyncio.get_running_loop().call_later(0.01, release.set)
    await ref.stop(timeout_s=5)
    assert actor.finished
