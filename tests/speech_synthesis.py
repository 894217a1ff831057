"""Synthetic speech from Debian's `flite` (installed by scripts/setup.sh --for-tests), with its reference text.

flite's voices (slt, rms, awb, ...) give different speakers for the multi-channel tests and exact control of
what is said (a rare name, a pause of a chosen length) for the vocabulary and endpointing tests.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from speech_fixtures import Clip

from dalston.actors.speech.audio import read_wav

SAMPLE_RATE = 16000


def flite_available() -> bool:
    return shutil.which("flite") is not None


needs_flite = pytest.mark.skipif(not flite_available(), reason="flite is not installed (scripts/setup.sh --for-tests)")


@functools.cache
def synthesise(text: str, voice: str = "slt") -> Clip:
    """`text` said by a flite voice, 16 kHz int16 mono."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, timeout=60,
                       capture_output=True)
        pcm, rate = read_wav(path)
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"flite voice {voice} speaks at {rate} Hz, expected {SAMPLE_RATE}")
    return Clip(f"flite-{voice}", pcm, rate, text)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def joined(*parts: Clip | float) -> Clip:
    """Clips and silences (a float: seconds) one after the other; the text is the clips' texts joined."""
    pcm = np.concatenate([silence(part) if isinstance(part, float) else part.pcm for part in parts])
    text = " ".join(part.text for part in parts if isinstance(part, Clip))
    return Clip("joined", pcm, SAMPLE_RATE, text)


# Ordinary sentences (no rare words), for word error over more speech than the five LibriVox clips.
SENTENCES = (
    "The meeting will start at nine tomorrow morning in the large room on the second floor.",
    "Please send me the report before the end of the week so that I can read it on the train.",
    "We should order more paper for the printer because we are almost out of it.",
    "The weather was cold and wet all weekend, so we stayed at home and watched a film.",
    "Could you call the customer back and ask whether the new delivery date works for them?",
    "Her brother moved to a small town near the coast and opened a bakery there last year.",
)
