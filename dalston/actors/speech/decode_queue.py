"""Which decode runs next: finals before partials, partials "latest wins" per session (pure, no asyncio).

Finals are served first-come first-served, so no final ever waits behind a partial. A session has at most one
partial queued: a newer request replaces the older one, and partials of an utterance that has ended are dropped.
Among partials, the one waiting longest goes first, so under load every session's interim text thins out evenly.
Requests of one kind waiting at the same moment can be taken together as one batch (`take_batch`).
The caller says whether a partial may start at all and which sessions already have one running.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Schedulable(Protocol):
    @property
    def session_id(self) -> str: ...
    @property
    def utterance_id(self) -> int: ...
    @property
    def request_id(self) -> int: ...
    @property
    def final(self) -> bool: ...


R = TypeVar("R", bound=Schedulable)


@dataclass(frozen=True)
class QueueStatistics:
    finals_queued: int
    partials_queued: int
    partials_replaced: int
    partials_dropped: int
    finals_cancelled: int


class DecodeQueue(Generic[R]):
    def __init__(self) -> None:
        self._finals: deque[R] = deque()
        self._partials: dict[str, R] = {}  # insertion order = waiting order
        self._replaced = 0
        self._dropped = 0
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._finals) + len(self._partials)

    def submit(self, request: R) -> None:
        if request.final:
            self._finals.append(request)
            return
        if request.session_id in self._partials:
            self._replaced += 1  # assigning an existing key keeps its place in line
        self._partials[request.session_id] = request

    def next(self, *, allow_partials: bool = True, busy_sessions: Container[str] = ()) -> R | None:
        """The next request to run: a final if any; else, when `allow_partials`, the longest-waiting partial
        of a session not in `busy_sessions` (those already have a partial running: a second would be stale)."""
        if self._finals:
            return self._finals.popleft()
        if allow_partials:
            for session_id in self._partials:
                if session_id not in busy_sessions:
                    return self._partials.pop(session_id)
        return None

    def resubmit(self, request: R) -> None:
        """Put back a final that must be decoded again (its batch's output was degenerate): it goes first."""
        self._finals.appendleft(request)

    def take_batch(self, first: R, limit: int, same_batch: Callable[[R], bool],
                   busy_sessions: Container[str] = ()) -> list[R]:
        """`first` (just served by `next`) and up to `limit` - 1 more requests of its kind already queued for
        which `same_batch` holds, oldest first. Only what is waiting now: a batch never waits to fill."""
        batch = [first]
        if first.final:
            for request in list(self._finals):
                if len(batch) >= limit:
                    break
                if same_batch(request):
                    self._finals.remove(request)
                    batch.append(request)
            return batch
        for session_id, request in list(self._partials.items()):
            if len(batch) >= limit:
                break
            if session_id not in busy_sessions and session_id != first.session_id and same_batch(request):
                del self._partials[session_id]
                batch.append(request)
        return batch

    def utterance_ended(self, session_id: str, utterance_id: int) -> None:
        """Drop the session's queued partial if it belongs to an utterance that has ended."""
        partial = self._partials.get(session_id)
        if partial is not None and partial.utterance_id <= utterance_id:
            del self._partials[session_id]
            self._dropped += 1

    def cancel(self, session_id: str, request_id: int) -> bool:
        """Withdraw one queued request (a tentative final whose speech resumed); False if not queued."""
        partial = self._partials.get(session_id)
        if partial is not None and partial.request_id == request_id:
            del self._partials[session_id]
            self._dropped += 1
            return True
        for request in self._finals:
            if request.session_id == session_id and request.request_id == request_id:
                self._finals.remove(request)
                self._cancelled += 1
                return True
        return False

    def cancel_session(self, session_id: str) -> int:
        """Withdraw everything a session queued (it has stopped); returns how many."""
        before = len(self)
        self._partials.pop(session_id, None)
        self._finals = deque(r for r in self._finals if r.session_id != session_id)
        removed = before - len(self)
        self._cancelled += removed
        return removed

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            finals_queued=len(self._finals),
            partials_queued=len(self._partials),
            partials_replaced=self._replaced,
            partials_dropped=self._dropped,
            finals_cancelled=self._cancelled,
        )
