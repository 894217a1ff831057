"""Transcript assembly (DESIGN §5): finals in order, the full transcript, and the stable part of partials.

Pure: no asyncio, no I/O. The session actor feeds it and turns what it returns into events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dalston.wer import word_key

if TYPE_CHECKING:
    from dalston.actors.speech.decoder import Word


class FinalOutOfOrder(ValueError):
    """A final that starts before the one published last: the session's ordering invariant was broken."""


@dataclass(frozen=True)
class AssembledFinal:
    text: str
    start_s: float
    end_s: float
    words: tuple[Word, ...] | None = None
    language: str = ""


class TranscriptAssembler:
    """Keeps the finals of one session in time order; `transcript` is their texts joined by single spaces."""

    def __init__(self) -> None:
        self._finals: list[AssembledFinal] = []

    def add_final(self, text: str, start_s: float, end_s: float, *, words: tuple[Word, ...] | None = None,
                  language: str = "") -> AssembledFinal:
        """Append one final; raise FinalOutOfOrder if it starts before the previous one or ends before it starts."""
        if end_s < start_s:
            raise FinalOutOfOrder(f"final ends at {end_s:.3f} s before it starts at {start_s:.3f} s")
        if self._finals and start_s < self._finals[-1].start_s:
            raise FinalOutOfOrder(
                f"final at {start_s:.3f} s arrived after one at {self._finals[-1].start_s:.3f} s")
        final = AssembledFinal(" ".join(text.split()), start_s, end_s, words, language)
        self._finals.append(final)
        return final

    @property
    def finals(self) -> tuple[AssembledFinal, ...]:
        return tuple(self._finals)

    @property
    def transcript(self) -> str:
        return " ".join(final.text for final in self._finals if final.text)

    def statistics(self) -> dict[str, int | float]:
        return {"finals": len(self._finals), "words": len(self.transcript.split()),
                "end_s": self._finals[-1].end_s if self._finals else 0.0}


@dataclass(frozen=True)
class PartialView:
    """What to show for an utterance in progress: `stable_text` will not change any more within it."""

    text: str
    stable_text: str
    unstable_text: str


def common_prefix_length(hypotheses: Sequence[Sequence[str]]) -> int:
    """Number of leading keys all the given key lists share."""
    if not hypotheses:
        return 0
    length = 0
    for column in zip(*hypotheses, strict=False):
        if any(key != column[0] for key in column[1:]):
            break
        length += 1
    return length


class PartialStabilizer:
    """Local agreement over consecutive partial decodes of one utterance.

    The stable prefix grows to the longest word prefix the last `agreement` hypotheses share (words compared
    without case or punctuation, shown as first committed). It never shrinks until `reset()`, which the
    session calls when the utterance ends. A hypothesis that contradicts the stable prefix leaves it as it is;
    the words after it in that hypothesis are shown as unstable.
    """

    def __init__(self, agreement: int = 2) -> None:
        if agreement < 1:
            raise ValueError("agreement must be at least 1")
        self.agreement = agreement
        self._recent: deque[list[str]] = deque(maxlen=agreement)
        self._stable: list[str] = []

    @property
    def stable_words(self) -> tuple[str, ...]:
        return tuple(self._stable)

    def update(self, text: str) -> PartialView:
        words = text.split()
        keys = [word_key(word) for word in words]
        self._recent.append(keys)
        if len(self._recent) == self.agreement:
            self._extend_stable(words, keys)
        unstable = words[len(self._stable):]
        stable_text = " ".join(self._stable)
        unstable_text = " ".join(unstable)
        return PartialView(" ".join(self._stable + unstable), stable_text, unstable_text)

    def reset(self) -> None:
        self._recent.clear()
        self._stable.clear()

    def _extend_stable(self, words: list[str], keys: list[str]) -> None:
        agreed = common_prefix_length(list(self._recent))
        committed = len(self._stable)
        if agreed <= committed:
            return
        if keys[:committed] != [word_key(word) for word in self._stable]:
            return  # the agreed words follow a different start than the committed one: wait
        self._stable.extend(words[committed:agreed])
