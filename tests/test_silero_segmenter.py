"""SileroVad and SpeechSegmenter on real speech (LibriVox) and on non-speech signals."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalston.actors.speech.audio import pcm16_to_float32, read_wav
from dalston.actors.speech.models import file_sha256
from dalston.actors.speech.silero import (
    SILERO_ONNX_SHA256,
    SegmenterEvent,
    SileroVad,
    SpeechSegmenter,
    silero_model_path,
    silero_package_data,
)
from dalston.actors.speech.vad import PauseStarted, SpeechEnded, SpeechStarted, VadParams

LIBRIVOX = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))
RATE = 16000
PAUSE_S = 1.2


@cache
def clip(index: int) -> np.ndarray:
    samples, rate = read_wav(LIBRIVOX[index])
    assert rate == RATE
    return pcm16_to_float32(samples)


@cache
def clips_with_pauses() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All clips, each followed by 1.2 s of digital silence; and where each clip lies."""
    parts, spans, pos = [], [], 0
    for i in range(len(LIBRIVOX)):
        parts += [clip(i), np.zeros(int(PAUSE_S * RATE), dtype=np.float32)]
        spans.append((pos, pos + len(clip(i))))
        pos += len(clip(i)) + int(PAUSE_S * RATE)
    return np.concatenate(parts), spans


def segment(audio: np.ndarray, chunk: int | list[int], params: VadParams | None = None) -> list[SegmenterEvent]:
    segmenter = SpeechSegmenter(SileroVad(), params)
    sizes = chunk if isinstance(chunk, list) else [chunk] * (len(audio) // chunk + 1)
    events, pos = [], 0
    for size in sizes:
        events += segmenter.push(audio[pos : pos + size])
        pos += size
    events += segmenter.push(audio[pos:])
    return events + segmenter.flush()


def ended(events: list[SegmenterEvent]) -> list[SegmenterEvent]:
    return [e for e in events if isinstance(e.event, SpeechEnded)]


def loud_frames(audio: np.ndarray, frame: int = 320, dbfs: float = -30.0) -> list[int]:
    """Start samples of 20 ms frames clearly above the recording's noise floor."""
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    rms_db = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
    return [int(i) * frame for i in np.flatnonzero(rms_db > dbfs)]


def test_each_librivox_sentence_becomes_a_segment_covering_its_loud_frames():
    audio, spans = clips_with_pauses()
    segments = [(e.event.start_sample, e.event.end_sample) for e in ended(segment(audio, 1600))]
    assert len(segments) >= len(spans)
    loud = loud_frames(audio)
    covered = [f for f in loud if any(s <= f and f + 320 <= e for s, e in segments)]
    assert len(covered) >= 0.98 * len(loud)
    for start, end in segments:  # no segment reaches into the middle of a 1.2 s pause
        assert any(a - 0.6 * RATE <= start and end <= b + 0.6 * RATE for a, b in spans)


def test_segment_audio_is_exactly_the_pushed_audio_between_its_bounds():
    audio, _ = clips_with_pauses()
    for item in segment(audio, 1000):
        if isinstance(item.event, PauseStarted | SpeechEnded):
            np.testing.assert_array_equal(item.audio, audio[item.event.start_sample : item.event.end_sample])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=60))
def test_any_chunking_of_the_same_audio_gives_identical_events(sizes):
    audio = np.concatenate([clip(1), np.zeros(RATE, dtype=np.float32), clip(4)])
    reference = segment(audio, len(audio))
    chunked = segment(audio, sizes)
    assert [e.event for e in chunked] == [e.event for e in reference]
    for a, b in zip(chunked, reference, strict=True):
        assert (a.audio is None) == (b.audio is None)
        if a.audio is not None:
            np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.parametrize(
    "signal",
    [
        np.zeros(10 * RATE, dtype=np.float32),
        (0.3 * np.sin(2 * np.pi * 440 * np.arange(10 * RATE) / RATE)).astype(np.float32),
        (0.05 * np.random.default_rng(7).standard_normal(10 * RATE)).astype(np.float32),
    ],
    ids=["silence", "440 Hz tone", "white noise"],
)
def test_non_speech_signals_produce_no_speech(signal):
    assert segment(signal, 1600) == []


