"""How many mel frames the Whisper encoder sees for one utterance (pure: no model, no I/O).

Whisper was trained on 30 s windows and faster-whisper always pads to them, so a 3 s utterance pays for a 30 s
encoder pass. CTranslate2 accepts fewer frames: "fit" cuts the features to the utterance plus a margin, rounded
up to one of a few fixed buckets so that the shapes (and a batch's padding) repeat. "full" is Whisper's 30 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

FRAMES_PER_S = 100  # mel frames: a hop of 160 samples at 16 kHz
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s

WindowMode = Literal["fit", "full"]


@dataclass(frozen=True)
class WindowPolicy:
    """`encoder_window`, `window_margin_s` and `window_buckets_s` of a `[models.<alias>]` table."""

    mode: WindowMode = "fit"
    margin_s: float = 1.0
    buckets_s: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0)

    def __post_init__(self) -> None:
        if self.mode not in ("fit", "full"):
            raise ValueError(f"encoder_window must be 'fit' or 'full', not {self.mode!r}")
        if self.margin_s < 0 or not self.buckets_s or min(self.buckets_s) <= 0:
            raise ValueError("window margin must be >= 0 and buckets positive")


def window_frames(content_frames: int, policy: WindowPolicy) -> int:
    """The encoder input length for `content_frames` of audio: the smallest bucket holding the audio plus the
    margin, never more than the full window (audio longer than 30 s is cut there, as Whisper does)."""
    if policy.mode == "full":
        return FULL_WINDOW_FRAMES
    wanted = max(0, content_frames) + math.ceil(policy.margin_s * FRAMES_PER_S)
    for bucket_s in sorted(policy.buckets_s):
        frames = _even(round(bucket_s * FRAMES_PER_S))
        if frames >= wanted:
            return min(frames, FULL_WINDOW_FRAMES)
    return FULL_WINDOW_FRAMES


def batch_window_frames(content_frames: Sequence[int], policy: WindowPolicy) -> int:
    """One length for a whole batch: the longest member's bucket (the others get more padding)."""
    return max((window_frames(frames, policy) for frames in content_frames), default=FULL_WINDOW_FRAMES)


def fit_features(features: np.ndarray, frames: int) -> np.ndarray:
    """Cut or zero-pad (n_mels, n) log-mel features to (n_mels, frames), as faster-whisper pads to 30 s."""
    fitted = np.zeros((features.shape[0], frames), dtype=np.float32)
    kept = min(frames, features.shape[1])
    fitted[:, :kept] = features[:, :kept]
    return fitted


def _even(frames: int) -> int:
    # The encoder's strided convolution halves the frames; an even count keeps every position whole.
    return frames + frames % 2
