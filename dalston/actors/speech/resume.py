"""A session taken over from a lost or drained worker (DESIGN §6, failover): its resume record, and the rewrite
that keeps the client's view of the call as one session.

The gateway replays the audio it kept from `offset_s` (session time) on; the new session counts its own samples
from zero, so every time it reports is shifted by `offset_s`. The finals already delivered are passed along:
a final of the replay that they already cover is not sent again, and `session.end` holds every final of the
whole call. Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dalston.actors.speech.protocol import (
    ChannelFinal,
    FinalTranscribed,
    PartialTranscribed,
    ServerEvent,
    SessionEnded,
    SpeechEnded,
    SpeechStarted,
    WordTiming,
)

# A final of the replay that ends no later than this after one already delivered is the same utterance again.
COVERED_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class ResumedFinal:
    text: str
    start: float
    end: float
    channel: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "channel": self.channel}


@dataclass(frozen=True)
class ResumeRecord:
    """Where the replay starts in session time, and the finals the client already has (in order)."""

    offset_s: float
    finals: tuple[ResumedFinal, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"offset_s": self.offset_s, "finals": [final.to_json() for final in self.finals]}

    @classmethod
    def from_json(cls, data: Any) -> ResumeRecord:
        if not isinstance(data, dict) or not isinstance(data.get("offset_s"), int | float):
            raise ValueError("a resume record needs offset_s")
        finals = data.get("finals", [])
        if not isinstance(finals, list):
            raise ValueError("resume finals must be a list")
        parsed = []
        for item in finals:
            if not isinstance(item, dict):
                raise ValueError("a resumed final must be an object")
            channel = item.get("channel")
            parsed.append(ResumedFinal(str(item.get("text", "")), float(item["start"]), float(item["end"]),
                                       None if channel is None else int(channel)))
        offset_s = float(data["offset_s"])
        if offset_s < 0:
            raise ValueError("offset_s must be >= 0")
        return cls(offset_s, tuple(parsed))


class ResumedSession:
    """Rewrites the events of a session that resumes a call: session time, no final twice, whole transcript."""

    def __init__(self, record: ResumeRecord) -> None:
        self.record = record
        self._last_end: dict[int | None, float] = {}
        for final in record.finals:
            self._last_end[final.channel] = max(final.end, self._last_end.get(final.channel, 0.0))
        self._finals: list[ResumedFinal] = list(record.finals)  # the whole call's, in the order sent

    def rewrite(self, event: ServerEvent) -> ServerEvent | None:
        """The event as the client must see it; None for a final the client already has."""
        offset = self.record.offset_s
        match event:
            case SpeechStarted() | SpeechEnded():
                return dataclasses.replace(event, timestamp=_at(event.timestamp + offset))
            case PartialTranscribed():
                return dataclasses.replace(event, start=_at(event.start + offset))
            case FinalTranscribed():
                return self._final(event)
            case SessionEnded():
                return self._ended(event)
        return event

    def _final(self, event: FinalTranscribed) -> FinalTranscribed | None:
        offset = self.record.offset_s
        last_end = self._last_end.get(event.channel)
        end = _at(event.end + offset)
        if last_end is not None and end <= last_end + COVERED_TOLERANCE_S:
            return None  # the replay decoded an utterance the client already has
        start = _at(event.start + offset)
        if last_end is not None:
            start = max(start, last_end)  # padding of the replay may reach back into the last final
        words = None if event.words is None else tuple(
            WordTiming(w.word, _at(w.start + offset), _at(w.end + offset), w.confidence) for w in event.words)
        self._last_end[event.channel] = end
        self._finals.append(ResumedFinal(event.text, start, end, event.channel))
        return dataclasses.replace(event, start=start, end=end, words=words)

    def _ended(self, event: SessionEnded) -> SessionEnded:
        total = _at(event.total_duration + self.record.offset_s)
        if event.channels is None:
            text = " ".join(final.text for final in self._finals if final.text)
            return dataclasses.replace(event, total_duration=total, transcript=text)
        count = len(event.channels)
        per_channel = tuple(" ".join(f.text for f in self._finals if (f.channel or 0) == i) for i in range(count))
        merged = tuple(sorted((ChannelFinal(f.channel or 0, f.start, f.end, f.text) for f in self._finals),
                              key=lambda final: (final.start, final.channel)))
        return dataclasses.replace(event, total_duration=total, transcript=" ".join(f.text for f in merged),
                                   channels=per_channel, merged=merged)


def _at(seconds: float) -> float:
    return round(seconds, 3)
