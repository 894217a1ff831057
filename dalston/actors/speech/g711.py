"""G.711 µ-law and A-law to linear PCM (ITU-T G.711), as 256-entry lookup tables (pure, numpy only).

Each 8-bit code is a sign, a 3-bit segment (the exponent) and a 4-bit step inside the segment; the tables are
built from that definition once, so decoding a frame is one indexed read. Values are scaled to 16-bit PCM the
way telephony software does it (µ-law: 14-bit magnitudes x 4, peak 32124; A-law: 13-bit x 8, peak 32256).
"""

from __future__ import annotations

import numpy as np

_MULAW_BIAS = 33  # µ-law reconstruction is offset by 33 (in 14-bit units) so that segment 0 starts at zero


def mulaw_to_linear(code: int) -> int:
    """One µ-law code -> int16. Codes are sent with every bit inverted; after inverting, bit 7 set is negative."""
    inverted = ~code & 0xFF
    segment, step = (inverted >> 4) & 0x07, inverted & 0x0F
    magnitude = (((2 * step + _MULAW_BIAS) << segment) - _MULAW_BIAS) * 4
    return -magnitude if inverted & 0x80 else magnitude


def alaw_to_linear(code: int) -> int:
    """One A-law code -> int16. Even bits are inverted on the line (XOR 0x55); bit 7 set is positive."""
    value = code ^ 0x55
    segment, step = (value >> 4) & 0x07, value & 0x0F
    magnitude = 2 * step + 1 if segment == 0 else (2 * step + 33) << (segment - 1)
    return magnitude * 8 if value & 0x80 else -magnitude * 8


MULAW_TABLE = np.array([mulaw_to_linear(code) for code in range(256)], dtype=np.int16)
ALAW_TABLE = np.array([alaw_to_linear(code) for code in range(256)], dtype=np.int16)


def decode_mulaw(data: bytes | bytearray | memoryview) -> np.ndarray:
    """µ-law bytes -> int16 samples (one per byte)."""
    return MULAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes | bytearray | memoryview) -> np.ndarray:
    """A-law bytes -> int16 samples (one per byte)."""
    return ALAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def encode_mulaw(samples: np.ndarray) -> bytes:
    """int16 -> µ-law, the nearest code by table search (for tests and `dalston stream --encoding pcm_mulaw`)."""
    return _nearest_codes(samples, MULAW_TABLE)


def encode_alaw(samples: np.ndarray) -> bytes:
    """int16 -> A-law, the nearest code by table search."""
    return _nearest_codes(samples, ALAW_TABLE)


def _nearest_codes(samples: np.ndarray, table: np.ndarray) -> bytes:
    order = np.argsort(table, kind="stable")
    levels = table[order].astype(np.int32)
    values = np.asarray(samples, dtype=np.int32).reshape(-1)
    upper = np.clip(np.searchsorted(levels, values), 1, len(levels) - 1)
    lower = upper - 1
    nearer_lower = (values - levels[lower]) <= (levels[upper] - values)
    return order[np.where(nearer_lower, lower, upper)].astype(np.uint8).tobytes()
