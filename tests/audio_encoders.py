"""Client audio made by a library encoder (ffmpeg's, through PyAV): G.711 and Opus in Ogg or WebM.

What a phone bridge or a browser would send, built in the test from int16 PCM, so the decoders under test are
checked against an independent encoder rather than against their own inverse.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import av
import numpy as np

# encoding -> (container format, codec) for PyAV
_FORMATS = {
    "pcm_mulaw": ("mulaw", "pcm_mulaw"),
    "pcm_alaw": ("alaw", "pcm_alaw"),
    "ogg_opus": ("ogg", "libopus"),
    "webm_opus": ("webm", "libopus"),
}
_LAYOUTS = {1: "mono", 2: "stereo"}


def encode(pcm: np.ndarray, sample_rate: int, encoding: str, *, bitrate: int = 32000) -> bytes:
    """int16 samples, shape (n,) or (n, channels), encoded as `encoding` (Opus is resampled to 48 kHz by
    ffmpeg's encoder set-up; G.711 keeps `sample_rate`)."""
    samples = pcm.reshape(len(pcm), -1)
    channels = samples.shape[1]
    container, codec = _FORMATS[encoding]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        opus = codec == "libopus"
        stream = output.add_stream(codec, rate=48000 if opus else sample_rate)
        stream.layout = _LAYOUTS.get(channels, f"{channels}c")
        if opus:
            stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
                                           format="s16", layout=stream.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def random_frames(data: bytes, rng: random.Random, max_bytes: int = 4000) -> Iterator[bytes]:
    """`data` split into frames of random sizes 1..max_bytes: container pages and samples cut anywhere."""
    at = 0
    while at < len(data):
        size = rng.randint(1, max_bytes)
        yield data[at:at + size]
        at += size
