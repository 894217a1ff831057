"""A bounded mailbox with backpressure and an opt-in "latest wins" message kind.

The mailbox holds envelopes. A full mailbox makes `put` wait (or `put_nowait` raise `MailboxFull`); nothing is
dropped, except that a message declaring itself "latest wins" replaces a queued message with the same key
instead of queueing behind it. System signals (stop, `Down`) bypass the bound: refusing them would let a
full mailbox wedge its supervisor.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
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
    system: bool = False  # stop signals and Down bypass the bound and are handled first
    replaced: bool = field(default=False, compare=False)


class Mailbox:
    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError("a mailbox bound must be at least 1")
        self.bound = bound
        self._items: deque[Envelope] = deque()
        self._system: deque[Envelope] = deque()
        self._latest: dict[Hashable, Envelope] = {}
        self._has_items = asyncio.Event()
        self._has_space = asyncio.Event()
        self._has_space.set()
        self._closed = False
        self.replaced_count = 0

    def __len__(self) -> int:
        return len(self._items) + len(self._system)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, envelope: Envelope) -> None:
        while not self._closed and not self._replace(envelope) and len(self._items) >= self.bound:
            self._has_space.clear()
            await self._has_space.wait()
        if envelope.replaced:
            return
        self.put_nowait(envelope)

    def put_nowait(self, envelope: Envelope) -> None:
        if self._closed:
            raise MailboxClosed
        if envelope.replaced or self._replace(envelope):
            return
        if len(self._items) >= self.bound:
            raise MailboxFull(f"mailbox full ({self.bound} messages)")
        self._items.append(envelope)
        key = _latest_key(envelope.message)
        if key is not None:
            self._latest[key] = envelope
        self._has_items.set()

    def put_system(self, envelope: Envelope) -> None:
        """Queue a system signal, ignoring the bound (it is never refused while open)."""
        if self._closed:
            raise MailboxClosed
        envelope.system = True
        self._system.append(envelope)
        self._has_items.set()

    async def get(self) -> Envelope:
        while not self._items and not self._system:
            self._has_items.clear()
            await self._has_items.wait()
        if self._system:
            return self._system.popleft()
        envelope = self._items.popleft()
        key = _latest_key(envelope.message)
        if key is not None and self._latest.get(key) is envelope:
            del self._latest[key]
        self._has_space.set()
        return envelope

    def close(self) -> list[Envelope]:
        """Refuse further messages; return what was still queued (the caller fails the asks in it)."""
        self._closed = True
        left = [*self._system, *self._items]
        self._system.clear()
        self._items.clear()
        self._latest.clear()
        self._has_space.set()  # wake blocked putters so they see the mailbox closed
        return left

    def _replace(self, envelope: Envelope) -> bool:
        """Swap a queued "latest wins" message for this newer one, in its queue position."""
        key = _latest_key(envelope.message)
        old = self._latest.get(key) if key is not None else None
        if old is None:
            return False
        if old.reply is not None and not old.reply.done():
            old.reply.set_exception(Superseded())
        old.message, old.reply = envelope.message, envelope.reply
        envelope.replaced = True
        self.replaced_count += 1
        return True


def _latest_key(message: Any) -> Hashable | None:
    if isinstance(message, LatestWins):
        return (type(message), message.latest_wins_key())
    return None
