"""The process layer as OTP means it (issue 9): kill, pending asks, monitors, calls to self, ownership.

One test per reproduced defect; each failed on the runtime before this behaviour was built. No timed
assertions: "bounded" is checked against a wait far longer than the bound (a hang shows as a timeout).
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import Any

import pytest

from dalston.actors.runtime import (
    KILL_WAIT_S,
    Actor,
    ActorDead,
    ActorRef,
    CalledSelf,
    Down,
    ExitReason,
    root_actors,
    spawn,
)
from dalston.supervisor.spec import BRUTAL_KILL, INFINITY, ChildSpec, Restart, worker_spec
from dalston.supervisor.supervisor import start_supervisor, supervisor_spec

HANG_S = 10 * KILL_WAIT_S  # a wait this long means the bounded operation did not return


@dataclass(frozen=True)
class Hold:
    release: asyncio.Event


@dataclass(frozen=True)
class Note:
    text: str


class Recorder(Actor):
    def __init__(self) -> None:
        self.got: list[Any] = []

    async def receive(self, message: Any) -> Any:
        match message:
            case Hold(release):
                await release.wait()
            case _:
                self.got.append(message)
        return None


class BlockingOnStop(Actor):
    """Its on_stop awaits a tell to a full mailbox, as the session actor's once did."""

    def __init__(self, target: ActorRef) -> None:
        self.target = target

    async def receive(self, message: Any) -> None:
        return None

    async def on_stop(self, reason: ExitReason) -> None:
        await self.target.tell(Note("never fits"))


async def full_recorder() -> tuple[ActorRef, asyncio.Event]:
    release = asyncio.Event()
    ref = await spawn(Recorder(), "full", mailbox_size=1)
    await ref.tell(Hold(release))
    await asyncio.sleep(0)
    await ref.tell(Note("fills it"))
    return ref, release


# -- 1. kill kills --------------------------------------------------------------------------------------------


async def test_stop_with_a_timeout_returns_killed_even_when_on_stop_blocks() -> None:
    full, release = await full_recorder()
    ref = await spawn(BlockingOnStop(full), "blocking")
    reason = await asyncio.wait_for(ref.stop(timeout_s=0.2), HANG_S)
    assert reason.kind == "killed" and ref.stopped
    release.set()
    await full.stop()


async def test_a_supervisor_stops_a_child_whose_on_stop_blocks_within_its_shutdown_s() -> None:
    full, release = await full_recorder()
    spec = worker_spec("blocking", lambda: BlockingOnStop(full), shutdown_s=0.2)
    sup = await start_supervisor([spec])
    (child,) = await sup.which_children()
    assert await asyncio.wait_for(sup.stop(), HANG_S) == ExitReason("shutdown")
    assert child.ref is not None and child.ref.exit_reason == ExitReason("killed")
    release.set()
    await full.stop()


class StopJournal(Actor):
    def __init__(self, stops: list[str], name: str) -> None:
        self.stops, self.name = stops, name

    async def receive(self, message: Any) -> None:
        if isinstance(message, Hold):
            await message.release.wait()

    async def on_stop(self, reason: ExitReason) -> None:
        await asyncio.sleep(0.01)
        self.stops.append(self.name)


async def test_kill_on_a_busy_supervisor_kills_its_subtree_without_graceful_shutdown() -> None:
    stops: list[str] = []
    tree = [worker_spec("a", lambda: StopJournal(stops, "a")),
            supervisor_spec("inner", [worker_spec("b", lambda: StopJournal(stops, "b"))])]
    sup = await start_supervisor(tree)
    # Busy: the supervisor is inside an ask whose child start never finishes.
    never = asyncio.Event()

    async def hanging_start(restarts: int) -> ActorRef:
        await never.wait()
        raise AssertionError("unreachable")

    pending = asyncio.create_task(sup.start_child(ChildSpec("hangs", hanging_start)))
    await asyncio.sleep(0.01)
    before = asyncio.all_tasks()
    assert await asyncio.wait_for(sup.ref.kill(), HANG_S) == ExitReason("killed")
    assert stops == []  # nobody's on_stop ran: a kill is brutal all the way down
    with pytest.raises(ActorDead):
        await asyncio.wait_for(pending, HANG_S)
    assert {t for t in asyncio.all_tasks() - {asyncio.current_task()} if t in before and not t.done()} == set()


# -- 3. the ask being handled fails at once -------------------------------------------------------------------


async def test_the_ask_being_handled_fails_with_actor_dead_as_soon_as_its_actor_dies() -> None:
    ref = await spawn(Recorder(), "busy")
    asking = asyncio.create_task(ref.ask(Hold(asyncio.Event()), timeout=HANG_S))
    await asyncio.sleep(0.01)
    await ref.kill()
    with pytest.raises(ActorDead) as dead:
        await asyncio.wait_for(asking, KILL_WAIT_S)
    assert dead.value.reason == ExitReason("killed")


