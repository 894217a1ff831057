"""Keyterms and prompt steer tiny.en (Whisper's initial prompt): measured on flite sentences with rare names.

Each sentence is one tiny.en mishears without help (checked in the test, so a model that learns the name makes
the test say so instead of passing vacuously); with the name as a keyterm the session spells it right. And the
terms are not made up: sentences that do not say them, with the same keyterms, never contain them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from speech_fixtures import check_event_order, errors, fixed_chunks, librivox_clips, start_session
from speech_synthesis import joined, needs_flite, synthesise

from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.protocol import Configure, FinalTranscribed, SessionConfigured, StreamParams
from dalston.wer import corpus_word_error_rate, normalize_words

pytestmark = [pytest.mark.slow, needs_flite]

RARE = {
    "Kowalczyk": "The meeting with Kowalczyk went well.",
    "Aoife": "I spoke with Aoife this morning about the budget.",
    "Przemysl": "The shipment from Przemysl arrived late on Tuesday.",
}
KEYTERMS = tuple(RARE)
PLAIN = (
    "The meeting with the new client went well.",
    "I spoke with my sister this morning about the budget.",
    "The shipment from the warehouse arrived late on Tuesday.",
)


async def transcript(factory: Callable[[], WhisperDecoder], text: str, **params: object) -> str:
    clip = joined(0.3, synthesise(text), 1.0)
    run = await start_session(factory, StreamParams(interim_results=False, **params))  # type: ignore[arg-type]
    await run.push(fixed_chunks(clip.pcm.tobytes(), 3200))
    await run.finish()
    await run.close()
    check_event_order(run.events)
    assert errors(run.events) == []
    return run.end.transcript


def says(transcript_text: str, term: str) -> bool:
    return term.lower() in normalize_words(transcript_text)


@pytest.mark.parametrize("term", KEYTERMS)
async def test_a_rare_name_tiny_en_mishears_is_spelt_right_with_it_as_a_keyterm(
    tiny_factory: Callable[[], WhisperDecoder], term: str,
) -> None:
    without = await transcript(tiny_factory, RARE[term])
    assert not says(without, term), f"tiny.en now knows {term!r} unaided: pick a rarer name ({without})"
    with_term = await transcript(tiny_factory, RARE[term], keyterms=(term,))
    assert says(with_term, term), with_term
    print(f"keyterm {term}: without {without!r} -> with {with_term!r}")


async def test_keyterms_do_not_put_a_name_into_speech_that_does_not_say_it(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    for text in PLAIN:
        heard = await transcript(tiny_factory, text, keyterms=KEYTERMS)
        assert not any(says(heard, term) for term in KEYTERMS), heard


async def test_keyterms_leave_the_word_error_of_ordinary_speech_as_it_was(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    pairs: dict[bool, list[tuple[str, str]]] = {False: [], True: []}
    for seed, clip in enumerate(librivox_clips()):
        for steered in (False, True):
            run = await start_session(tiny_factory, StreamParams(
                interim_results=False, keyterms=KEYTERMS if steered else (), prompt="A novel." if steered else ""))
            await run.push(fixed_chunks(clip.pcm.tobytes(), random.Random(seed).randint(800, 8000)))
            await run.finish()
            await run.close()
            pairs[steered].append((clip.text, run.end.transcript))
            assert not any(says(run.end.transcript, term) for term in KEYTERMS)
    assert corpus_word_error_rate(pairs[True]) <= corpus_word_error_rate(pairs[False]) + 0.02


async def test_keyterms_given_by_configure_steer_what_is_said_afterwards(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    clip = joined(0.3, synthesise(RARE["Kowalczyk"]), 1.0)
    run = await start_session(tiny_factory, StreamParams(interim_results=False))
    await run.session.tell(Configure(keyterms=("Kowalczyk",)))
    await run.wait_for(SessionConfigured)
    await run.push(fixed_chunks(clip.pcm.tobytes(), 3200))
    await run.finish()
    await run.close()
    assert says(" ".join(final.text for final in run.of(FinalTranscribed)), "Kowalczyk")
