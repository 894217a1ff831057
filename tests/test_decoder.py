"""The Whisper decoder: pure guards with hypothesis, then the real tiny.en model on real LibriVox speech."""

from __future__ import annotations

import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.speech.decoder import (
    SAMPLE_RATE,
    DecodedSegment,
    GuardOptions,
    WhisperDecoder,
    Word,
    apply_guards,
    clamp_segments,
    collapse_repeats,
    is_filler,
    is_made_up,
    repeat_kept_indices,
)
from dalston.actors.speech.encoder_window import WindowPolicy, window_frames
from dalston.actors.speech.models import ModelCatalogue
from dalston.wer import corpus_word_error_rate, word_error_rate, word_key

CLIPS = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))
GUARDS = GuardOptions()


def segment(text: str, *, no_speech: float = 0.05, logprob: float = -0.3, ratio: float = 1.2,
            start_s: float = 0.0, end_s: float = 1.0) -> DecodedSegment:
    return DecodedSegment(start_s, end_s, text, logprob, no_speech, None, ratio)


def has_run(keys: list[str], min_repeats: int, max_len: int) -> bool:
    """Brute force: does any phrase of up to max_len keys occur min_repeats times in a row?"""
    for length in range(1, max_len + 1):
        for start in range(len(keys) - length * min_repeats + 1):
            phrase = keys[start:start + length]
            if all(keys[start + k * length:start + (k + 1) * length] == phrase for k in range(min_repeats)):
                return True
    return False


# ---------------------------------------------------------------- guards (pure)

TEXT = st.lists(st.sampled_from(["la", "La,", "beep", "no", "yes.", "thank", "you"]), max_size=24).map(" ".join)


@given(TEXT)
def test_collapsing_repeats_is_idempotent_and_never_lengthens(text: str) -> None:
    once = collapse_repeats(text)
    assert collapse_repeats(once) == once
    assert len(once.split()) <= len(text.split())
    assert not has_run([word_key(w) for w in once.split()], 3, 8)


@given(st.lists(st.sampled_from("abc"), max_size=20), st.integers(2, 4), st.integers(1, 4))
def test_kept_indices_are_an_ordered_subset_with_no_long_runs(keys: list[str], repeats: int, max_len: int) -> None:
    kept = repeat_kept_indices(keys, repeats, max_len)
    assert kept == sorted(set(kept))
    assert all(0 <= i < len(keys) for i in kept)
    assert not has_run([keys[i] for i in kept], repeats, max_len)


def test_a_phrase_said_three_times_in_a_row_is_kept_once() -> None:
    assert collapse_repeats("Beep beep beep beep beep") == "Beep"
    assert collapse_repeats("I said thank you, thank you. Thank you!") == "I said thank you,"
    assert collapse_repeats("no no, said he") == "no no, said he"


def test_unlikely_segments_with_high_no_speech_probability_are_made_up() -> None:
    assert is_made_up(segment("you", no_speech=0.9, logprob=-1.4), GUARDS)
    assert is_made_up(segment("beep beep", no_speech=0.8, logprob=-0.1, ratio=9.0), GUARDS)
    assert not is_made_up(segment("hello there", no_speech=0.9, logprob=-0.2), GUARDS)
    assert not is_made_up(segment("mumbled words", no_speech=0.1, logprob=-1.8), GUARDS)


def test_fillers_are_dropped_only_when_whisper_doubts_there_was_speech() -> None:
    assert is_filler(segment("Thank you.", no_speech=0.5), GUARDS)
    assert not is_filler(segment("Thank you.", no_speech=0.01), GUARDS)
    assert not is_filler(segment("Thank you all.", no_speech=0.9), GUARDS)


def test_guards_drop_made_up_segments_and_collapse_repeated_ones() -> None:
    segments = [segment("hello"), segment("you", no_speech=0.95, logprob=-1.2), segment("same thing"),
                segment("Same thing."), segment("same thing"), segment("...")]
    assert [s.text for s in apply_guards(segments, GUARDS)] == ["hello", "same thing"]


