"""Behaviour of the actor runtime (DESIGN §3)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from dalston.actors.mailbox import MailboxFull, Superseded
from dalston.actors.runtime import (
    NORMAL,
    SHUTDOWN,
    Actor,
    ActorDead,
    Down,
    ExitReason,
    StartFailed,
    spawn,
)


@dataclass(frozen=True)
class Echo:
    value: Any


@dataclass(frozen=True)
class Fail:
    text: str


@dataclass(frozen=True)
class Block:
    release: asyncio.Event


@dataclass(frozen=True)
class Partial:
    session: str
    n: int

    def latest_wins_key(self) -> str:
        return self.session


class Worker(Actor):
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.stopped_with: ExitReason | None = None

    async def receive(self, message: Any) -> Any:
        match message:
            case Echo(value):
                self.seen.append(value)
                return value
            case Fail(text):
                raise ValueError(text)
            case Block(release):
                await release.wait()
                return "released"
            case Partial():
                self.seen.append(message)
                return message.n
            case Down():
                self.seen.append(message)
                return None
        return await super().receive(message)

    async def on_stop(self, reason: ExitReason) -> None:
        self.stopped_with = reason


async def test_ask_returns_the_reply_and_tell_is_handled_in_order() -> None:
    worker = Worker()
    ref = await spawn(worker, "w")
    for i in range(5):
        await ref.tell(Echo(i))
    assert await ref.ask(Echo("last"), timeout=1) == "last"
    assert worker.seen == [0, 1, 2, 3, 4, "last"]
    await ref.stop()


async def test_an_error_in_an_ask_goes_to_the_asker_and_the_actor_lives_on() -> None:
    ref = await spawn(Worker(), "w")
    with pytest.raises(ValueError, match="boom"):
        await ref.ask(Fail("boom"), timeout=1)
    assert ref.alive
    assert await ref.ask(Echo(1), timeout=1) == 1
    await ref.stop()


async def test_an_error_in_a_tell_crashes_the_actor_with_the_error_as_reason() -> None:
    worker = Worker()
    ref = await spawn(worker, "w")
    await ref.tell(Fail("bad"))
    reason = await asyncio.wait_for(ref.wait_stopped(), 1)
    assert reason.abnormal and isinstance(reason.error, ValueError)
    assert worker.stopped_with == reason
    with pytest.raises(ActorDead):
        await ref.tell(Echo(1))


async def test_a_full_mailbox_makes_tell_wait_and_tell_nowait_raise() -> None:
    release = asyncio.Event()
    ref = await spawn(Worker(), "w", mailbox_size=2)
    await ref.tell(Block(release))
    await asyncio.sleep(0)  # the actor takes Block and blocks on it
    await ref.tell(Echo(1))
    await ref.tell(Echo(2))
    with pytest.raises(MailboxFull):
        ref.tell_nowait(Echo(3))
    pending = asyncio.create_task(ref.tell(Echo(3)))
    await asyncio.sleep(0.01)
    assert not pending.done(), "tell must wait while the mailbox is full"
    release.set()
    await asyncio.wait_for(pending, 1)
    assert await ref.ask(Echo("done"), timeout=1) == "done"
    await ref.stop()


async def test_ask_times_out_and_the_timed_out_message_is_skipped() -> None:
    release = asyncio.Event()
    worker = Worker()
    ref = await spawn(worker, "w")
    await ref.tell(Block(release))
    with pytest.raises(TimeoutError):
        await ref.ask(Echo("late"), timeout=0.05)
    release.set()
    assert await ref.ask(Echo("next"), timeout=1) == "next"
    assert worker.seen == ["next"]
    await ref.stop()


async def test_queued_asks_fail_with_actor_dead_when_the_actor_stops() -> None:
    release = asyncio.Event()
    ref = await spawn(Worker(), "w")
    await ref.tell(Block(release))
    asks = [asyncio.create_task(ref.ask(Echo(i), timeout=5)) for i in range(3)]
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(ref.stop(timeout_s=0.05))
    results = await asyncio.gather(*asks, return_exceptions=True)
    assert all(isinstance(r, ActorDead) for r in results)
    assert (await stopping).kind == "killed"  # it was stuck in Block past the shutdown timeout


async def test_monitor_delivers_down_with_the_reason_to_the_watcher() -> None:
    watcher = Worker()
    watcher_ref = await spawn(watcher, "watcher")
    target = await spawn(Worker(), "target")
    target.monitor(watcher_ref)
    await target.tell(Fail("crash"))
    await target.wait_stopped()
    await watcher_ref.ask(Echo("sync"), timeout=1)
    downs = [m for m in watcher.seen if isinstance(m, Down)]
    assert len(downs) == 1 and downs[0].ref is target and downs[0].reason.abnormal
    await watcher_ref.stop()


async def test_monitoring_a_dead_actor_delivers_down_at_once() -> None:
    target = await spawn(Worker(), "target")
    await target.stop(NORMAL)
    got: list[ExitReason] = []
    target.monitor(lambda ref, reason: got.append(reason))
    await asyncio.sleep(0)
    assert got == [NORMAL]


async def test_latest_wins_messages_replace_the_queued_one_for_the_same_key() -> None:
    release = asyncio.Event()
    worker = Worker()
    ref = await spawn(worker, "w")
    await ref.tell(Block(release))
    await asyncio.sleep(0)
    first = asyncio.create_task(ref.ask(Partial("a", 1), timeout=1))
    await asyncio.sleep(0)
    await ref.tell(Partial("b", 1))
    await ref.tell(Partial("a", 2))
    release.set()
    with pytest.raises(Superseded):
        await first
    await ref.ask(Echo("sync"), timeout=1)
    assert [m for m in worker.seen if isinstance(m, Partial)] == [Partial("a", 2), Partial("b", 1)]
    await ref.stop()


async def test_a_failing_on_start_raises_start_failed_from_spawn() -> None:
    class Broken(Actor):
        async def on_start(self) -> None:
            raise RuntimeError("no model")

    with pytest.raises(StartFailed, match="no model"):
        await spawn(Broken(), "broken")


async def test_stop_runs_on_stop_with_the_given_reason() -> None:
    worker = Worker()
    ref = await spawn(worker, "w")
    assert await ref.stop(SHUTDOWN) == SHUTDOWN
    assert worker.stopped_with == SHUTDOWN and not ref.alive
    assert ref.statistics().status == "stopped"


async def test_cancelling_an_actor_task_propagates_and_stops_it_as_killed_without_on_stop() -> None:
    worker = Worker()
    ref = await spawn(worker, "w")
    assert ref._task is not None
    ref._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ref._task
    assert ref.exit_reason is not None and ref.exit_reason.kind == "killed"
    assert worker.stopped_with is None  # a kill is brutal: terminate does not run (OTP brutal_kill)


async def test_statistics_report_mailbox_depth_bound_and_messages_handled() -> None:
    release = asyncio.Event()
    ref = await spawn(Worker(), "w", mailbox_size=8)
    await ref.ask(Echo(1), timeout=1)
    await ref.tell(Block(release))
    await asyncio.sleep(0)
    await ref.tell(Echo(2))
    stats = ref.statistics()
    assert (stats.mailbox_depth, stats.mailbox_bound, stats.messages_handled) == (1, 8, 1)
    assert stats.status == "running" and stats.uptime_s >= 0
    release.set()
    await ref.stop()