async def test_a_pending_start_child_fails_when_its_supervisor_is_stopped() -> None:
    never = asyncio.Event()

    async def hanging_start(restarts: int) -> ActorRef:
        await never.wait()
        raise AssertionError("unreachable")

    sup = await start_supervisor([])
    pending = asyncio.create_task(sup.start_child(ChildSpec("hangs", hanging_start), timeout_s=HANG_S))
    await asyncio.sleep(0.01)
    await sup.ref.stop(timeout_s=0.1)
    with pytest.raises(ActorDead):
        await asyncio.wait_for(pending, KILL_WAIT_S)


# -- 4. monitors ----------------------------------------------------------------------------------------------


class SlowStop(Actor):
    def __init__(self) -> None:
        self.stop_finished = False

    async def receive(self, message: Any) -> None:
        return None

    async def on_stop(self, reason: ExitReason) -> None:
        await asyncio.sleep(0.05)
        self.stop_finished = True


async def test_down_is_delivered_only_after_on_stop_has_finished() -> None:
    actor = SlowStop()
    ref = await spawn(actor, "slow")
    seen: list[bool] = []
    ref.monitor(lambda _ref, _reason: seen.append(actor.stop_finished))
    watcher = Recorder()
    watcher_ref = await spawn(watcher, "watcher")
    stopping = asyncio.create_task(ref.stop())
    await asyncio.sleep(0.01)  # on_stop is running now: a monitor set now must wait for it too
    ref.monitor(lambda _ref, _reason: seen.append(actor.stop_finished))
    ref.monitor(watcher_ref)
    await asyncio.sleep(0)
    assert seen == [] and watcher.got == [] and ref.exit_reason is not None
    await stopping
    await asyncio.sleep(0)
    await watcher_ref.ask(Note("sync"), timeout=1)
    assert seen == [True, True] and [type(m) for m in watcher.got] == [Down, Note]
    await watcher_ref.stop()


async def test_a_watcher_callback_that_raises_does_not_keep_the_others_from_hearing() -> None:
    ref = await spawn(Recorder(), "target")
    heard: list[str] = []

    def broken(_ref: ActorRef, _reason: ExitReason) -> None:
        raise RuntimeError("a buggy watcher")

    ref.monitor(lambda _r, _x: heard.append("first"))
    ref.monitor(broken)
    ref.monitor(lambda _r, _x: heard.append("last"))
    await ref.stop()
    assert heard == ["first", "last"]


async def test_demonitor_inside_a_callback_withdraws_the_other_monitor_without_error() -> None:
    ref = await spawn(Recorder(), "target")
    heard: list[str] = []
    handles: dict[str, int] = {}
    handles["first"] = ref.monitor(lambda _r, _x: (heard.append("first"), ref.demonitor(handles["second"])))
    handles["second"] = ref.monitor(lambda _r, _x: heard.append("second"))
    ref.monitor(lambda _r, _x: heard.append("third"))
    await ref.stop()
    assert heard == ["first", "third"]


