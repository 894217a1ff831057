"""Client audio decoding for one live stream (DESIGN §5): any supported encoding in, 16 kHz float32 out.

Clients send raw PCM (s16le, f32le), G.711 (µ-law, A-law) or an Opus container stream (Ogg, WebM) at their own
rate, cut into frames however they like. Every decoder here is streaming: a partial sample (or container page)
waits for the next frame, and resampling uses soxr's streaming resampler, so the output does not depend on where
the frames were cut (tested: identical across chunkings). Output is one row per channel, shape (channels, n).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr

from dalston.actors.speech.g711 import ALAW_TABLE, MULAW_TABLE

TARGET_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_CHANNELS = 8
PCM_ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
CONTAINER_ENCODINGS = ("ogg_opus", "webm_opus")
ENCODINGS = PCM_ENCODINGS + CONTAINER_ENCODINGS
_SAMPLE_BYTES = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


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


class AudioDecoder(Protocol):
    """A streaming decoder: bytes in, float32 16 kHz out, one row per channel."""

    channels: int

    def decode(self, frame: bytes) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...

    def statistics(self) -> DecoderStatistics: ...


def pcm16_to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1), the scaling `PcmDecoder` uses."""
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


def new_decoder(encoding: str, sample_rate: int, max_frame_bytes: int, channels: int = 1) -> AudioDecoder:
    """The decoder for one stream's `encoding` (see ENCODINGS); Opus streams bring their own sample rate."""
    if encoding in CONTAINER_ENCODINGS:
        from dalston.actors.speech.opus_stream import OpusStreamDecoder  # PyAV: imported only by Opus sessions

        return OpusStreamDecoder(encoding, max_frame_bytes, channels)
    return PcmDecoder(sample_rate, max_frame_bytes, encoding=encoding, channels=channels)


class Resampler:
    """Streaming (n, channels) float32 at `rate` -> (channels, m) at 16 kHz; a pass-through at 16 kHz."""

    def __init__(self, rate: int, channels: int) -> None:
        self.channels = channels
        self._stream = (None if rate == TARGET_SAMPLE_RATE else
                        soxr.ResampleStream(rate, TARGET_SAMPLE_RATE, channels, dtype="float32", quality="HQ"))

    def push(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        if self._stream is not None:
            samples = self._stream.resample_chunk(samples, last=last)
        return np.ascontiguousarray(samples.T, dtype=np.float32)


def empty_channels(channels: int) -> np.ndarray:
    return np.zeros((channels, 0), dtype=np.float32)


class PcmDecoder:
    """Streaming interleaved PCM or G.711 -> float32 16 kHz, shape (channels, n).

    `decode(frame)` returns the samples that frame completes (possibly none: a resampler holds a short
    delay line, and a frame shorter than one sample of every channel completes nothing). `finish()` drains
    the resampler; after it the decoder accepts no more audio. Not thread-safe; one decoder per stream.
    """

    def __init__(self, sample_rate: int, max_frame_bytes: int, *, encoding: str = "pcm_s16le",
                 channels: int = 1) -> None:
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise UnsupportedSampleRate(
                f"sample_rate {sample_rate} Hz is not supported ({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE})"
            )
        if encoding not in _SAMPLE_BYTES:
            raise ValueError(f"PcmDecoder does not decode {encoding!r}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        self.encoding = encoding
        self.channels = channels
        self.frame_bytes = _SAMPLE_BYTES[encoding] * channels  # one sample of every channel
        if max_frame_bytes < self.frame_bytes:
            raise ValueError(f"max_frame_bytes must be at least {self.frame_bytes}, got {max_frame_bytes}")
        self.sample_rate = sample_rate
        self.max_frame_bytes = max_frame_bytes
        self._carry = b""
        self._resampler = Resampler(sample_rate, channels)
        self._frames = 0
        self._bytes_in = 0
        self._samples_out = 0
        self._finished = False
        self.trailing_byte_dropped = False
        """Set by `finish()` when the stream ended on part of a sample (those bytes are discarded)."""

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
        usable = len(data) - (len(data) % self.frame_bytes)
        # A partial sample (an odd byte of s16, say) is completed by the next frame.
        self._carry = bytes(data[usable:])
        samples = self._to_float(memoryview(data)[:usable])
        return self._emit(samples.reshape(-1, self.channels), last=False)

    def finish(self) -> np.ndarray:
        """End of stream: return the resampler's tail. Idempotent (a second call returns nothing).

        A pending partial sample is dropped and `trailing_byte_dropped` becomes True.
        """
        if self._finished:
            return empty_channels(self.channels)
        self.trailing_byte_dropped = bool(self._carry)
        self._carry = b""
        tail = self._emit(np.zeros((0, self.channels), dtype=np.float32), last=True)
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

    def _to_float(self, data: memoryview) -> np.ndarray:
        if self.encoding == "pcm_s16le":
            return pcm16_to_float32(np.frombuffer(data, dtype="<i2"))
        if self.encoding == "pcm_f32le":
            samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise InvalidAudio("pcm_f32le frame holds NaN or infinite samples")
            return np.clip(samples, -1.0, 1.0)
        table = MULAW_TABLE if self.encoding == "pcm_mulaw" else ALAW_TABLE
        return pcm16_to_float32(table[np.frombuffer(data, dtype=np.uint8)])

    def _emit(self, samples: np.ndarray, *, last: bool) -> np.ndarray:
        out = self._resampler.push(samples, last=last)
        self._samples_out += out.shape[1]
        return out


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV (mono, or stereo downmixed by averaging) -> (int16 samples, sample rate)."""
    samples, rate = read_wav_channels(path)
    if samples.shape[1] > 2:
        raise ValueError(f"{path}: expected mono or stereo, got {samples.shape[1]} channels")
    if samples.shape[1] == 2:
        # Floor division keeps the mean inside int16 range; the half-LSB bias is inaudible.
        return (samples.astype(np.int32).sum(axis=1) // 2).astype(np.int16), rate
    return samples[:, 0].copy(), rate


def read_wav_channels(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV keeping its channels -> (int16 samples of shape (n, channels), sample rate)."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: expected 16-bit PCM, got {8 * width}-bit")
    return np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.int16), rate