def test_flush_in_the_middle_of_speech_returns_all_the_speech_so_far():
    segmenter = SpeechSegmenter(SileroVad())
    pushed = clip(0)[: 3 * RATE + 100]  # not a whole number of windows
    events = segmenter.push(pushed)
    assert [type(e.event) for e in events] == [SpeechStarted]
    start = events[0].event.start_sample
    utterance = segmenter.current_utterance()
    assert utterance is not None and utterance[0] == start
    np.testing.assert_array_equal(utterance[1], pushed[start:])
    (flushed,) = segmenter.flush()
    assert flushed.event == SpeechEnded(start, len(pushed), "flush")
    np.testing.assert_array_equal(flushed.audio, pushed[start:])
    assert segmenter.current_utterance() is None


def test_a_long_monologue_is_cut_into_contiguous_segments_no_longer_than_max():
    params = VadParams(max_segment_s=3.0, min_silence_ms=2000)
    audio = np.concatenate([clip(0), clip(3)])
    segments = [e.event for e in ended(segment(audio, 3200, params))]
    cuts = [s for s in segments if s.cause == "max_length"]
    assert cuts, "expected the 13 s monologue to be cut"
    assert all(s.end_sample - s.start_sample <= 3 * RATE for s in segments)
    for cut in cuts:
        assert any(s.start_sample == cut.end_sample for s in segments)  # the next one starts right there


def test_the_buffer_keeps_only_what_the_current_segment_and_pre_pad_need():
    params = VadParams(max_segment_s=4.0)
    segmenter = SpeechSegmenter(SileroVad(), params)
    audio, _ = clips_with_pauses()
    bound = params.max_segment + params.min_silence + params.pad + 2 * 512 + 1600
    for pos in range(0, len(audio), 1600):
        segmenter.push(audio[pos : pos + 1600])
        assert segmenter.statistics().buffered_samples <= bound
    assert segmenter.statistics().buffer_capacity_samples <= 2 * bound
    whole_file = SpeechSegmenter(SileroVad(), params)
    whole_file.push(audio)  # 31 s in one call
    assert whole_file.statistics().buffer_capacity_samples <= 2 * bound


def test_streams_sharing_the_model_keep_separate_recurrent_state():
    windows_a = clip(0)[: 40 * 512].reshape(40, 512)
    windows_b = clip(2)[: 40 * 512].reshape(40, 512)
    vad_a, vad_b, solo_a = SileroVad(), SileroVad(), SileroVad()
    interleaved = []
    for wa, wb in zip(windows_a, windows_b, strict=True):
        interleaved.append(vad_a.probability(wa))
        vad_b.probability(wb)
    alone = [solo_a.probability(w) for w in windows_a]
    assert interleaved == alone
    assert max(alone) > 0.5


def test_silero_refuses_windows_that_are_not_512_samples():
    with pytest.raises(ValueError):
        SileroVad().probability(np.zeros(480, dtype=np.float32))


def test_streaming_probabilities_match_silero_batched_sequence_model():
    """The package's sequence model scores all windows in one call, building each window's 64-sample
    context itself; the streaming wrapper must agree with it (context and state handled right)."""
    try:
        sequence_model = silero_package_data() / "silero_vad_16k_sequence.onnx"
    except FileNotFoundError:
        pytest.skip("silero-vad is not installed here (it comes with the torch extra)")
    frames = clip(1)[: len(clip(1)) // 512 * 512].reshape(-1, 512)
    contexts = np.zeros((len(frames), 64), dtype=np.float32)
    contexts[1:] = frames[:-1, -64:]
    sequence = onnxruntime.InferenceSession(
        str(sequence_model), providers=["CPUExecutionProvider"]
    )
    zeros = np.zeros((1, 1, 128), dtype=np.float32)
    (expected, *_) = sequence.run(
        ["speech_probs"], {"input": np.concatenate([contexts, frames], axis=1), "h": zeros, "c": zeros}
    )
    vad = SileroVad()
    streamed = [vad.probability(frame) for frame in frames]
    np.testing.assert_allclose(streamed, expected.reshape(-1), atol=1e-5)


def test_the_shipped_model_is_the_silero_vad_release_byte_for_byte():
    assert file_sha256(silero_model_path()) == SILERO_ONNX_SHA256
    try:
        released = silero_package_data() / "silero_vad.onnx"
    except FileNotFoundError:
        pytest.skip("silero-vad is not installed here")
    assert file_sha256(released) == SILERO_ONNX_SHA256
