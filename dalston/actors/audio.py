"""PCM decoding and resampling for one live stream (DESIGN §5).

Clients send raw s16le mono PCM at their own rate, cut into frames however they like. `PcmDecoder` turns
that byte stream into float32 mono at 16 kHz, the only format the VAD and the models see. It is streaming:
an odd trailing byte waits for the next frame, and resampling uses soxr's streaming resampler, so the output
does not depend on where the frames were cut (measured here: bit-identical across chunkings).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

TARGET_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000

_EMPTY = np.zeros(0, dtype=np.float32)


class InvalidAudio(ValueError):
    """A client frame cannot be accepted (the session reports `invalid_audio`, WebSocket close 1007)."""

    code = "invalid_audio"


class UnsupportedSampleRate(ValueError):
    """The requested input sample rate is outside what the decoder handles (a bad query parameter)."""

    code = "invalid_request"


@dataclass(frozen=True, slots=True)
class DecoderStatistics:
    frames: int
    bytes_in: int
    samples_out: int
    pending_odd_byte: bool
    finished: bool


def pcm16_to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1), the scaling `PcmDecoder` uses."""
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


class PcmDecoder:
    """Streaming s16le mono -> float32 mono 16 kHz.

    `decode(frame)` returns the samples that frame completes (possibly none: a resampler holds a short
    delay line, and a one-byte frame completes no sample). `finish()` drains the resampler; after it the
    decoder accepts no more audio. Not thread-safe; one decoder per stream.
    """

    def __init__(self, sample_rate: int, max_frame_bytes: int) -> None:
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise UnsupportedSampleRate(
                f"sample_rate {sample_rate} Hz is not supported ({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})"
            )
        if max_frame_bytes < 2:
            raise ValueError(f"max_frame_bytes must be at least 2, got {max_frame_bytes}")
        self.sample_rate = sample_rate
        self.max_frame_bytes = max_frame_bytes
        self._carry = b""
        self._resampler = (
            None
            if sample_rate == TARGET_SAMPLE_RATE
            else soxr.ResampleStream(sample_rate, TARGET_SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        self._frames = 0
        self._bytes_in = 0
        self._samples_out = 0
        self._finished = False
        self.trailing_byte_dropped = False
        """Set by `finish()` when the stream ended on half a sample (that byte is discarded)."""

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode one client frame. Raises `InvalidAudio` for a frame over `max_frame_bytes`.

        An empty frame decodes to no samples; whether an empty frame is a protocol error is for the caller.
        """
        if self._finished:
            raise RuntimeError("PcmDecoder.decode() after finish()")
        if len(frame) > self.max_frame_bytes:
            raise InvalidAudio(f"audio frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} bytes")
        self._frames += 1
        self._bytes_in += len(frame)
        data = self._carry + frame if self._carry else frame
        usable = len(data) - (len(data) % 2)
        # The odd byte is the low half of a sample whose high half comes in the next frame.
        self._carry = bytes(data[usable:])
        pcm = np.frombuffer(data, dtype="<i2", count=usable // 2)
        return self._emit(pcm16_to_float32(pcm), last=False)

    def finish(self) -> np.ndarray:
        """End of stream: return the resampler's tail. Idempotent (a second call returns nothing).

        A pending odd byte cannot form a sample; it is dropped and `trailing_byte_dropped` becomes True.
        """
        if self._finished:
            return _EMPTY.copy()
        self.trailing_byte_dropped = bool(self._carry)
        self._carry = b""
        tail = self._emit(_EMPTY, last=True)
        self._finished = True
        return tail

    @property
    def pending_odd_byte(self) -> bool:
        return bool(self._carry)

    def statistics(self) -> DecoderStatistics:
        return DecoderStatistics(
            frames=self._frames,
            bytes_in=self._bytes_in,
            samples_out=self._samples_out,
            pending_odd_byte=self.pending_odd_byte,
            finished=self._finished,
        )

    def _emit(self, samples: np.ndarray, *, last: bool) -> np.ndarray:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._samples_out += len(samples)
        return samples


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV (mono, or stereo downmixed by averaging) -> (int16 samples, sample rate)."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM, got {8 * width}-bit")
    if channels not in (1, 2):
        raise ValueError(f"{path}: expected mono or stereo, got {channels} channels")
    samples = np.frombuffer(frames, dtype="<i2")
    if channels == 2:
        pairs = samples.reshape(-1, 2).astype(np.int32)
        # Floor division keeps the mean inside int16 range; the half-LSB bias is inaudible.
        samples = (pairs.sum(axis=1) // 2).astype(np.int16)
    return samples.astype(np.int16), rate
