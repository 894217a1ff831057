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

# Varied sentences (short and long, numbers, lists, questions), for the window study and word error.
VARIED_SENTENCES = (
    "Remember to water the plants every other morning.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The meeting has been moved to Thursday afternoon at three thirty.",
    "Can you send me the report before the end of the day?",
    "We need six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother.",
    "Turn left at the second traffic light and the station is on your right.",
    "I would like to book a table for four people tomorrow evening.",
    "The quick brown fox jumps over the lazy dog.",
    "Her account number is four seven two nine, and the balance is overdue.",
    "Nobody expected the weather to change so quickly during the afternoon.",
    "Yes.",
    "No, thank you, I am fine.",
    "Could you repeat that more slowly, please?",
    "The committee will review the proposal and publish its decision next month.",
    "After the storm passed, the children ran outside to look for rainbows over the hills.",
    "Open the window.",
    "My flight leaves at seven in the morning, so I should go to bed early.",
    "The doctor said the results look normal and there is nothing to worry about.",
    "Several engineers worked through the night to restore the power to the hospital.",
    "It was the best of times, it was the worst of times. It was the age of wisdom.",
    "Birds sing in the trees. The sun is warm. The river runs slowly to the sea.",
    "Please confirm your email address and choose a new password with at least twelve characters.",
)
