"""The transcript assembler and the partial stabiliser: pure, so tested with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dalston.actors.speech.assembler import (
    FinalOutOfOrder,
    PartialStabilizer,
    TranscriptAssembler,
    common_prefix_length,
)
from dalston.wer import word_key

WORDS = st.sampled_from(["the", "The", "cat,", "cat", "sat", "on", "mat.", "a", "dog"])
HYPOTHESIS = st.lists(WORDS, max_size=8).map(" ".join)


def keys(text: str) -> list[str]:
    return [word_key(word) for word in text.split()]


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 5), st.lists(WORDS, max_size=4)), max_size=12))
def test_the_transcript_is_the_finals_joined_in_time_order(raw: list[tuple[float, float, list[str]]]) -> None:
    assembler = TranscriptAssembler()
    for start_s, length_s, words in sorted(raw):
        assembler.add_final(" ".join(words), start_s, start_s + length_s)
    texts = [" ".join(words) for _, _, words in sorted(raw)]
    assert assembler.transcript == " ".join(text for text in texts if text)
    starts = [final.start_s for final in assembler.finals]
    assert starts == sorted(starts)
    assert "  " not in assembler.transcript


def test_a_final_that_starts_before_the_last_one_is_refused() -> None:
    assembler = TranscriptAssembler()
    assembler.add_final("second", 5.0, 6.0)
    with pytest.raises(FinalOutOfOrder):
        assembler.add_final("first", 1.0, 2.0)
    assert assembler.transcript == "second"


def test_a_final_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(FinalOutOfOrder):
        TranscriptAssembler().add_final("backwards", 3.0, 2.0)


def test_finals_keep_their_words_and_language() -> None:
    assembler = TranscriptAssembler()
    final = assembler.add_final("  hello   world ", 0.0, 1.0, language="en")
    assert final.text == "hello world"
    assert assembler.finals == (final,)
    assert assembler.statistics()["words"] == 2


def test_common_prefix_length_counts_shared_leading_keys() -> None:
    assert common_prefix_length([["a", "b", "c"], ["a", "b", "d"]]) == 2
    assert common_prefix_length([["a"], []]) == 0
    assert common_prefix_length([]) == 0


def test_two_agreeing_decodes_make_their_shared_words_stable() -> None:
    stabilizer = PartialStabilizer(agreement=2)
    first = stabilizer.update("the cat sat")
    assert first.stable_text == ""
    assert first.text == "the cat sat"
    second = stabilizer.update("The cat, sat on")
    assert second.stable_text == "The cat, sat"  # compared without case or punctuation, shown as decoded
    assert second.unstable_text == "on"
    assert second.text == "The cat, sat on"
    third = stabilizer.update("the cat sat on the mat")
    assert third.stable_text == "The cat, sat on"  # committed words keep their first spelling


def test_a_contradicting_decode_leaves_the_stable_prefix_alone() -> None:
    stabilizer = PartialStabilizer(agreement=2)
    stabilizer.update("the cat sat")
    stabilizer.update("the cat sat")
    view = stabilizer.update("a dog")
    assert view.stable_text == "the cat sat"
    assert view.unstable_text == ""


def test_reset_forgets_the_stable_prefix() -> None:
    stabilizer = PartialStabilizer(agreement=2)
    stabilizer.update("the cat")
    stabilizer.update("the cat")
    stabilizer.reset()
    view = stabilizer.update("a dog")
    assert view.stable_text == ""
    assert view.text == "a dog"


@settings(max_examples=200)
@given(st.integers(1, 3), st.lists(HYPOTHESIS, min_size=1, max_size=10))
def test_the_stable_prefix_only_grows_and_agrees_with_the_decodes_it_came_from(
        agreement: int, hypotheses: list[str]) -> None:
    stabilizer = PartialStabilizer(agreement=agreement)
    previous: list[str] = []
    for index, text in enumerate(hypotheses):
        view = stabilizer.update(text)
        stable = view.stable_text.split()
        assert stable[:len(previous)] == previous
        if len(stable) > len(previous):
            for source in hypotheses[index - agreement + 1:index + 1]:
                assert keys(source)[:len(stable)] == keys(view.stable_text)
        assert view.text == " ".join(part for part in (view.stable_text, view.unstable_text) if part)
        previous = stable


@given(HYPOTHESIS)
def test_with_agreement_one_every_decode_is_stable_as_it_grows(text: str) -> None:
    stabilizer = PartialStabilizer(agreement=1)
    assert stabilizer.update(text).stable_text == " ".join(text.split())
