"""A bounded mailbox with backpressure and an opt-in "latest wins" message kind.

The mailbox holds envelopes in three lanes:
- ordinary messages, bounded: a full mailbox makes `put` wait (or `put_nowait` raise `MailboxFull`);
- signals (`put_signal`, e.g. `Down`) go in the same FIFO lane but ignore the bound: refusing them would let a
  full mailbox wedge its supervisor, and queueing them behind earlier messages keeps Erlang's per-pair order
  (a `Down` never overtakes what the dead actor sent before it died);
- urgent signals (`put_urgent`: stop requests, timer ticks) go ahead of everything else.

Nothing is dropped, except that a message declaring itself "latest wins" replaces a queued message with the same
key instead of queueing behind it. Blocked senders wait in one FIFO line; each freed slot is handed to the first
of them directly (its envelope goes into the queue and it is woken), so wake-ups are O(1) and strictly in order,
and a later `put_nowait` can never take the slot a blocked sender was promised.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class MailboxFull(Exception):
    """`tell_nowait` on a mailbox that is at its bound."""


class MailboxClosed(Exception):
    """The mailbox's actor has stopped; nothing more is accepted."""


class Superseded(Exception):
    """An `ask` whose "latest wins" message was replaced by a newer one before it was handled."""


@runtime_checkable
class LatestWins(Protocol):
    """A message kind where only the newest queued instance per key matters (an interim decode, say)."""

    def latest_wins_key(self) -> Hashable: ...


@dataclass(eq=False)
class Envelope:
    message: Any
    reply: asyncio.Future[Any] | None = None  # set for `ask`
    bounded: bool = True  # False for signals, which do not count toward the bound


@dataclass(eq=False)
class _BlockedSender:
    envelope: Envelope
    admitted: asyncio.Future[None]


@dataclass(frozen=True)
class MailboxStatistics:
    depth: int  # messages and signals queued
    bound: int
    blocked_senders: int
    replaced: int  # "latest wins" messages that replaced a queued one


class Mailbox:
    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("a mailbox bound must be at least 1")
        self.bound = bound
        self._items: deque[Envelope] = deque()
        self._urgent: deque[Envelope] = deque()
        self._bounded_count = 0  # ordinary messages in `_items` (signals are not counted)
        self._latest: dict[Hashable, Envelope] = {}
        self._blocked: deque[_BlockedSender] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._closed = False
        self._replaced_count = 0

    def __len__(self) -> int:
        return len(self._items) + len(self._urgent)

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        blocked = sum(not sender.admitted.done() for sender in self._blocked)
        return MailboxStatistics(len(self), self.bound, blocked, self._replaced_count)

    # -- putting ------------------------------------------------------------------------------------------

    async def put(self, envelope: Envelope) -> None:
        """Queue an ordinary message, waiting in line while the mailbox is full."""
        if self._closed:
            raise MailboxClosed
        if self._replace(envelope):
            return
        if self._has_room():
            self._append(envelope)
            return
        sender = _BlockedSender(envelope, asyncio.get_running_loop().create_future())
        self._blocked.append(sender)
        try:
            await sender.admitted
        except asyncio.CancelledError:
            # A sender that gives up stays in the line and is skipped when reached. (One admitted in the same
            # instant as its cancel has its message queued, as with asyncio.Queue.)
            sender.admitted.cancel()
            raise

    def put_nowait(self, envelope: Envelope) -> None:
        if self._closed:
            raise MailboxClosed
        if self._replace(envelope):
            return
        if not self._has_room():
            raise MailboxFull(f"mailbox full ({self.bound} messages)")
        self._append(envelope)

    def put_signal(self, envelope: Envelope) -> None:
        """Queue a signal in FIFO order with the messages, ignoring the bound."""
        if self._closed:
            raise MailboxClosed
        envelope.bounded = False
        self._items.append(envelope)
        self._wake_getter()

    def put_urgent(self, envelope: Envelope) -> None:
        """Queue a signal ahead of every message, ignoring the bound."""
        if self._closed:
            raise MailboxClosed
        envelope.bounded = False
        self._urgent.append(envelope)
        self._wake_getter()

    # -- getting ------------------------------------------------------------------------------------------

    async def get(self) -> Envelope:
        """The next envelope (urgent ones first); only the mailbox's owner calls this."""
        while not self._items and not self._urgent:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        if self._urgent:
            return self._urgent.popleft()
        envelope = self._items.popleft()
        key = _latest_key(envelope.message)
        if key is not None and self._latest.get(key) is envelope:
            del self._latest[key]
        if envelope.bounded:
            self._bounded_count -= 1
            self._admit_next()
        return envelope

    def remove_signals(self, matches: Callable[[Any], bool]) -> int:
        """Withdraw queued signals whose message `matches` (a flushed `Down`); how many were removed."""
        kept = deque(e for e in self._items if e.bounded or not matches(e.message))
        removed = len(self._items) - len(kept)
        self._items = kept
        return removed

    def close(self) -> list[Envelope]:
        """Refuse further messages; return what was queued (the caller fails the asks in it).

        Blocked senders are woken with `MailboxClosed`: their messages were never accepted.
        """
        self._closed = True
        left = [*self._urgent, *self._items]
        for sender in self._blocked:
            if not sender.admitted.done():
                sender.admitted.set_exception(MailboxClosed())
        self._urgent.clear()
        self._items.clear()
        self._blocked.clear()
        self._latest.clear()
        self._bounded_count = 0
        return left

    # -- internals ----------------------------------------------------------------------------------------

    def _has_room(self) -> bool:
        """A slot is free and nobody is waiting in line for it."""
        return self._bounded_count < self.bound and self._head_of_line() is None

    def _head_of_line(self) -> _BlockedSender | None:
        """The first blocked sender still waiting, after dropping the ones that gave up (O(1) amortised)."""
        while self._blocked and self._blocked[0].admitted.done():
            self._blocked.popleft()
        return self._blocked[0] if self._blocked else None

    def _append(self, envelope: Envelope) -> None:
        self._items.append(envelope)
        self._bounded_count += 1
        key = _latest_key(envelope.message)
        if key is not None:
            self._latest[key] = envelope
        self._wake_getter()

    def _admit_next(self) -> None:
        """Hand the freed slot to the first blocked sender, if any."""
        sender = self._head_of_line()
        if sender is None:
            return
        self._blocked.popleft()
        sender.admitted.set_result(None)
        if not self._replace(sender.envelope):
            self._append(sender.envelope)

    def _wake_getter(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    def _replace(self, envelope: Envelope) -> bool:
        """Swap a queued "latest wins" message for this newer one, in its queue position."""
        key = _latest_key(envelope.message)
        old = self._latest.get(key) if key is not None else None
        if old is None:
            return False
        if old.reply is not None and not old.reply.done():
            old.reply.set_exception(Superseded())
        old.message, old.reply = envelope.message, envelope.reply
        self._replaced_count += 1
        return True


def _latest_key(message: Any) -> Hashable | None:
    if isinstance(message, LatestWins):
        return (type(message), message.latest_wins_key())
    return None
