"""Silero VAD on onnxruntime (no torch), and the segmenter that joins it to the VAD state machine.

`SileroVad` is one stream's view of the model: the ONNX session is loaded once per process and shared; the
recurrent state (2x1x128 floats) and the 64-sample context live in the per-stream object.
`SpeechSegmenter` cuts incoming 16 kHz float32 audio into fixed 512-sample windows (so results do not
depend on how the audio was chunked), scores each window, feeds `VadStateMachine`, and attaches the
segment audio to the events that need it, keeping only the audio a future event can still refer to.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import onnxruntime

from dalston.actors.speech.vad import PauseStarted, SpeechEnded, VadEvent, VadParams, VadStateMachine, VadStatistics

WINDOW_SAMPLES = 512  # what Silero v5+ accepts at 16 kHz
CONTEXT_SAMPLES = 64  # tail of the previous window that Silero v5+ expects in front of each window
SAMPLE_RATE = 16000


# silero-vad 6.2.3's `silero_vad.onnx` (MIT, see dalston/data/silero_vad.LICENSE), shipped in the package:
# the silero-vad distribution declares torch as a dependency, so depending on it would pull a torch build into
# every install just to read a 2 MB file; faster-whisper's bundled Silero model scores differently (onsets up
# to 0.3 s later on the LibriVox clips).
SILERO_ONNX_PATH = Path(__file__).resolve().parents[2] / "data" / "silero_vad.onnx"
SILERO_ONNX_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


def silero_model_path() -> Path:
    """The Silero ONNX model shipped with Dalston."""
    if not SILERO_ONNX_PATH.is_file():
        raise FileNotFoundError(f"{SILERO_ONNX_PATH} is missing: the dalston package is incomplete")
    return SILERO_ONNX_PATH


def silero_package_data() -> Path:
    """The data folder of the installed silero-vad package (the TorchScript model lives there), located
    without importing the package: that imports torch."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the silero-vad package is not installed (pip install 'dalston[torch]')")
    return Path(spec.origin).parent / "data"


def load_silero_session(path: Path | None = None) -> onnxruntime.InferenceSession:
    """A CPU session with one thread each way: a 512-sample window is far too small to parallelise."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path or silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )


class WindowScorer(Protocol):
    """One stream's Silero model (ONNX here, torch in `silero_torch`): a speech probability per window."""

    windows: int

    def probability(self, window: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class SileroVad:
    """Speech probability of consecutive 512-sample windows of one stream (16 kHz float32).

    The shared `InferenceSession` is safe to call from several threads; this object is not (its state
    advances with every window), so give each stream its own.
    """

    _shared_session: ClassVar[onnxruntime.InferenceSession | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, session: onnxruntime.InferenceSession | None = None) -> None:
        self._session = session or self.shared_session()
        # Model input is [context | window]; kept as one buffer so each call copies only the new window.
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.windows = 0

    @classmethod
    def shared_session(cls) -> onnxruntime.InferenceSession:
        """The process-wide session, loaded on first use."""
        with cls._shared_lock:
            if cls._shared_session is None:
                cls._shared_session = load_silero_session()
            return cls._shared_session

    def probability(self, window: np.ndarray) -> float:
        """Score the next window (exactly 512 samples); advances this stream's recurrent state."""
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"Silero needs windows of {WINDOW_SAMPLES} samples, got shape {window.shape}")
        self._input[0, CONTEXT_SAMPLES:] = window
        output, self._state = self._session.run(None, {"input": self._input, "state": self._state, "sr": self._sr})
        # The next window's context is the last 64 samples of this model input (utils_vad.OnnxWrapper).
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:]
        self.windows += 1
        return float(output[0, 0])

    def reset(self) -> None:
        self._input.fill(0.0)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)


@dataclass(frozen=True, slots=True, eq=False)
class SegmenterEvent:
    """A VAD event; `audio` is the float32 segment [start_sample, end_sample) for `PauseStarted` and
    `SpeechEnded` (a copy, safe to keep), None for the others."""

    event: VadEvent
    audio: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SegmenterStatistics:
    samples_seen: int
    buffered_samples: int
    buffer_capacity_samples: int
    vad: VadStatistics


