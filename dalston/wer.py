"""Word error rate and the word normalisation used to compare transcripts.

Pure functions, shared by the tests, the benchmark and the partial-text stabiliser, so that "the same word"
means the same thing everywhere: case and punctuation do not count, apostrophes inside words do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NON_WORD = re.compile(r"[^\w']+")
# Whisper writes honorifics abbreviated, read-speech references spell them out; nothing else is mapped.
_SPELLED_OUT = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def word_key(word: str) -> str:
    """The comparison key of one word: lower case, punctuation removed (inner apostrophes kept)."""
    return _NON_WORD.sub("", word.lower()).strip("'")


def normalize_words(text: str) -> list[str]:
    """Split text into comparison keys, dropping tokens that are punctuation only."""
    keys = (word_key(token) for token in _NON_WORD.sub(" ", text.replace("-", " ")).split())
    return [_SPELLED_OUT.get(key, key) for key in keys if key]


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            cost = 0 if ref_word == hyp_word else 1
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(S + D + I) / N over normalised words; an empty reference gives 0.0 only for an empty hypothesis."""
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


def corpus_word_error_rate(pairs: Sequence[tuple[str, str]]) -> float:
    """WER over many (reference, hypothesis) pairs: total errors over total reference words."""
    errors = 0
    words = 0
    for reference, hypothesis in pairs:
        ref = normalize_words(reference)
        errors += edit_distance(ref, normalize_words(hypothesis))
        words += len(ref)
    return errors / words if words else 0.0
