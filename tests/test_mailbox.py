"""The bounded mailbox: FIFO per sender, the bound held, nothing accepted lost, blocked senders served in order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dalston.actors.mailbox import Envelope, Mailbox, MailboxFull

SENDERS = 3

op = st.one_of(
    st.tuples(st.just("tell"), st.integers(0, SENDERS - 1)),
    st.tuples(st.just("tell_nowait"), st.integers(0, SENDERS - 1)),
    st.tuples(st.just("get"), st.just(0)),
    st.tuples(st.just("give_up"), st.integers(0, 50)),  # a blocked sender is cancelled (its tell timed out)
)


@dataclass
class Run:
    mailbox: Mailbox
    next_seq: list[int] = field(default_factory=lambda: [0] * SENDERS)
    sure: set[tuple[int, int]] = field(default_factory=set)  # accepted for certain
    maybe: set[tuple[int, int]] = field(default_factory=set)  # a tell cancelled while it was being admitted
    blocked_order: list[tuple[int, int]] = field(default_factory=list)
    waiting: list[tuple[asyncio.Task[None], tuple[int, int]]] = field(default_factory=list)
    got: list[tuple[int, int]] = field(default_factory=list)

    def message(self, sender: int) -> tuple[int, int]:
        self.next_seq[sender] += 1
        return (sender, self.next_seq[sender])

    async def step(self, kind: str, arg: int) -> None:
        if kind == "tell":
            message = self.message(arg)
            task = asyncio.create_task(self.mailbox.put(Envelope(message)))
            await asyncio.sleep(0)
            if task.done():
                self.sure.add(message)
            else:
                self.blocked_order.append(message)
                self.waiting.append((task, message))
        elif kind == "tell_nowait":
            message = self.message(arg)
            try:
                self.mailbox.put_nowait(Envelope(message))
                self.sure.add(message)
            except MailboxFull:
                pass
        elif kind == "get" and len(self.mailbox):
            self.got.append((await self.mailbox.get()).message)
        elif kind == "give_up" and self.waiting:
            task, message = self.waiting.pop(arg % len(self.waiting))
            task.cancel()
            self.maybe.add(message)
        await asyncio.sleep(0)
        self.settle()
        assert self.mailbox._bounded_count <= self.mailbox.bound

    def settle(self) -> None:
        for task, message in list(self.waiting):
            if task.done():
                self.waiting.remove((task, message))
                self.sure.add(message)

    async def drain(self) -> None:
        while len(self.mailbox) or self.waiting:
            self.got.append((await self.mailbox.get()).message)
            await asyncio.sleep(0)
            self.settle()


@settings(max_examples=300, deadline=None)
@given(bound=st.integers(1, 4), ops=st.lists(op, max_size=60))
def test_any_interleaving_keeps_fifo_per_sender_the_bound_and_every_accepted_message(
    bound: int, ops: list[tuple[str, int]]
) -> None:
    async def scenario() -> Run:
        run = Run(Mailbox(bound))
        for kind, arg in ops:
            await run.step(kind, arg)
        await run.drain()
        return run

    run = asyncio.run(scenario())
    got = set(run.got)
    assert len(got) == len(run.got), "a message was delivered twice"
    assert run.sure <= got, "an accepted message was lost"
    assert got <= run.sure | run.maybe, "a message never accepted was delivered"
    for sender in range(SENDERS):
        seqs = [seq for s, seq in run.got if s == sender]
        assert seqs == sorted(seqs), f"sender {sender} out of order"
    admitted = [m for m in run.got if m in set(run.blocked_order) and m not in run.maybe]
    assert admitted == [m for m in run.blocked_order if m in admitted], "blocked senders served out of order"


async def test_a_freed_slot_goes_to_the_first_blocked_sender_and_a_newcomer_cannot_take_it() -> None:
    mailbox = Mailbox(1)
    mailbox.put_nowait(Envelope("first"))
    blocked = [asyncio.create_task(mailbox.put(Envelope(f"blocked-{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    assert (await mailbox.get()).message == "first"
    try:  # the slot is promised to blocked-0, even before it runs again
        mailbox.put_nowait(Envelope("newcomer"))
        raise AssertionError("a newcomer took the slot a blocked sender was waiting for")
    except MailboxFull:
        pass
    await asyncio.sleep(0)
    assert [t.done() for t in blocked] == [True, False, False]  # one slot freed, one sender woken
    assert (await mailbox.get()).message == "blocked-0"
    await asyncio.sleep(0)
    assert [t.done() for t in blocked] == [True, True, False]
    assert mailbox.statistics().blocked_senders == 1
    mailbox.close()
    await asyncio.gather(*blocked, return_exceptions=True)
