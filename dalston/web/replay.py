"""What a gateway keeps of one session so that another worker can take it over (DESIGN §6, failover).

`ReplayBuffer` is pure (no asyncio, no I/O): the client's audio bytes, in the client's own encoding, from the
start of the earliest speech not yet covered by a relayed `transcript.final` — in practice from the end of the
last final relayed — up to now; and the finals relayed so far. A worker that takes the session over gets that
audio again from `start_s` (session time) and the finals, so it neither loses speech nor repeats a final.

Positions are absolute byte offsets into the client's stream. For sample encodings (PCM, G.711) a byte offset
is a time: `bytes_per_frame` bytes make one sample of every channel. The kept audio always starts on a frame
boundary, so a replay never starts mid-sample whatever sizes the client cut its frames into. Container encodings
(Ogg/WebM Opus) have no such index: their stream cannot start mid-way (the headers come first), so the whole
stream is kept from the start, and once it outgrows the byte cap the session can no longer move (`movable`).

Bounds: the kept audio is at most `keep_s` (the longest utterance, `vad.max_segment_s`, plus padding for the
final in flight) and at most `cap_bytes`. Audio older than that is dropped from the front — it can only be
silence or speech whose final is on its way, since no segment is longer than `max_segment_s`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Bytes per sample of one channel, by encoding; encodings not listed have no sample index (containers).
SAMPLE_BYTES = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


@dataclass(frozen=True)
class RelayedFinal:
    """A final the client has received: its text and times (session time, seconds)."""

    text: str
    start_s: float
    end_s: float
    channel: int | None = None


@dataclass(frozen=True)
class ReplayStatistics:
    kept_bytes: int
    kept_s: float
    start_s: float
    finals: int
    movable: bool


class ReplayBuffer:
    def __init__(self, encoding: str, sample_rate: int, channels: int, *, keep_s: float, cap_bytes: int) -> None:
        sample_bytes = SAMPLE_BYTES.get(encoding)
        self.indexed = sample_bytes is not None  # byte offsets are times
        self.bytes_per_frame = (sample_bytes or 1) * channels
        self.sample_rate = sample_rate
        self.channels = channels
        self._last_end_s: dict[int, float] = {}  # channel (0 for mono) -> end of its last final
        self.keep_s = keep_s
        self.cap_bytes = cap_bytes
        self.finals: list[RelayedFinal] = []
        self._chunks: deque[bytes] = deque()  # the kept audio, in arrival order
        self._start = 0  # absolute offset of the first kept byte
        self._end = 0  # absolute offset just past the last byte received
        self._overflowed = False  # a container stream outgrew the cap: it can no longer be replayed

    # -- what comes in ------------------------------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Keep one frame of client audio, then drop from the front whatever is beyond the bounds."""
        if not data:
            return
        self._chunks.append(data)
        self._end += len(data)
        if self.indexed:
            self._trim_to(max(self._start, self._end - self._bound_bytes()))
        elif self._end - self._start > self.cap_bytes:
            self._overflowed = True
            self._chunks.clear()
            self._start = self._end

    def final_relayed(self, final: RelayedFinal) -> None:
        """A final reached the client: its audio no longer needs to be kept."""
        self.finals.append(final)
        self._last_end_s[final.channel or 0] = max(final.end_s, self._last_end_s.get(final.channel or 0, 0.0))
        if self.indexed and len(self._last_end_s) == self.channels:
            # Every channel's audio up to its last final is covered; the earliest of those is where to keep from.
            self._trim_to(min(self._end, self.offset_at(min(self._last_end_s.values()))))

    # -- what goes out ------------------------------------------------------------------------------------

    def room_bytes(self) -> int:
        """How much more may come in before the front would be dropped (while no worker can take it)."""
        return max(0, self._bound_bytes() - (self._end - self._start))

    def chunks_from(self, offset: int, max_bytes: int, until: int | None = None) -> list[bytes]:
        """The kept audio from absolute `offset` up to `until` (default: all), in frames of at most `max_bytes`
        (frame-aligned sizes, so each frame but the last holds whole samples)."""
        offset = max(offset, self._start)
        until = self._end if until is None else min(until, self._end)
        out: list[bytes] = []
        first, position = self._chunk_at(offset)
        pending = bytearray()
        size = max(self.bytes_per_frame, max_bytes - max_bytes % self.bytes_per_frame)
        for index in range(first, len(self._chunks)):
            chunk = self._chunks[index]
            if position >= until:
                break
            chunk_end = position + len(chunk)
            if chunk_end > offset:
                pending += chunk[max(0, offset - position):until - position]
                while len(pending) >= size:
                    out.append(bytes(pending[:size]))
                    del pending[:size]
            position = chunk_end
        if pending:
            out.append(bytes(pending))
        return out

    def _chunk_at(self, offset: int) -> tuple[int, int]:
        """The index of the chunk holding `offset`, and that chunk's start; searched from the end, since the
        live relay always asks for the newest audio (a replay, from the start, walks the whole buffer once)."""
        index, position = len(self._chunks), self._end
        while index > 0 and position > offset:
            index -= 1
            position -= len(self._chunks[index])
        return index, position

    @property
    def start_offset(self) -> int:
        return self._start

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def movable(self) -> bool:
        """Whether another worker can take the session over from what is kept."""
        return not self._overflowed

    @property
    def start_s(self) -> float:
        """Session time of the first kept byte (0 for a container stream: it is replayed from the start)."""
        return self.time_at(self._start) if self.indexed else 0.0

    def time_at(self, offset: int) -> float:
        return offset / self.bytes_per_frame / self.sample_rate

    def offset_at(self, time_s: float) -> int:
        """The frame-aligned offset at or before `time_s`."""
        frames = int(time_s * self.sample_rate + 1e-6)
        return max(0, frames) * self.bytes_per_frame

    @property
    def kept_bytes(self) -> int:
        return self._end - self._start

    @property
    def kept_s(self) -> float:
        return self.time_at(self.kept_bytes) if self.indexed else 0.0

    def statistics(self) -> ReplayStatistics:
        return ReplayStatistics(self.kept_bytes, round(self.kept_s, 3), round(self.start_s, 3), len(self.finals),
                                self.movable)

    # -- internals ----------------------------------------------------------------------------------------

    @property
    def bound_bytes(self) -> int:
        """The most audio kept: appending beyond it drops the oldest bytes."""
        return self._bound_bytes()

    def _bound_bytes(self) -> int:
        if not self.indexed:
            return self.cap_bytes
        per_s = self.bytes_per_frame * self.sample_rate
        bound = min(self.cap_bytes, int(self.keep_s * per_s))
        return bound - bound % self.bytes_per_frame

    def _trim_to(self, offset: int) -> None:
        """Drop the kept audio before `offset`, rounded down to a frame boundary."""
        offset -= offset % self.bytes_per_frame
        while self._chunks and offset > self._start:
            head = self._chunks[0]
            if self._start + len(head) <= offset:
                self._chunks.popleft()
                self._start += len(head)
            else:
                self._chunks[0] = head[offset - self._start:]
                self._start = offset
