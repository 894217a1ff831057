"""Why Dalston ships silero-vad's ONNX model instead of using the one bundled with faster-whisper.

    .venv/bin/python benchmarks/vad_model_compare.py

Runs both models through the same streaming wrapper and segmenter (512-sample windows, per-stream recurrent
state) over the LibriVox clips of tests/data and the bundled sample, each followed by 1.2 s of silence, and
prints the speech events of each, where they differ, and how far the per-window probabilities are apart.
faster-whisper's model (`assets/silero_vad_v6.onnx`) takes its recurrent state as separate `h` and `c`
tensors; it is called here window by window with both carried over, as faster-whisper itself does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faster_whisper
import numpy as np
import onnxruntime

from dalston.actors.speech.audio import pcm16_to_float32, read_wav
from dalston.actors.speech.silero import CONTEXT_SAMPLES, WINDOW_SAMPLES, SileroVad, SpeechSegmenter
from dalston.actors.speech.vad import SpeechEnded, SpeechStarted

ROOT = Path(__file__).resolve().parent.parent
FASTER_WHISPER_MODEL = Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class FasterWhisperSilero:
    """faster-whisper's bundled Silero model behind the interface of `SileroVad`."""

    _session: ClassVar[onnxruntime.InferenceSession | None] = None

    def __init__(self) -> None:
        if FasterWhisperSilero._session is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            FasterWhisperSilero._session = onnxruntime.InferenceSession(
                str(FASTER_WHISPER_MODEL), sess_options=options, providers=["CPUExecutionProvider"])
        self.windows = 0
        self.reset()

    def reset(self) -> None:
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), np.float32)
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)

    def probability(self, window: np.ndarray) -> float:
        assert self._session is not None
        self._input[0, CONTEXT_SAMPLES:] = window
        output, self._h, self._c = self._session.run(None, {"input": self._input, "h": self._h, "c": self._c})
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:]
        self.windows += 1
        return float(np.asarray(output).reshape(-1)[0])


def speech() -> np.ndarray:
    wavs = [*sorted((ROOT / "tests" / "data" / "librivox").glob("*.wav")), ROOT / "dalston" / "data" / "sample.wav"]
    parts = []
    for wav in wavs:
        samples, rate = read_wav(wav)
        assert rate == 16000
        parts += [pcm16_to_float32(samples), np.zeros(int(1.2 * rate), np.float32)]
    return np.concatenate(parts)


def events(vad: Any, audio: np.ndarray) -> list[tuple[str, int]]:
    segmenter = SpeechSegmenter(vad)
    out = []
    for item in segmenter.push(audio) + segmenter.flush():
        if isinstance(item.event, SpeechStarted):
            out.append(("start", item.event.start_sample))
        elif isinstance(item.event, SpeechEnded):
            out.append(("end", item.event.end_sample))
    return out


def main() -> None:
    audio = speech()
    shipped, bundled = events(SileroVad(), audio), events(FasterWhisperSilero(), audio)
    print(f"speech events: shipped model {len(shipped)}, faster-whisper's {len(bundled)}")
    shifts = [b[1] - a[1] for a, b in zip(shipped, bundled, strict=False) if a[0] == b[0]]
    for (kind, at_a), (_, at_b) in zip(shipped, bundled, strict=False):
        if at_a != at_b:
            print(f"  {kind:5s} at {at_a / 16000:7.3f} s vs {at_b / 16000:7.3f} s ({(at_b - at_a) / 16:+.0f} ms)")
    print(f"largest shift: {max(map(abs, shifts), default=0) / 16:.0f} ms")
    frames = audio[: len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES].reshape(-1, WINDOW_SAMPLES)
    a, b = SileroVad(), FasterWhisperSilero()
    pa = np.array([a.probability(f) for f in frames])
    pb = np.array([b.probability(f) for f in frames])
    flips = int(((pa > 0.5) != (pb > 0.5)).sum())
    print(f"{len(frames)} windows: max probability difference {np.abs(pa - pb).max():.3f}, "
          f"mean {np.abs(pa - pb).mean():.3f}, {flips} windows on the other side of 0.5")


if __name__ == "__main__":
    main()
