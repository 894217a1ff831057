"""The floor F of a machine (DESIGN §10), measured at the start of every benchmark run.

F is the median time of one plain decode of one 3-4 s sentence with Whisper's 30 s window (faster-whisper's
transcribe(), tiny.en int8, one thread). Latencies divided by F compare across machines of different speeds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dalston.actors.speech.audio import read_wav

FLOOR_CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "librivox" / (
    "sense_and_sensibility_01_austen_64kb-0930.wav")  # 3.3 s, one sentence
CAPACITY_FLOORS = 3.0  # capacity: final p95 <= this many F + the endpointing silence


@dataclass(frozen=True)
class Floor:
    """The machine's floor F and the target derived from it."""

    floor_s: float
    silence_s: float

    @property
    def target_p95_s(self) -> float:
        return CAPACITY_FLOORS * self.floor_s + self.silence_s

    def multiples(self, figures: dict[str, float]) -> dict[str, float]:
        return {k: round(v / self.floor_s, 2) for k, v in figures.items() if k != "n"}


def measure_floor(repeats: int = 5) -> float:
    """F: the median time of one plain 30 s-window decode of one 3-4 s sentence (tiny.en int8, one thread)."""
    from faster_whisper import WhisperModel

    from dalston.actors.speech.models import ModelCatalogue

    model = WhisperModel(str(ModelCatalogue.default().resolve("fast").path), device="cpu", compute_type="int8",
                         cpu_threads=1, local_files_only=True)
    clip, _ = read_wav(FLOOR_CLIP)
    audio = clip.astype(np.float32) / 32768
    times = []
    for _ in range(repeats + 1):  # the first pays one-time setup
        started = time.perf_counter()
        segments, _info = model.transcribe(audio, language="en", beam_size=5, vad_filter=False,
                                           condition_on_previous_text=False)
        list(segments)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def endpointing_silence_s() -> float:
    from dalston.config import load_config

    return load_config().vad.min_silence_ms / 1000
