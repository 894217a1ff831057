"""Client audio made by a library encoder (ffmpeg's, through PyAV): G.711 and Opus in Ogg or WebM.

What a phone bridge or a browser would send, built in the test from int16 PCM, so the decoders under test are
checked against an independent encoder rather than against their own inverse.
"""

from __future__ import annotations

import io
import itertools

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



# ---------------------------------------------------------------- a minimal WebM writer, for lacing

def _element(element_id: int, body: bytes) -> bytes:
    """An EBML element with an 8-byte size field (always valid, so the writer stays trivially simple)."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8) + (0x01 << 56 | len(body)).to_bytes(8) + body


def _ebml_signed(value: int) -> bytes:
    """A signed EBML lacing difference: the shortest vint whose bias-shifted value fits."""
    for length in range(1, 9):
        bias = (1 << (7 * length - 1)) - 1
        if 0 <= value + bias < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | (value + bias)).to_bytes(length)
    raise ValueError(value)


def _lace(packets: list[bytes], lacing: str) -> tuple[int, bytes]:
    """Matroska Block Lacing of `packets`: (the flags' lacing bits, the lacing header)."""
    if lacing == "none":
        assert len(packets) == 1
        return 0x00, b""
    count = bytes([len(packets) - 1])
    bits = {"xiph": 0x02, "fixed": 0x04, "ebml": 0x06}[lacing]
    if len(packets) == 1:  # one laced frame: its size is the rest of the block
        return bits, count
    if lacing == "fixed":
        assert len({len(p) for p in packets}) == 1
        return 0x04, count
    if lacing == "xiph":
        return 0x02, count + b"".join(b"\xff" * (len(p) // 255) + bytes([len(p) % 255]) for p in packets[:-1])
    sizes = [len(p) for p in packets[:-1]]
    first = (0x01 << 56 | sizes[0]).to_bytes(8)  # an 8-byte unsigned vint
    return 0x06, count + first + b"".join(_ebml_signed(b - a) for a, b in itertools.pairwise(sizes))


def webm_with_blocks(opus_head: bytes, blocks: list[tuple[str, list[bytes]]], *, channels: int = 1,
                     discard_ns: int = 0) -> bytes:
    """A live-style WebM (Segment and Cluster of unknown size) of one Opus track whose blocks carry the given
    packets with the given lacing ("none", "xiph", "ebml", "fixed"). With `discard_ns`, the last block is a
    BlockGroup with that DiscardPadding, as an encoder writes for its padding at the end."""
    unknown = (0x01FFFFFFFFFFFFFF).to_bytes(8)
    entry = _element(0xD7, b"\x01") + _element(0x86, b"A_OPUS") + _element(0x63A2, opus_head) \
        + _element(0xE1, _element(0x9F, bytes([channels])))
    out = [_element(0x1A45DFA3, _element(0x4282, b"webm")), (0x18538067).to_bytes(4) + unknown,
           _element(0x1654AE6B, _element(0xAE, entry)), (0x1F43B675).to_bytes(4) + unknown, _element(0xE7, b"\x00")]
    for i, (lacing, packets) in enumerate(blocks):
        bits, header = _lace(packets, lacing)
        last_grouped = discard_ns and i == len(blocks) - 1
        body = b"\x81" + (i * 20).to_bytes(2) + bytes([bits if last_grouped else 0x80 | bits]) + header \
            + b"".join(packets)
        if last_grouped:
            out.append(_element(0xA0, _element(0xA1, body) + _element(0x75A2, discard_ns.to_bytes(4, signed=True))))
        else:
            out.append(_element(0xA3, body))
    return b"".join(out)