def test_collapsing_words_keeps_words_and_text_in_step() -> None:
    words = tuple(Word(w, i * 0.2, i * 0.2 + 0.1, 0.9) for i, w in enumerate(["go", "go", "go", "now"]))
    collapsed = apply_guards([DecodedSegment(0.0, 1.0, "go go go now", -0.2, 0.0, words)], GUARDS)[0]
    assert collapsed.text == "go now"
    assert [w.word for w in collapsed.words or ()] == ["go", "now"]


TIMES = st.floats(-1.0, 12.0, allow_nan=False)


@given(st.lists(st.tuples(TIMES, TIMES, st.lists(st.tuples(TIMES, TIMES), max_size=5)), max_size=5),
       st.floats(0.0, 10.0))
def test_clamped_segments_and_words_are_ordered_and_inside_their_bounds(raw, duration_s: float) -> None:
    segments = [DecodedSegment(a, b, "x", -0.2, 0.0, tuple(Word("w", c, d, 1.0) for c, d in words))
                for a, b, words in raw]
    previous_end = 0.0
    for seg in clamp_segments(segments, duration_s):
        assert previous_end <= seg.start_s <= seg.end_s <= duration_s
        floor = seg.start_s
        for word in seg.words or ():
            assert floor <= word.start_s <= word.end_s <= seg.end_s
            floor = word.end_s
        previous_end = seg.end_s


# ---------------------------------------------------------------- the real model


def read_clip(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == SAMPLE_RATE and wav.getnchannels() == 1
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> WhisperDecoder:
    catalogue = ModelCatalogue.default(cache_dir=tmp_path_factory.mktemp("models"))
    decoder = WhisperDecoder(catalogue.resolve("fast"))
    decoder.warm_up()
    return decoder


@pytest.mark.slow
def test_tiny_en_transcribes_the_librivox_clips_with_little_word_error(tiny: WhisperDecoder) -> None:
    pairs = []
    for clip in CLIPS:
        result = tiny.decode(read_clip(clip), final=True, word_timestamps=False, language=None, offset_s=0.0)
        assert result.language == "en"
        assert result.duration_s == pytest.approx(read_clip(clip).size / SAMPLE_RATE)
        pairs.append((clip.with_suffix(".txt").read_text(), result.text))
    assert corpus_word_error_rate(pairs) <= 0.15


@pytest.mark.slow
def test_final_words_are_ordered_and_inside_their_segment_and_the_audio(tiny: WhisperDecoder) -> None:
    audio = read_clip(CLIPS[0])
    offset_s = 12.5
    result = tiny.decode(audio, final=True, word_timestamps=True, language="en", offset_s=offset_s)
    assert result.segments
    floor = offset_s
    for seg in result.segments:
        assert seg.words
        assert floor <= seg.start_s <= seg.end_s <= offset_s + result.duration_s
        for word in seg.words:
            assert seg.start_s <= word.start_s <= word.end_s <= seg.end_s
            assert 0.0 <= word.confidence <= 1.0
            assert word.word == word.word.strip() and word.word
            floor = word.end_s
    spoken = " ".join(word.word for seg in result.segments for word in seg.words or ())
    assert word_error_rate(result.text, spoken) == 0.0


@pytest.mark.slow
def test_the_offset_shifts_every_time_and_nothing_else(tiny: WhisperDecoder) -> None:
    audio = read_clip(CLIPS[1])
    at_zero = tiny.decode(audio, final=True, word_timestamps=True, language="en", offset_s=0.0)
    later = tiny.decode(audio, final=True, word_timestamps=True, language="en", offset_s=100.0)
    assert later.text == at_zero.text
    for a, b in zip(at_zero.segments, later.segments, strict=True):
        assert b.start_s == pytest.approx(a.start_s + 100.0)
        assert b.end_s == pytest.approx(a.end_s + 100.0)
        for wa, wb in zip(a.words or (), b.words or (), strict=True):
            assert wb.start_s == pytest.approx(wa.start_s + 100.0)


@pytest.mark.slow
@pytest.mark.parametrize("final", [True, False])
def test_silence_and_a_pure_tone_give_no_text(tiny: WhisperDecoder, final: bool) -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    for audio in (np.zeros(3 * SAMPLE_RATE, dtype=np.float32), (0.3 * np.sin(2 * np.pi * 440 * t)),
                  np.zeros(0, dtype=np.float32)):
        result = tiny.decode(audio.astype(np.float32), final=final, word_timestamps=final, language="en",
                             offset_s=1.0)
        assert result.text == ""
        assert result.segments == ()


@pytest.mark.slow
def test_a_greedy_partial_decode_gives_the_words_without_timestamps(tiny: WhisperDecoder) -> None:
    clip = CLIPS[2]
    result = tiny.decode(read_clip(clip), final=False, word_timestamps=True, language=None, offset_s=3.0)
    assert word_error_rate(clip.with_suffix(".txt").read_text(), result.text) <= 0.15
    assert all(seg.words is None for seg in result.segments)
    assert all(seg.start_s >= 3.0 for seg in result.segments)


@pytest.mark.slow
def test_decodes_from_several_threads_at_once_match_decodes_one_at_a_time(tiny: WhisperDecoder) -> None:
    audios = [read_clip(clip) for clip in CLIPS[:3]]

    def decode(audio: np.ndarray) -> str:
        return tiny.decode(audio, final=False, word_timestamps=False, language="en", offset_s=0.0).text

    alone = [decode(audio) for audio in audios]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(decode, audios))
    assert together == alone
    assert tiny.statistics()["decodes"] >= 6


