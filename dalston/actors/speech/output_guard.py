"""Reading Whisper's timestamped token output, and telling a degenerate decode from a sound one (pure).

A decode through a cut encoder window is cheap but, on some utterances, the model loops on a syllable, says
the sentence twice, or breaks off mid-sentence without closing its last segment. Those outputs share signs
that need no reference text: an open last segment that does not end a sentence, a token pattern repeated in
a row, a sentence (or six words) said twice, text that compresses too well, more words than anyone says in
that time, or a final that contradicts the utterance's own stable partial. `degenerate_reason` names the
first sign found; the decoder then decodes again with the full 30 s window.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from dalston.wer import edit_distance, normalize_words

TIME_PRECISION_S = 0.02  # one timestamp token step
SENTENCE_ENDS = (".", "?", "!", "\u3002", "\uff1f", "\uff01")


@dataclass(frozen=True)
class TokenSegment:
    """Text tokens between two timestamp tokens; times relative to the start of the encoder window."""

    start_s: float
    end_s: float | None  # None: the output stopped before the closing timestamp
    tokens: tuple[int, ...]

    @property
    def terminated(self) -> bool:
        return self.end_s is not None


@dataclass(frozen=True)
class DegenerateLimits:
    max_compression_ratio: float = 2.4
    max_words_per_s: float = 6.5
    min_words_per_s: float = 0.4  # far fewer words than speech has: the decode stopped early
    min_rate_duration_s: float = 4.0  # below it, the lower rate bound is not applied
    max_pattern_tokens: int = 4
    max_pattern_repeats: int = 3  # a pattern of up to max_pattern_tokens said more often than this in a row
    # A word n-gram this long said twice is the model re-reading the sentence. Shorter ones occur in real speech
    # ("it was the best of times, it was the worst of times" repeats five words).
    repeated_ngram_words: int = 6
    min_prefix_words: int = 3
    max_prefix_error: float = 0.5  # word error of the final's start against the stable partial


def parse_segments(tokens: Sequence[int], timestamp_begin: int, eot: int) -> list[TokenSegment]:
    """Split `<|t0|> text <|t1|><|t1|> text <|t2|>` into segments. Text before any timestamp starts at 0; text
    after the last timestamp is an unterminated segment; special tokens (>= eot, < timestamp_begin) are ignored."""
    segments: list[TokenSegment] = []
    start_s: float | None = None
    text: list[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            time_s = (token - timestamp_begin) * TIME_PRECISION_S
            if start_s is not None and text:
                segments.append(TokenSegment(start_s, max(time_s, start_s), tuple(text)))
                start_s, text = None, []
            else:  # an opening timestamp (a second one in a row replaces the first)
                start_s = time_s
        elif token < eot:
            if start_s is None:  # text with no opening timestamp continues from the last segment
                start_s = segments[-1].end_s if segments and segments[-1].end_s is not None else 0.0
            text.append(token)
    if text:
        segments.append(TokenSegment(start_s or 0.0, None, tuple(text)))
    return segments


def cut_after_end(segments: Sequence[TokenSegment], audio_end_s: float) -> list[TokenSegment]:
    """Drop segments that start at or after the end of the audio: the window's padding has no speech."""
    return [segment for segment in segments if segment.start_s < audio_end_s]


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_pattern(tokens: Sequence[int], max_len: int, max_repeats: int) -> bool:
    """Does a pattern of 1..max_len tokens occur more than `max_repeats` times in a row?"""
    needed = max_repeats + 1
    for length in range(1, max_len + 1):
        for start in range(len(tokens) - length * needed + 1):
            pattern = list(tokens[start:start + length])
            if all(list(tokens[start + k * length:start + (k + 1) * length]) == pattern for k in range(1, needed)):
                return True
    return False


def repeated_ngram(words: Sequence[str], n: int) -> bool:
    """Does some n-word sequence occur twice without overlapping?"""
    first_seen: dict[tuple[str, ...], int] = {}
    for start in range(len(words) - n + 1):
        gram = tuple(words[start:start + n])
        seen = first_seen.setdefault(gram, start)
        if start - seen >= n:
            return True
    return False


def repeated_sentence(text: str, min_words: int = 3) -> bool:
    sentences = [tuple(normalize_words(s)) for s in re.split(r"[.!?]+", text)]
    long_enough = [s for s in sentences if len(s) >= min_words]
    return len(set(long_enough)) < len(long_enough)


def disagrees_with_prefix(text: str, prefix: str, limits: DegenerateLimits) -> bool:
    """The final should begin with what the partials had settled on; a final that does not is suspect."""
    expected = normalize_words(prefix)
    if len(expected) < limits.min_prefix_words:
        return False
    got = normalize_words(text)[:len(expected)]
    return edit_distance(expected, got) / len(expected) > limits.max_prefix_error


def degenerate_reason(segments: Sequence[TokenSegment], text: str, duration_s: float, limits: DegenerateLimits,
                      *, stable_prefix: str = "") -> str | None:
    """The first sign that this output is not a faithful transcript, or None."""
    tokens = [token for segment in segments for token in segment.tokens]
    words = normalize_words(text)
    checks = (
        ("unterminated", _cut_short(segments, text)),
        ("repeated_tokens", repeated_pattern(tokens, limits.max_pattern_tokens, limits.max_pattern_repeats)),
        ("repeated_sentence", repeated_sentence(text) or repeated_ngram(words, limits.repeated_ngram_words)),
        ("compression_ratio", compression_ratio(text) > limits.max_compression_ratio),
        ("words_per_s", _rate_out_of_range(len(words), duration_s, limits)),
        ("disagrees_with_partial", bool(stable_prefix) and disagrees_with_prefix(text, stable_prefix, limits)),
    )
    return next((reason for reason, failed in checks if failed), None)


def _cut_short(segments: Sequence[TokenSegment], text: str) -> bool:
    """An open segment is a sign the output broke off ("… and ask her to bring these things. S"); one that ends
    a sentence is just a closing timestamp the model skipped before the end of text ("Yes.")."""
    # Only the last segment can be open (parse_segments closes every other one).
    return bool(segments) and not segments[-1].terminated and not text.rstrip().endswith(SENTENCE_ENDS)


def _rate_out_of_range(words: int, duration_s: float, limits: DegenerateLimits) -> bool:
    if words == 0:
        return False
    if words / max(duration_s, 1.0) > limits.max_words_per_s:
        return True
    return duration_s >= limits.min_rate_duration_s and words / duration_s < limits.min_words_per_s