class Flusher(Actor):
    """Demonitors with flush before it gets to a Down already in its mailbox."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    async def receive(self, message: Any) -> None:
        match message:
            case (ActorRef() as target, int(handle), Hold(release)):
                await release.wait()  # meanwhile the target dies and its Down is queued here
                target.demonitor(handle, flush=True)
            case _:
                self.got.append(message)


async def test_demonitor_with_flush_withdraws_a_down_already_queued() -> None:
    flusher = Flusher()
    watcher = await spawn(flusher, "flusher")
    target = await spawn(Recorder(), "target")
    handle = target.monitor(watcher)
    release = asyncio.Event()
    await watcher.tell((target, handle, Hold(release)))
    await asyncio.sleep(0)
    await target.stop()
    assert len(watcher._mailbox) == 1  # the Down waits in the mailbox
    release.set()
    await watcher.ask(Note("sync"), timeout=1)
    assert flusher.got == [Note("sync")]
    await watcher.stop()


async def test_dead_watchers_are_removed_from_the_actor_they_watched() -> None:
    target = await spawn(Recorder(), "target")
    watchers = [await spawn(Recorder(), f"w{i}") for i in range(200)]
    for watcher in watchers:
        target.monitor(watcher)
    await asyncio.gather(*(w.stop() for w in watchers))
    assert target._monitors.on_me == {}
    await target.stop()


class Sender(Actor):
    def __init__(self, to: ActorRef) -> None:
        self.to = to

    async def receive(self, message: Any) -> None:
        await self.to.tell(Note("sent before dying"))
        raise RuntimeError("dies right after")


async def test_down_never_overtakes_a_message_the_dead_actor_sent_earlier() -> None:
    watcher_actor = Recorder()
    watcher = await spawn(watcher_actor, "watcher")
    release = asyncio.Event()
    await watcher.tell(Hold(release))  # the watcher is busy, so both arrive queued
    sender = await spawn(Sender(watcher), "sender")
    sender.monitor(watcher)
    await sender.tell("go")
    await sender.wait_stopped()
    release.set()
    await watcher.ask(Note("sync"), timeout=1)
    assert [type(m) for m in watcher_actor.got] == [Note, Down, Note]
    await watcher.stop()


# -- 5. calls to self -----------------------------------------------------------------------------------------


class SelfCaller(Actor):
    async def receive(self, message: str) -> Any:
        if message == "stop":
            await self.ref.stop()
        elif message == "ask":
            return await self.ref.ask("anything", timeout=HANG_S)
        return None


@pytest.mark.parametrize("call", ["stop", "ask"])
async def test_an_actor_that_waits_on_itself_fails_fast_with_called_self(call: str) -> None:
    ref = await spawn(SelfCaller(), "self-caller")
    with pytest.raises(CalledSelf, match=f"{call}\\(\\) on itself"):
        await asyncio.wait_for(ref.ask(call, timeout=HANG_S), KILL_WAIT_S)
    assert ref.alive  # the runtime did not kill it: the mistake went back to the asker
    await ref.stop()


# -- 6. ownership ---------------------------------------------------------------------------------------------


async def test_cancelling_a_supervisors_start_kills_the_children_it_had_started() -> None:
    started: list[ActorRef] = []
    never = asyncio.Event()

    class Tracked(Recorder):
        async def on_start(self) -> None:
            started.append(self.ref)

    async def hanging_start(restarts: int) -> ActorRef:
        await never.wait()
        raise AssertionError("unreachable")

    before = asyncio.all_tasks()
    starting = asyncio.create_task(start_supervisor([worker_spec("a", Tracked), ChildSpec("hangs", hanging_start)]))
    await asyncio.sleep(0.01)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert len(started) == 1 and started[0].exit_reason == ExitReason("killed")
    assert asyncio.all_tasks() - before == set()


async def test_an_actor_nobody_holds_a_ref_to_keeps_running_through_garbage_collection() -> None:
    watcher_actor = Recorder()
    watcher = await spawn(watcher_actor, "watcher")
    release = asyncio.Event()

    class Orphan(Actor):
        async def on_start(self) -> None:
            self.start_task(self.report_later())

        async def report_later(self) -> None:
            await release.wait()
            await watcher.tell(Note("still alive"))

    orphan = await spawn(Orphan(), "orphan")
    orphan.monitor(watcher)
    del orphan
    gc.collect()
    release.set()
    await asyncio.sleep(0.01)
    await watcher.ask(Note("sync"), timeout=1)
    assert watcher_actor.got == [Note("still alive"), Note("sync")]  # no Down(normal) from a collected task
    assert any(ref.name == "orphan" for ref in root_actors())
    for ref in root_actors():
        if ref.name == "orphan":
            await ref.stop()
    await watcher.stop()


# -- 7. dynamic children stop together ------------------------------------------------------------------------


async def test_dynamic_children_run_their_on_stop_concurrently() -> None:
    running, peak = 0, 0

    class Cleanup(Actor):
        async def receive(self, message: Any) -> None:
            return None

        async def on_stop(self, reason: ExitReason) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.1)
            running -= 1

    sup = await start_supervisor([], max_children=30)
    for i in range(30):
        await sup.start_child(worker_spec(f"s{i}", Cleanup, restart=Restart.TEMPORARY))
    await sup.stop()
    assert peak == 30


# -- shutdown kinds in a child spec ---------------------------------------------------------------------------


class SlowCleanup(Actor):
    def __init__(self, cleaned: list[str]) -> None:
        self.cleaned = cleaned

    async def receive(self, message: Any) -> None:
        return None

    async def on_stop(self, reason: ExitReason) -> None:
        await asyncio.sleep(0.3)
        self.cleaned.append("done")


@pytest.mark.parametrize(("shutdown_s", "reason", "cleaned"), [
    (BRUTAL_KILL, ExitReason("killed"), []),  # on_stop never runs
    (0.05, ExitReason("killed"), []),  # on_stop runs out of time and is cut off
    (INFINITY, ExitReason("shutdown"), ["done"]),  # on_stop takes the time it needs
])
async def test_a_childs_shutdown_is_brutal_kill_a_bound_or_infinity(
    shutdown_s: float, reason: ExitReason, cleaned: list[str]
) -> None:
    done: list[str] = []
    sup = await start_supervisor([worker_spec("c", lambda: SlowCleanup(done), shutdown_s=shutdown_s)])
    (child,) = await sup.which_children()
    await sup.stop()
    assert child.ref is not None and child.ref.exit_reason == reason and done == cleaned


async def test_an_owner_that_stops_cleanly_stops_what_it_owns_and_one_that_is_killed_kills_it() -> None:
    stopped: list[str] = []

    class Owned(Actor):
        async def receive(self, message: Any) -> None:
            return None

        async def on_stop(self, reason: ExitReason) -> None:
            stopped.append(str(reason))

    class Owner(Actor):
        async def on_start(self) -> None:
            self.owned = await spawn(Owned(), "owned")

    clean, brutal = Owner(), Owner()
    await (await spawn(clean, "clean")).stop()
    await (await spawn(brutal, "brutal")).kill()
    assert clean.owned.exit_reason == ExitReason("shutdown") and stopped == ["shutdown"]
    assert brutal.owned.exit_reason == ExitReason("killed")  # and its on_stop did not run