@pytest.mark.slow
def test_a_prompt_does_not_stop_the_clip_from_being_transcribed(tiny: WhisperDecoder) -> None:
    clip = CLIPS[4]
    result = tiny.decode(read_clip(clip), final=True, word_timestamps=False, language="en", offset_s=0.0,
                         prompt="Sense and Sensibility, by Jane Austen.")
    assert word_error_rate(clip.with_suffix(".txt").read_text(), result.text) <= 0.15


# ---------------------------------------------------------------- the encoder window that fits the utterance


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WhisperDecoder]:
    resolved = ModelCatalogue.default(cache_dir=tmp_path_factory.mktemp("models")).resolve("fast")
    return {mode: WhisperDecoder(resolved, policy=WindowPolicy(mode)) for mode in ("fit", "full")}


@pytest.mark.slow
def test_the_librivox_clips_decoded_with_a_fitted_window_match_the_full_window(
        windows: dict[str, WhisperDecoder]) -> None:
    pairs: dict[str, list[tuple[str, str]]] = {"fit": [], "full": []}
    fit_vs_full = []
    for clip in CLIPS:
        audio, reference = read_clip(clip), clip.with_suffix(".txt").read_text()
        texts = {mode: decoder.decode(audio, final=True, word_timestamps=False, language="en", offset_s=0.0)
                 for mode, decoder in windows.items()}
        assert texts["fit"].window_frames < 3000 or texts["fit"].redone
        for mode, result in texts.items():
            pairs[mode].append((reference, result.text))
        fit_vs_full.append((texts["full"].text, texts["fit"].text))
    # One word in the ~90 of these clips is 1.1 points; the study (benchmarks/window_study.py) measures more.
    assert corpus_word_error_rate(pairs["fit"]) <= corpus_word_error_rate(pairs["full"]) + 0.025
    assert corpus_word_error_rate(fit_vs_full) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("final", [True, False])
def test_tone_silence_and_noise_give_no_text_with_a_fitted_window(windows: dict[str, WhisperDecoder],
                                                                  final: bool) -> None:
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    noise = np.random.default_rng(7).normal(0.0, 0.1, 3 * SAMPLE_RATE)
    for audio in (np.zeros(2 * SAMPLE_RATE), 0.3 * np.sin(2 * np.pi * 440 * t), noise):
        result = windows["fit"].decode(audio.astype(np.float32), final=final, word_timestamps=final,
                                       language="en", offset_s=4.0)
        assert result.text == ""
        assert result.segments == ()


