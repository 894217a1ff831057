"""The encoder window policy and the output guards, as pure functions (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.speech.encoder_window import (
    FRAMES_PER_S,
    FULL_WINDOW_FRAMES,
    WindowPolicy,
    batch_window_frames,
    fit_features,
    window_frames,
)
from dalston.actors.speech.output_guard import (
    DegenerateLimits,
    TokenSegment,
    cut_after_end,
    degenerate_reason,
    parse_segments,
    repeated_ngram,
    repeated_pattern,
)

TS, EOT = 1000, 900  # a toy vocabulary: text tokens < 900, specials 900..999, timestamps from 1000
LIMITS = DegenerateLimits()

POLICIES = st.builds(WindowPolicy, mode=st.sampled_from(["fit", "full"]), margin_s=st.floats(0.0, 3.0),
                     buckets_s=st.lists(st.floats(0.5, 40.0), min_size=1, max_size=6).map(tuple))


# ---------------------------------------------------------------- window choice


@given(st.integers(0, 5000), POLICIES)
def test_the_window_holds_the_audio_and_margin_or_is_the_full_window(content: int, policy: WindowPolicy) -> None:
    frames = window_frames(content, policy)
    assert frames <= FULL_WINDOW_FRAMES and frames % 2 == 0
    if policy.mode == "full":
        assert frames == FULL_WINDOW_FRAMES
    else:
        assert frames >= min(content + policy.margin_s * FRAMES_PER_S, FULL_WINDOW_FRAMES) - 1e-9
        buckets = {min(round(b * FRAMES_PER_S) + round(b * FRAMES_PER_S) % 2, FULL_WINDOW_FRAMES)
                   for b in policy.buckets_s}
        assert frames in buckets | {FULL_WINDOW_FRAMES}


@given(st.integers(0, 4000), st.integers(0, 4000), POLICIES)
def test_more_audio_never_gets_a_shorter_window(a: int, b: int, policy: WindowPolicy) -> None:
    low, high = sorted((a, b))
    assert window_frames(low, policy) <= window_frames(high, policy)


@given(st.lists(st.integers(0, 4000), min_size=1, max_size=8), POLICIES)
def test_a_batch_window_holds_every_member(contents: list[int], policy: WindowPolicy) -> None:
    frames = batch_window_frames(contents, policy)
    assert all(window_frames(c, policy) <= frames for c in contents)
    assert frames in {window_frames(c, policy) for c in contents}


def test_a_three_second_utterance_gets_the_five_second_bucket_by_default() -> None:
    assert window_frames(300, WindowPolicy("fit")) == 500
    assert window_frames(450, WindowPolicy("fit")) == 1000  # 4.5 s + 1 s margin no longer fits in 5 s
    assert window_frames(300, WindowPolicy("full")) == 3000
    with pytest.raises(ValueError):
        WindowPolicy("half")  # type: ignore[arg-type]


@given(st.integers(1, 400), st.integers(1, 400))
def test_fitted_features_keep_the_audio_frames_and_pad_with_zeros(n: int, frames: int) -> None:
    features = np.arange(3 * n, dtype=np.float32).reshape(3, n) + 1.0
    fitted = fit_features(features, frames)
    kept = min(n, frames)
    assert fitted.shape == (3, frames)
    assert np.array_equal(fitted[:, :kept], features[:, :kept])
    assert not fitted[:, kept:].any()


# ---------------------------------------------------------------- reading timestamp tokens

TEXT_TOKEN = st.integers(0, EOT - 1)
SEGMENTS = st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 100), st.lists(TEXT_TOKEN, min_size=1,
                                                                                    max_size=6)), max_size=5)


def tokens_of(segments: list[tuple[int, int, list[int]]], terminated: bool = True) -> list[int]:
    tokens: list[int] = []
    at = 0
    for gap, length, text in segments:
        start = at + gap // 10
        tokens += [TS + start, *text, TS + start + length]
        at = start + length
    return tokens if terminated or not tokens else tokens[:-1]


@given(SEGMENTS, st.booleans())
def test_parsing_keeps_every_text_token_in_order_and_times_ordered(segments, terminated: bool) -> None:
    tokens = tokens_of(segments, terminated)
    parsed = parse_segments(tokens, TS, EOT)
    assert [t for s in parsed for t in s.tokens] == [t for t in tokens if t < EOT]
    assert len(parsed) == len(segments)
    for segment in parsed:
        assert segment.end_s is None or segment.start_s <= segment.end_s
    assert all(s.terminated for s in parsed[:-1])
    assert not parsed or parsed[-1].terminated == terminated


def test_special_tokens_are_ignored_and_text_without_an_opening_timestamp_starts_at_zero() -> None:
    parsed = parse_segments([5, 6, 950, TS + 50, TS + 50, 7, TS + 80], TS, EOT)
    assert parsed == [TokenSegment(0.0, 1.0, (5, 6)), TokenSegment(1.0, 1.6, (7,))]


@given(st.lists(st.tuples(st.floats(0, 30), st.booleans()), max_size=8), st.floats(0, 30))
def test_text_that_starts_after_the_audio_end_is_dropped_and_nothing_else(starts, end_s: float) -> None:
    segments = [TokenSegment(start, start + 1 if closed else None, (1,)) for start, closed in starts]
    kept = cut_after_end(segments, end_s)
    assert kept == [s for s in segments if s.start_s < end_s]
    assert all(s.start_s < end_s for s in kept)


# ---------------------------------------------------------------- degenerate output


def closed(*text: int, start: int = 0) -> list[int]:
    return [TS + start, *text, TS + start + 2 * len(text) + 10]


SENTENCE = "Remember to water the plants every other morning."


def test_a_sound_sentence_is_not_degenerate() -> None:
    segments = parse_segments(closed(*range(10)), TS, EOT)
    assert degenerate_reason(segments, SENTENCE, 3.0, LIMITS) is None


@given(st.lists(TEXT_TOKEN, min_size=1, max_size=6), st.sampled_from(["some words", "and ask her. S", "Open"]))
def test_an_unterminated_segment_that_breaks_off_mid_sentence_is_degenerate(text: list[int], words: str) -> None:
    segments = parse_segments([TS, *text], TS, EOT)
    assert degenerate_reason(segments, words, 2.0, LIMITS) == "unterminated"


@given(st.lists(TEXT_TOKEN, min_size=1, max_size=6, unique=True), st.sampled_from(["Yes.", "Is it?", "Go now!"]))
def test_an_open_segment_that_ends_a_sentence_is_a_skipped_timestamp_not_a_break(text: list[int],
                                                                                 words: str) -> None:
    segments = parse_segments([TS, *text], TS, EOT)
    assert degenerate_reason(segments, words, 1.0, LIMITS) is None


@given(st.lists(TEXT_TOKEN, max_size=8), st.lists(TEXT_TOKEN, min_size=1, max_size=4), st.integers(4, 8),
       st.lists(TEXT_TOKEN, max_size=8))
def test_a_token_pattern_looping_four_times_or_more_is_degenerate(before, pattern, repeats: int, after) -> None:
    tokens = before + pattern * repeats + after
    assert repeated_pattern(tokens, 4, 3)
    segments = parse_segments(closed(*tokens), TS, EOT)
    assert degenerate_reason(segments, "old sposed young man", 3.0, LIMITS) is not None


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=30, unique=True))
def test_tokens_that_never_repeat_have_no_loop(tokens: list[int]) -> None:
    assert not repeated_pattern(tokens, 4, 3)


def test_the_sentence_said_twice_is_degenerate() -> None:
    text = f"{SENTENCE} {SENTENCE[:-1]}"
    segments = parse_segments(closed(*range(20)), TS, EOT)
    assert degenerate_reason(segments, text, 6.0, LIMITS) == "repeated_sentence"
    assert repeated_ngram(text.split(), 6)
    truncated = f"{SENTENCE} Remember to water the plants every"  # the second reading cut short
    assert degenerate_reason(segments, truncated, 6.0, LIMITS) == "repeated_sentence"


@given(st.lists(st.sampled_from(["no", "yes", "we", "go"]), max_size=3), st.integers(1, 10))
def test_short_natural_repeats_are_not_taken_for_a_reread_sentence_even_anaphora(words: list[str], n: int) -> None:
    text = " ".join(words * 2)  # "no yes, no yes": fewer than six words repeated
    segments = parse_segments(closed(*range(n)), TS, EOT)
    assert degenerate_reason(segments, text, 3.0, LIMITS) in (None, "words_per_s")
    dickens = "It was the best of times, it was the worst of times, it was the age of wisdom."
    assert degenerate_reason(segments, dickens, 4.5, LIMITS) is None


def test_too_many_or_too_few_words_for_the_time_is_degenerate() -> None:
    segments = parse_segments(closed(*range(30)), TS, EOT)
    many = " ".join(f"w{i}" for i in range(30))
    assert degenerate_reason(segments, many, 2.0, LIMITS) == "words_per_s"
    assert degenerate_reason(segments, "two words", 10.0, LIMITS) == "words_per_s"
    assert degenerate_reason(segments, "two words", 2.0, LIMITS) is None


def test_a_final_that_contradicts_the_stable_partial_is_degenerate() -> None:
    segments = parse_segments(closed(*range(10)), TS, EOT)
    stable = "remember to water the"
    assert degenerate_reason(segments, SENTENCE, 3.0, LIMITS, stable_prefix=stable) is None
    assert degenerate_reason(segments, "The cat sat down on the mat today.", 3.0, LIMITS,
                             stable_prefix=stable) == "disagrees_with_partial"
    assert degenerate_reason(segments, "The cat sat.", 3.0, LIMITS, stable_prefix="remember") is None


def test_text_that_compresses_too_well_is_degenerate() -> None:
    text = "la " * 40
    segments = parse_segments(closed(*range(5)), TS, EOT)
    assert degenerate_reason(segments, text, 30.0, LIMITS) in ("repeated_sentence", "compression_ratio")