class _AudioBuffer:
    """The tail of a stream: samples [start, end) in session time, trimmed from the front."""

    def __init__(self, capacity: int) -> None:
        self._initial = capacity
        self._data = np.zeros(capacity, dtype=np.float32)
        self._head = 0  # index in _data of sample `start`
        self.start = 0
        self.length = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def capacity(self) -> int:
        return len(self._data)

    def append(self, samples: np.ndarray) -> None:
        needed = self.length + len(samples)
        if self._head + needed > len(self._data):
            self._compact(needed)
        at = self._head + self.length
        self._data[at : at + len(samples)] = samples
        self.length = needed

    def discard_before(self, sample: int) -> None:
        drop = min(max(0, sample - self.start), self.length)
        self._head += drop
        self.start += drop
        self.length -= drop

    def view(self, start: int, end: int) -> np.ndarray:
        if not self.start <= start <= end <= self.end:
            raise IndexError(f"samples [{start}, {end}) not buffered (have [{self.start}, {self.end}))")
        return self._data[self._head + start - self.start : self._head + end - self.start]

    def _compact(self, needed: int) -> None:
        live = self._data[self._head : self._head + self.length]
        capacity = len(self._data)
        if needed > capacity or capacity > max(3 * needed, self._initial):
            # Grow geometrically; give memory back after a long segment has gone.
            capacity = max(needed + needed // 2, self._initial)
            data = np.zeros(capacity, dtype=np.float32)
            data[: self.length] = live
            self._data = data
        else:
            self._data[: self.length] = live.copy()
        self._head = 0


class SpeechSegmenter:
    """Audio in, speech segments out, for one stream. Not thread-safe; one per session.

    `push()` and `flush()` return events in order; times are sample indices of the pushed 16 kHz audio.
    The events for the same audio are identical however it is chunked (flushes aside: a flush scores the
    partial window, zero-padded, and windows realign after it).
    """

    def __init__(self, vad_model: WindowScorer, params: VadParams | None = None) -> None:
        params = params or VadParams()
        if params.window_samples != WINDOW_SAMPLES or params.sample_rate != SAMPLE_RATE:
            raise ValueError(f"Silero runs at {SAMPLE_RATE} Hz on {WINDOW_SAMPLES}-sample windows")
        self.vad = vad_model
        self.machine = VadStateMachine(params)
        self._buffer = _AudioBuffer(capacity=SAMPLE_RATE)

    @property
    def samples_seen(self) -> int:
        return self._buffer.end

    def push(self, samples: np.ndarray) -> list[SegmenterEvent]:
        """Add float32 mono 16 kHz audio; score every complete window."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        out: list[SegmenterEvent] = []
        # A second at a time, so pushing a whole file does not buffer all of it.
        for offset in range(0, len(samples), SAMPLE_RATE):
            self._buffer.append(samples[offset : offset + SAMPLE_RATE])
            events: list[VadEvent] = []
            while self._buffer.end - self.machine.samples_fed >= WINDOW_SAMPLES:
                fed = self.machine.samples_fed
                probability = self.vad.probability(self._buffer.view(fed, fed + WINDOW_SAMPLES))
                events += self.machine.feed(probability)
            out += self._publish(events)
        return out

    def flush(self) -> list[SegmenterEvent]:
        """End speech in progress, including the trailing partial window, so no pushed audio is lost."""
        fed = self.machine.samples_fed
        partial = self._buffer.end - fed
        events: list[VadEvent] = []
        if partial:
            window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
            window[:partial] = self._buffer.view(fed, self._buffer.end)
            events += self.machine.feed(self.vad.probability(window), num_samples=partial)
        events += self.machine.flush()
        return self._publish(events)

    def current_utterance(self) -> tuple[int, np.ndarray] | None:
        """(start sample, audio so far) of the confirmed segment in progress, for interim decodes."""
        start = self.machine.segment_start
        if start is None:
            return None
        return start, self._buffer.view(start, self._buffer.end).copy()

    def statistics(self) -> SegmenterStatistics:
        return SegmenterStatistics(
            samples_seen=self.samples_seen,
            buffered_samples=self._buffer.length,
            buffer_capacity_samples=self._buffer.capacity,
            vad=self.machine.statistics(),
        )

    def _publish(self, events: list[VadEvent]) -> list[SegmenterEvent]:
        out = [SegmenterEvent(event, self._audio_for(event)) for event in events]
        self._buffer.discard_before(self.machine.retain_from)
        return out

    def _audio_for(self, event: VadEvent) -> np.ndarray | None:
        if isinstance(event, PauseStarted | SpeechEnded):
            return self._buffer.view(event.start_sample, event.end_sample).copy()
        return None