@pytest.mark.slow
def test_fitted_window_word_timestamps_stay_inside_the_utterance(windows: dict[str, WhisperDecoder]) -> None:
    offset_s = 7.0
    for clip in CLIPS:
        audio = read_clip(clip)
        result = windows["fit"].decode(audio, final=True, word_timestamps=True, language="en", offset_s=offset_s)
        words = [word for seg in result.segments for word in seg.words or ()]
        assert words, clip.name
        floor = offset_s
        for word in words:
            assert floor <= word.start_s <= word.end_s <= offset_s + audio.size / SAMPLE_RATE
            floor = word.end_s
        spoken = " ".join(word.word for word in words)
        assert word_error_rate(result.text, spoken) == 0.0
        # The last word ends near the speech's end, not at the end of the padded window.
        assert words[-1].end_s >= offset_s + 0.5 * audio.size / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class Request:
    audio: np.ndarray
    final: bool = True
    word_timestamps: bool = True
    language: str | None = "en"
    offset_s: float = 2.0
    prompt: str | None = None
    full_window: bool = False


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fit", "full"])
def test_a_batch_decodes_each_utterance_as_it_would_be_decoded_alone(windows: dict[str, WhisperDecoder],
                                                                    mode: str) -> None:
    decoder = windows[mode]
    groups: dict[int, list[Request]] = {}
    for clip in CLIPS:  # grouped by window length, as the transcriber groups them
        audio = read_clip(clip)
        groups.setdefault(decoder.batch_key(audio.size), []).append(Request(audio))
    assert any(len(group) > 1 for group in groups.values())
    for final in (True, False):
        for group in groups.values():
            requests = [replace(r, final=final) for r in group]
            together = decoder.decode_batch(requests)
            alone = [decoder.decode(r.audio, final=final, word_timestamps=True, language="en", offset_s=2.0)
                     for r in requests]
            assert [r.text for r in together] == [r.text for r in alone]
            for a, b in zip(together, alone, strict=True):
                assert [t for s in a.segments for t in (s.start_s, s.end_s)] == pytest.approx(
                    [t for s in b.segments for t in (s.start_s, s.end_s)])
                assert [w.word for s in a.segments for w in s.words or ()] == \
                    [w.word for s in b.segments for w in s.words or ()]


@pytest.mark.slow
@pytest.mark.parametrize("samples", [1, 159, 160, 16_000, 64_159, 64_160, 480_000])
def test_the_batch_key_is_the_window_the_feature_extractor_frames_get(windows: dict[str, WhisperDecoder],
                                                                      samples: int) -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    frames = FeatureExtractor(feature_size=80)(np.zeros(samples, dtype=np.float32)).shape[-1] - 1
    decoder = windows["fit"]
    assert decoder.batch_key(samples) == window_frames(frames, decoder.policy)


@pytest.mark.slow
def test_a_batch_of_utterances_with_different_prompts_decodes_each_as_alone(
        windows: dict[str, WhisperDecoder]) -> None:
    decoder = windows["fit"]
    short = [read_clip(clip) for clip in CLIPS if read_clip(clip).size < 4 * SAMPLE_RATE]
    prompt = "Sense and Sensibility, by Jane Austen."
    requests = [Request(short[0], prompt=prompt), Request(short[1]), Request(short[1], prompt=prompt)]
    together = decoder.decode_batch(requests)
    alone = [decoder.decode_batch([r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.text for r in together)


@pytest.mark.slow
def test_a_request_for_the_full_window_gets_the_30_s_decode_under_the_fit_policy(
        windows: dict[str, WhisperDecoder]) -> None:
    audio = read_clip(CLIPS[1])
    forced = windows["fit"].decode_batch([Request(audio, full_window=True)], defer_redo=True)[0]
    full = windows["full"].decode_batch([Request(audio)])[0]
    assert forced.window_frames == 3000 and not forced.needs_full_window
    assert forced.text == full.text
