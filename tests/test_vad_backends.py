"""Silero on torch (`vad.backend = "torch"`) against the shipped ONNX model: the same events on real speech,
state kept per stream, and the setting itself. Runs where the `torch` extra is installed (scripts/setup.sh
installs it, so CI does)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from speech_fixtures import check_event_order, check_finals, sample_clip, start_session

from dalston.actors.speech.audio import pcm16_to_float32, read_wav
from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.factory import new_segmenter
from dalston.actors.speech.protocol import FinalTranscribed
from dalston.actors.speech.silero import WINDOW_SAMPLES, SileroVad, SpeechSegmenter
from dalston.actors.speech.vad import SpeechEnded, SpeechStarted
from dalston.config import ConfigError, VadConfig, load_config
from dalston.wer import word_error_rate

torch = pytest.importorskip("torch", reason="the torch extra is not installed (pip install -e '.[torch]')")
from dalston.actors.speech.silero_torch import TorchSileroVad  # noqa: E402  (needs torch)

LIBRIVOX = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))
RATE = 16000


@cache
def speech_with_pauses() -> np.ndarray:
    """Every LibriVox clip, each followed by 1.2 s of silence."""
    parts: list[np.ndarray] = []
    for wav in LIBRIVOX:
        samples, rate = read_wav(wav)
        assert rate == RATE
        parts += [pcm16_to_float32(samples), np.zeros(int(1.2 * RATE), np.float32)]
    return np.concatenate(parts)


def boundaries(make_vad: Callable[[], object], audio: np.ndarray, chunk: int) -> list[tuple[str, int]]:
    segmenter = SpeechSegmenter(make_vad())  # type: ignore[arg-type]
    events = []
    for at in range(0, len(audio), chunk):
        events += segmenter.push(audio[at : at + chunk])
    events += segmenter.flush()
    out: list[tuple[str, int]] = []
    for item in events:
        if isinstance(item.event, SpeechStarted):
            out.append(("start", item.event.start_sample))
        elif isinstance(item.event, SpeechEnded):
            out.append(("end", item.event.end_sample))
    return out


def test_torch_and_onnx_give_the_same_speech_events_on_real_audio_within_one_window() -> None:
    audio = speech_with_pauses()
    onnx = boundaries(SileroVad, audio, 1600)
    on_torch = boundaries(TorchSileroVad, audio, 1234)
    assert len(onnx) == len(on_torch) == 2 * len(LIBRIVOX)  # one utterance per clip
    for (kind_a, at_a), (kind_b, at_b) in zip(onnx, on_torch, strict=True):
        assert kind_a == kind_b and abs(at_a - at_b) <= WINDOW_SAMPLES, (onnx, on_torch)


def test_torch_probabilities_follow_the_onnx_model_window_by_window() -> None:
    audio = speech_with_pauses()[: 400 * WINDOW_SAMPLES]
    windows = audio.reshape(-1, WINDOW_SAMPLES)
    onnx, on_torch = SileroVad(), TorchSileroVad()
    expected = np.array([onnx.probability(w) for w in windows])
    got = np.array([on_torch.probability(w) for w in windows])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert ((got > 0.5) == (expected > 0.5)).all()


def test_each_torch_stream_keeps_its_own_state_over_the_shared_model() -> None:
    audio = speech_with_pauses()
    first, second = audio[: 200 * WINDOW_SAMPLES], audio[-200 * WINDOW_SAMPLES :]
    one, other = TorchSileroVad(), TorchSileroVad()
    interleaved_one, interleaved_other = [], []
    for a, b in zip(first.reshape(-1, WINDOW_SAMPLES), second.reshape(-1, WINDOW_SAMPLES), strict=True):
        interleaved_one.append(one.probability(a))
        interleaved_other.append(other.probability(b))
    solo = TorchSileroVad()
    alone = [solo.probability(a) for a in first.reshape(-1, WINDOW_SAMPLES)]
    assert one._model is other._model  # one loaded module per process
    np.testing.assert_allclose(interleaved_one, alone, atol=1e-6)


def test_the_backend_is_a_setting_and_a_wrong_one_is_refused() -> None:
    assert load_config(environ={}).vad.backend == "onnx"
    assert load_config(environ={"DALSTON_VAD_BACKEND": "torch"}).vad.backend == "torch"
    assert isinstance(new_segmenter(VadConfig(backend="torch")).vad, TorchSileroVad)
    assert isinstance(new_segmenter(VadConfig()).vad, SileroVad)
    with pytest.raises(ConfigError, match=r"vad\.backend"):
        load_config(environ={"DALSTON_VAD_BACKEND": "cuda"})


@pytest.mark.slow
async def test_a_session_on_the_torch_backend_transcribes_the_sample(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    clip = sample_clip()
    run = await start_session(tiny_factory, vad=VadConfig(backend="torch"))
    await run.push([clip.pcm[at : at + 1600].tobytes() for at in range(0, len(clip.pcm), 1600)])
    await run.finish()
    check_event_order(run.events)
    check_finals(run.events)
    assert len(run.of(FinalTranscribed)) == 5  # the sample's five sentences
    assert word_error_rate(clip.text, run.end.transcript) <= 0.15
