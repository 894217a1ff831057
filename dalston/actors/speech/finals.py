"""The finals of one session waiting for their decodes, published strictly in speech order (pure).

A final can be decoded before its end is confirmed: when a pause starts, the session asks for a decode of the
segment as it stands (tentative); if the silence holds long enough it is confirmed and published as soon as its
decode is back; if speech resumes it is withdrawn and its result, when it comes, is ignored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PendingFinal:
    utterance_id: int
    request_id: int
    start_sample: int
    end_sample: int
    confirmed: bool
    audio: np.ndarray = field(repr=False)  # kept until answered: a restarted model must decode it again
    result: Any | None = None
    error: str | None = None
    answered: bool = field(default=False)
    stable_prefix: str = ""  # the utterance's stable partial when it ended: a final contradicting it is redone


_NO_AUDIO = np.zeros(0, dtype=np.float32)


class PendingFinals:
    def __init__(self) -> None:
        self._queue: deque[PendingFinal] = deque()
        self.withdrawn = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, final: PendingFinal) -> None:
        if self._queue and self._queue[-1].end_sample > final.start_sample:
            raise ValueError("finals must be added in speech order and must not overlap")
        self._queue.append(final)

    def tentative(self) -> PendingFinal | None:
        """The last final if its end is not confirmed yet (there is at most one: the current pause)."""
        if self._queue and not self._queue[-1].confirmed:
            return self._queue[-1]
        return None

    def withdraw_tentative(self) -> PendingFinal | None:
        final = self.tentative()
        if final is not None:
            self._queue.pop()
            self.withdrawn += 1
        return final

    def answer(self, request_id: int, result: Any | None, error: str | None) -> bool:
        """Attach a decode's answer; False if no pending final asked for it (it was withdrawn)."""
        for final in self._queue:
            if final.request_id == request_id:
                final.result, final.error, final.answered = result, error, True
                final.audio = _NO_AUDIO  # the decode is done: free the segment's samples
                return True
        return False

    def pop_ready(self) -> list[PendingFinal]:
        """Remove and return the finals at the head that are confirmed and answered, in order."""
        ready = []
        while self._queue and self._queue[0].confirmed and self._queue[0].answered:
            ready.append(self._queue.popleft())
        return ready

    def unanswered(self) -> list[PendingFinal]:
        return [final for final in self._queue if not final.answered]
