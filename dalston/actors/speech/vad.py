"""The speech/silence state machine (DESIGN §5). Pure: probabilities in, events out; no numpy, no I/O.

Each `feed(p)` is one VAD window (512 samples at 16 kHz unless told otherwise) with its speech
probability. Times are sample indices in session time: window k of a stream fed only full windows covers
samples [512k, 512k + 512).

Vocabulary (all in samples):
- a window is *speech* when p >= `threshold`, except right after speech (no silence window since),
  where p >= `release_threshold` keeps it going (hysteresis);
- raw speech runs from the start of its first speech window to the end of its last one (`raw_end`);
  silence shorter than `min_silence_ms` inside it does not split it;
- a *segment* is raw speech plus padding: `start = max(raw_start - pad, previous segment end, 0)` and,
  when it ends by silence, `end = raw_end + end_pad` with `end_pad = min(speech_pad, min_silence)`
  (the end is decided after `min_silence` of silence, so no more padding exists yet at that point).
  Segments therefore never overlap and stay within [0, samples fed].

Events:
- `SpeechStarted(start)`: once raw speech spans `min_speech_ms`. Raw speech that ends (silence reaches
  `min_silence_ms`) or is flushed before that is a blip and produces no event at all.
- `PauseStarted(start, end)`: silence after speech has lasted `end_pad`; these are the bounds the segment
  gets if the silence holds, and all of that audio has been fed already (decode it early).
- `SpeechResumed(at)`: a speech window (p >= threshold) came after a `PauseStarted`; that end is void.
- `SpeechEnded(start, end, cause)`:
  * "silence": silence reached `min_silence_ms`; always preceded by a `PauseStarted` with the same bounds
    (in the same `feed` when `min_silence <= end_pad + one window`).
  * "max_length": a speech window would take the segment past `max_segment_s`. The segment ends at
    `min(that window's start, raw_end + end_pad)` (so it keeps its end padding when the cut falls in a
    pause) and a new segment starts at once, `SpeechStarted(max(window start - pad, cut))`, already
    confirmed: it continues speech, so it is exempt from `min_speech_ms` and may be shorter.
  * "flush": `flush()` during confirmed speech; `end = min(samples fed, raw_end + end_pad)`, so a
    flush during a pause reproduces the `PauseStarted` bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

EndCause = Literal["silence", "max_length", "flush"]


@dataclass(frozen=True, slots=True)
class VadParams:
    threshold: float = 0.5
    release_threshold: float | None = None
    """Below this a window after speech counts as silence; None means max(threshold - 0.15, 0.01)."""
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    speech_pad_ms: int = 120
    max_segment_s: float = 30.0
    sample_rate: int = 16000
    window_samples: int = 512

    def __post_init__(self) -> None:
        if not 0.0 < self.release <= self.threshold <= 1.0:
            raise ValueError(f"need 0 < release_threshold <= threshold <= 1, got {self.release}, {self.threshold}")
        if self.min_speech_ms < 0 or self.min_silence_ms < 0 or self.speech_pad_ms < 0:
            raise ValueError("min_speech_ms, min_silence_ms and speech_pad_ms must be >= 0")
        if self.sample_rate <= 0 or self.window_samples <= 0:
            raise ValueError("sample_rate and window_samples must be positive")
        needed = self.min_speech + self.min_silence + self.pad + self.end_pad + 2 * self.window_samples
        if self.max_segment < needed:
            raise ValueError(
                f"max_segment_s={self.max_segment_s} is too short for these parameters "
                f"(needs at least {needed / self.sample_rate:.3f} s)"
            )

    def _samples(self, ms: float) -> int:
        return round(ms * self.sample_rate / 1000)

    @property
    def release(self) -> float:
        if self.release_threshold is None:
            return max(self.threshold - 0.15, 0.01)
        return self.release_threshold

    @property
    def min_speech(self) -> int:
        return self._samples(self.min_speech_ms)

    @property
    def min_silence(self) -> int:
        return self._samples(self.min_silence_ms)

    @property
    def pad(self) -> int:
        return self._samples(self.speech_pad_ms)

    @property
    def end_pad(self) -> int:
        return min(self.pad, self.min_silence)

    @property
    def max_segment(self) -> int:
        return round(self.max_segment_s * self.sample_rate)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    start_sample: int


@dataclass(frozen=True, slots=True)
class PauseStarted:
    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    at_sample: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    start_sample: int
    end_sample: int
    cause: EndCause


VadEvent = SpeechStarted | PauseStarted | SpeechResumed | SpeechEnded


@dataclass(frozen=True, slots=True)
class VadStatistics:
    windows: int
    samples: int
    segments_started: int
    segments_ended: int
    blips_ignored: int
    pauses_started: int
    pauses_resumed: int
    max_length_cuts: int
    in_speech: bool


class _State(Enum):
    SILENCE = "silence"
    PENDING = "pending"  # raw speech shorter than min_speech so far; no event yet
    SPEECH = "speech"  # confirmed: SpeechStarted emitted


class VadStateMachine:
    """Turns per-window speech probabilities into segment events (see the module docstring)."""

    def __init__(self, params: VadParams | None = None) -> None:
        self.params = params or VadParams()
        self._state = _State.SILENCE
        self._samples_fed = 0
        self._prev_end = 0  # end of the last emitted segment: the floor for the next start
        self._raw_start = 0
        self._raw_end = 0
        self._seg_start = 0
        self._pause_emitted = False
        self._counts = dict.fromkeys(("windows", "started", "ended", "blips", "pauses", "resumed", "cuts"), 0)

    @property
    def samples_fed(self) -> int:
        return self._samples_fed

    @property
    def in_speech(self) -> bool:
        """True between a SpeechStarted and its SpeechEnded (pauses included)."""
        return self._state is _State.SPEECH

    @property
    def segment_start(self) -> int | None:
        """Start of the confirmed segment in progress, if any."""
        return self._seg_start if self._state is _State.SPEECH else None

    @property
    def retain_from(self) -> int:
        """The earliest sample any future event can refer to: audio before it may be discarded."""
        if self._state is _State.SILENCE:
            return max(self._samples_fed - self.params.pad, self._prev_end, 0)
        if self._state is _State.PENDING:
            return self._padded_start(self._raw_start)
        return self._seg_start

    def retune(self, params: VadParams) -> None:
        """New endpointing from the next window on (a client's `configure`). Only the window size and rate
        must stay: they fix where windows fall. A pause already announced may end with the new padding; the
        session then decodes the segment again with its confirmed bounds."""
        if (params.window_samples, params.sample_rate) != (self.params.window_samples, self.params.sample_rate):
            raise ValueError("retune cannot change window_samples or sample_rate")
        self.params = params

    def feed(self, probability: float, num_samples: int | None = None) -> list[VadEvent]:
        """One window of `num_samples` (default `window_samples`; a shorter last window before a flush)."""
        size = self.params.window_samples if num_samples is None else num_samples
        if not 0 < size <= self.params.window_samples:
            raise ValueError(f"num_samples must be in 1..{self.params.window_samples}, got {size}")
        window_start = self._samples_fed
        self._samples_fed += size
        self._counts["windows"] += 1
        if self._state is _State.SILENCE:
            if probability >= self.params.threshold:
                self._state = _State.PENDING
                self._raw_start, self._raw_end = window_start, self._samples_fed
                return self._confirm_if_long_enough()
            return []
        if self._is_speech(probability, window_start):
            return self._on_speech_window(window_start)
        return self._on_silence_window()

    def flush(self) -> list[VadEvent]:
        """End speech in progress at the current sample. A pending blip is dropped; silence gives nothing."""
        if self._state is _State.PENDING:
            self._drop_blip()
            return []
        if self._state is _State.SILENCE:
            return []
        end = min(self._samples_fed, self._raw_end + self.params.end_pad)
        return [self._end_segment(end, "flush")]

    def statistics(self) -> VadStatistics:
        c = self._counts
        return VadStatistics(
            windows=c["windows"],
            samples=self._samples_fed,
            segments_started=c["started"],
            segments_ended=c["ended"],
            blips_ignored=c["blips"],
            pauses_started=c["pauses"],
            pauses_resumed=c["resumed"],
            max_length_cuts=c["cuts"],
            in_speech=self.in_speech,
        )

    # -- transitions ---------------------------------------------------------------------------------

    def _is_speech(self, probability: float, window_start: int) -> bool:
        # Hysteresis: speech in progress holds at the release threshold; after a silence window, only
        # the start threshold brings it back.
        in_pause = window_start > self._raw_end
        return probability >= (self.params.threshold if in_pause else self.params.release)

    def _on_speech_window(self, window_start: int) -> list[VadEvent]:
        if self._state is _State.PENDING:
            self._raw_end = self._samples_fed
            return self._confirm_if_long_enough()
        events: list[VadEvent] = []
        if self._pause_emitted:
            self._pause_emitted = False
            self._counts["resumed"] += 1
            events.append(SpeechResumed(window_start))
        if self._samples_fed + self.params.end_pad - self._seg_start > self.params.max_segment:
            events.extend(self._cut(window_start))
        self._raw_end = self._samples_fed
        return events

    def _on_silence_window(self) -> list[VadEvent]:
        silence = self._samples_fed - self._raw_end
        if self._state is _State.PENDING:
            if silence >= self.params.min_silence:
                self._drop_blip()
            return []
        events: list[VadEvent] = []
        end = self._raw_end + self.params.end_pad
        if not self._pause_emitted and silence >= self.params.end_pad:
            self._pause_emitted = True
            self._counts["pauses"] += 1
            events.append(PauseStarted(self._seg_start, end))
        if silence >= self.params.min_silence:
            events.append(self._end_segment(end, "silence"))
        return events

    def _confirm_if_long_enough(self) -> list[VadEvent]:
        if self._raw_end - self._raw_start < self.params.min_speech:
            return []
        return [self._start_segment(self._padded_start(self._raw_start))]

    def _cut(self, window_start: int) -> list[VadEvent]:
        """max_segment_s reached: end here and continue at once in a new, already confirmed segment."""
        self._counts["cuts"] += 1
        cut = min(window_start, self._raw_end + self.params.end_pad)
        ended = self._end_segment(cut, "max_length")
        self._raw_start = window_start
        return [ended, self._start_segment(self._padded_start(window_start))]

    def _start_segment(self, start: int) -> SpeechStarted:
        self._state = _State.SPEECH
        self._seg_start = start
        self._pause_emitted = False
        self._counts["started"] += 1
        return SpeechStarted(start)

    def _end_segment(self, end: int, cause: EndCause) -> SpeechEnded:
        self._state = _State.SILENCE
        self._prev_end = end
        self._pause_emitted = False
        self._counts["ended"] += 1
        return SpeechEnded(self._seg_start, end, cause)

    def _drop_blip(self) -> None:
        self._state = _State.SILENCE
        self._counts["blips"] += 1

    def _padded_start(self, raw_start: int) -> int:
        return max(raw_start - self.params.pad, self._prev_end, 0)


def with_endpointing(base: VadParams, min_silence_ms: int | None, max_segment_s: float | None,
                     threshold: float | None) -> VadParams:
    """`base` with a client's endpointing overrides (None: keep them); ValueError naming the parameter if they do
    not fit together (a segment too short for the silence that ends it)."""
    changes: dict[str, Any] = {}
    if min_silence_ms is not None:
        changes["min_silence_ms"] = min_silence_ms
    if max_segment_s is not None:
        changes["max_segment_s"] = max_segment_s
    if threshold is not None:
        changes["threshold"] = threshold
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as error:
        raise ValueError(f"max_segment_s: {error}") from None
