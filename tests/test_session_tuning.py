"""Sessions the caller tunes, on tiny.en and real (flite) speech: endpointing per session, `configure` mid-stream,
and `keepalive` against the idle timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from speech_fixtures import check_event_order, errors, fixed_chunks, start_session
from speech_synthesis import joined, needs_flite, silence, synthesise

from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.protocol import (
    Configure,
    ErrorCode,
    ErrorOccurred,
    FinalTranscribed,
    Keepalive,
    SessionBegan,
    SessionConfigured,
    StreamParams,
)
from dalston.config import SessionConfig
from dalston.wer import normalize_words, word_error_rate

pytestmark = [pytest.mark.slow, needs_flite]

FIRST = "The train to the city leaves at seven in the evening."
SECOND = "Please bring your ticket and a warm coat."
PAUSE_S = 0.8


def two_sentences():
    return joined(0.5, synthesise(FIRST), PAUSE_S, synthesise(SECOND), 1.5)


async def finals_with(factory: Callable[[], WhisperDecoder], **params: object) -> list[FinalTranscribed]:
    clip = two_sentences()
    run = await start_session(factory, StreamParams(interim_results=False, **params))  # type: ignore[arg-type]
    await run.push(fixed_chunks(clip.pcm.tobytes(), 8000))
    await run.finish()
    await run.close()
    check_event_order(run.events)
    assert errors(run.events) == []
    assert word_error_rate(clip.text, run.end.transcript) <= 0.2, run.end.transcript
    return run.of(FinalTranscribed)


async def test_a_long_min_silence_keeps_two_sentences_with_a_short_pause_in_one_final(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    finals = await finals_with(tiny_factory, min_silence_ms=1500)
    assert len(finals) == 1
    words = normalize_words(finals[0].text)
    assert "evening" in words and "coat" in words


async def test_a_short_min_silence_splits_the_same_two_sentences_into_two_finals(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    finals = await finals_with(tiny_factory, min_silence_ms=300)
    assert len(finals) == 2
    assert "evening" in normalize_words(finals[0].text) and "coat" in normalize_words(finals[1].text)
    assert finals[0].end <= finals[1].start


async def test_configure_changes_endpointing_mid_stream_and_is_answered_with_the_new_settings(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    clip = two_sentences()
    run = await start_session(tiny_factory, StreamParams(interim_results=False, min_silence_ms=300))
    begin = run.of(SessionBegan)[0].config
    assert begin["min_silence_ms"] == 300 and begin["keyterms"] == []
    await run.session.tell(Configure(min_silence_ms=1500, keyterms=("Dalston",)))
    await run.wait_for(SessionConfigured)
    configured = run.of(SessionConfigured)[0].config
    assert configured["min_silence_ms"] == 1500 and configured["keyterms"] == ["Dalston"]
    await run.push(fixed_chunks(clip.pcm.tobytes(), 8000))
    await run.finish()
    await run.close()
    assert len(run.of(FinalTranscribed)) == 1  # the pause is now shorter than the endpointing silence


async def test_configure_out_of_the_configured_bounds_is_reported_and_changes_nothing(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    run = await start_session(tiny_factory, StreamParams(interim_results=False, min_silence_ms=300))
    await run.session.tell(Configure(min_silence_ms=50))
    await run.session.tell(Configure(keyterms=tuple(f"term{i}" for i in range(51))))
    await run.wait_for(ErrorOccurred, 2)
    problems = run.of(ErrorOccurred)
    assert [p.code for p in problems] == [ErrorCode.INVALID_MESSAGE] * 2
    assert "min_silence_ms" in problems[0].message and "keyterms" in problems[1].message
    await run.push(fixed_chunks(two_sentences().pcm.tobytes(), 8000))  # the session goes on, with its old settings
    await run.finish()
    await run.close()
    assert len(run.of(FinalTranscribed)) == 2
    assert not run.of(SessionConfigured)


async def test_endpointing_that_cannot_work_together_is_refused_at_start_naming_the_parameter(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    run = await start_session(tiny_factory, StreamParams(min_silence_ms=5000, max_segment_s=2.0))
    await run.stopped(10)
    await run.close()
    problems = run.of(ErrorOccurred)
    assert [p.code for p in problems] == [ErrorCode.INVALID_REQUEST]
    assert "max_segment_s" in problems[0].message


IDLE_S = 1.0  # stands in for the old 60 s default; the mechanism does not depend on the length


async def test_keepalives_hold_a_silent_session_open_past_the_idle_timeout_and_speech_is_then_transcribed(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    run = await start_session(tiny_factory, StreamParams(interim_results=False),
                              limits=SessionConfig(idle_timeout_s=IDLE_S, tick_s=0.05))
    deadline = time.monotonic() + 3 * IDLE_S
    while time.monotonic() < deadline:
        await run.session.tell(Keepalive())
        await asyncio.sleep(IDLE_S / 4)
    assert errors(run.events) == [] and run.session.alive
    speech = joined(synthesise(FIRST), 1.0)
    await run.push(fixed_chunks(speech.pcm.tobytes(), 8000))
    await run.finish()
    await run.close()
    assert errors(run.events) == []
    assert word_error_rate(FIRST, run.end.transcript) <= 0.2, run.end.transcript


async def test_without_keepalives_the_same_silent_session_times_out(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    run = await start_session(tiny_factory, StreamParams(interim_results=False),
                              limits=SessionConfig(idle_timeout_s=IDLE_S, tick_s=0.05))
    await run.push(fixed_chunks(silence(0.2).tobytes(), 8000))
    await run.stopped(3 * IDLE_S + 5)
    await run.close()
    assert errors(run.events) == ["session_timeout"]
    assert "keepalive" in run.of(ErrorOccurred)[0].message
