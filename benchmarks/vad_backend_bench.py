"""Per-window cost of Silero VAD on each backend (onnxruntime, torch), one stream, one thread, on real speech.

    .venv/bin/python benchmarks/vad_backend_bench.py [--repeats 5]

Scores the LibriVox clips of tests/data in 512-sample windows (what a session does) and prints the median
microseconds per window of each backend, with the spread over repeats. torch needs the `torch` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np

from dalston.actors.speech.audio import pcm16_to_float32, read_wav
from dalston.actors.speech.silero import WINDOW_SAMPLES
from dalston.actors.speech.vad_backends import new_vad

LIBRIVOX = Path(__file__).resolve().parent.parent / "tests" / "data" / "librivox"


def windows() -> np.ndarray:
    audio = np.concatenate([pcm16_to_float32(read_wav(wav)[0]) for wav in sorted(LIBRIVOX.glob("*.wav"))])
    return audio[: len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES].reshape(-1, WINDOW_SAMPLES)


def per_window_us(backend: str, frames: np.ndarray, repeats: int) -> list[float]:
    new_vad(backend).probability(frames[0])  # load the shared model outside the timing
    results = []
    for _ in range(repeats):
        vad = new_vad(backend)
        started = time.perf_counter()
        for frame in frames:
            vad.probability(frame)
        results.append(1e6 * (time.perf_counter() - started) / len(frames))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    frames = windows()
    backends = ["onnx"] + (["torch"] if importlib.util.find_spec("torch") else [])
    print(f"{len(frames)} windows of {WINDOW_SAMPLES} samples ({len(frames) * WINDOW_SAMPLES / 16000:.1f} s of audio)")
    for backend in backends:
        costs = per_window_us(backend, frames, args.repeats)
        print(f"{backend:6s} median {statistics.median(costs):7.1f} us/window  (min {min(costs):.1f}, "
              f"max {max(costs):.1f}; real-time factor {statistics.median(costs) / 32000:.4f})")


if __name__ == "__main__":
    main()
