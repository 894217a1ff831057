"""The session actor's error paths and limits (bad frames, audio after `end`, idle and length limits, a lost
or failing model), and its independence from how the client cuts its audio. The VAD is the real Silero model
on real speech; the speech model is a fake at the decoder interface (`TranscriberActor` takes any loader), so
these run in well under a second each.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from speech_fixtures import (
    check_event_order,
    check_finals,
    errors,
    fixed_chunks,
    librivox_clips,
    random_chunks,
    sample_clip,
    start_session,
)

from dalston.actors.runtime import NORMAL, ActorDead, ActorRef, spawn
from dalston.actors.speech.decoder import DecodedSegment, DecodeResult, Word
from dalston.actors.speech.factory import new_segmenter
from dalston.actors.speech.protocol import (
    End,
    ErrorOccurred,
    FinalTranscribed,
    PartialTranscribed,
    ServerEvent,
    SessionEnded,
    SpeechEnded,
    SpeechStarted,
    StreamParams,
)
from dalston.actors.speech.session import PushAudio, SessionActor
from dalston.actors.speech.transcriber import TranscriberActor
from dalston.config import SessionConfig, VadConfig
from dalston.supervisor.spec import worker_spec
from dalston.supervisor.supervisor import start_supervisor

SPEECH = librivox_clips()[4]  # about 3.3 s, one sentence


class FakeDecoder:
    """Answers every decode with the same words spread over the audio; finals wait for `gate`."""

    def __init__(self, text: str = "some words were said", *, fail_finals: bool = False) -> None:
        self.text = text
        self.fail_finals = fail_finals
        self.gate = threading.Event()
        self.gate.set()
        self.finals_started = threading.Event()

    def decode(self, audio: np.ndarray, *, final: bool, word_timestamps: bool, language: str | None,
               offset_s: float, beam_size: int | None = None) -> DecodeResult:
        if final:
            self.finals_started.set()
            self.gate.wait(5)
            if self.fail_finals:
                raise RuntimeError("the model ran out of memory")
        duration_s = audio.size / 16000
        tokens = self.text.split()
        step_s = duration_s / len(tokens)
        words = tuple(Word(w, offset_s + i * step_s, offset_s + (i + 1) * step_s, 0.9)
                      for i, w in enumerate(tokens)) if word_timestamps else None
        segment = DecodedSegment(offset_s, offset_s + duration_s, self.text, -0.2, 0.01, words)
        return DecodeResult(self.text, (segment,), language or "en", duration_s, 0.0)


async def test_an_oversize_frame_is_invalid_audio_and_ends_the_session() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(max_frame_bytes=4096))
    await run.push([SPEECH.pcm[:2048].tobytes()])  # exactly at the bound: accepted
    await run.push([SPEECH.pcm[:2049].tobytes()])
    reason = await run.session.wait_stopped()
    await run.close()
    check_event_order(run.events)
    assert errors(run.events) == ["invalid_audio"]
    assert isinstance(run.events[-1], ErrorOccurred) and run.of(SessionEnded) == []
    assert not reason.abnormal and reason.detail == "invalid_audio"  # the client's mistake is no crash
    assert run.session.statistics().extra["audio_s"] == pytest.approx(2048 / 16000)
    with pytest.raises(ActorDead):
        await run.session.tell(PushAudio(b"\0\0"))


async def test_audio_after_end_is_reported_and_the_session_still_ends_with_its_speech() -> None:
    decoder = FakeDecoder()
    decoder.gate.clear()  # hold the final so the session is still ending when more audio comes
    run = await start_session(lambda: decoder)
    await run.push(fixed_chunks(SPEECH.pcm.tobytes(), 3200))
    await run.session.tell(End())
    await run.push([SPEECH.pcm[:1600].tobytes()])
    await run.wait_for(ErrorOccurred)
    assert run.session.alive
    decoder.gate.set()
    await run.stopped()
    await run.close()
    check_event_order(run.events)
    check_finals(run.events)
    assert errors(run.events) == ["invalid_message"]
    assert run.end.transcript == decoder.text
    assert run.end.total_duration == pytest.approx(SPEECH.duration_s, abs=0.01)  # the late audio was not counted
    assert await run.session.wait_stopped() == NORMAL


async def test_an_idle_session_times_out_and_ends_with_what_it_heard() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(idle_timeout_s=0.3, tick_s=0.05))
    await run.push(fixed_chunks(SPEECH.pcm[: len(SPEECH.pcm) // 2].tobytes(), 3200))  # stops mid-sentence
    await run.stopped(timeout_s=5)
    await run.close()
    check_event_order(run.events)
    check_finals(run.events)
    assert errors(run.events) == ["session_timeout"]
    kinds = [event.type for event in run.events]
    # The client hears why at once; the speech it had buffered is finalised after that, then the session ends.
    assert kinds[-4:] == ["error", "vad.speech_end", "transcript.final", "session.end"]
    assert run.end.transcript == "some words were said"


async def test_a_session_that_never_sends_audio_times_out_too() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(idle_timeout_s=0.3, tick_s=0.05))
    await run.stopped(timeout_s=5)
    await run.close()
    assert [e.type for e in run.events] == ["session.begin", "error", "session.end"]
    assert errors(run.events) == ["session_timeout"] and run.end.transcript == ""


async def test_a_session_past_its_maximum_length_times_out_and_ends() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(max_duration_s=1.0, tick_s=0.05))
    try:
        for chunk in fixed_chunks(SPEECH.pcm.tobytes(), 1600):  # 50 ms of audio each, in real time
            await run.push([chunk], pause_s=0.05)
    except ActorDead:
        pass  # it ended while we were still sending
    await run.stopped(timeout_s=5)
    await run.close()
    check_event_order(run.events)
    check_finals(run.events)
    codes = errors(run.events)
    # Audio that kept coming while the session finished is refused, and only after the client heard why.
    assert codes[0] == "session_timeout" and set(codes[1:]) <= {"invalid_message"}
    assert run.events[-1].type == "session.end" and run.end.transcript == "some words were said"
    assert 0.5 <= run.end.total_duration < SPEECH.duration_s  # a second of wall time, of real-time audio


async def test_a_trickle_of_tiny_frames_does_not_keep_an_idle_session_alive() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(idle_timeout_s=0.3, tick_s=0.05))
    refused_while_trickling = False
    try:
        for _ in range(40):  # 2 bytes (one sample) every 50 ms: 2 s of holding on, no audio to speak of
            await run.push([b"\x00\x00"], pause_s=0.05)
    except ActorDead:
        refused_while_trickling = True
    await run.stopped(timeout_s=5)
    await run.close()
    codes = errors(run.events)
    assert codes[:1] == ["session_timeout"]
    assert refused_while_trickling or "invalid_message" in codes  # it timed out while the trickle went on


async def test_the_maximum_length_is_wall_time_not_audio_time() -> None:
    run = await start_session(FakeDecoder, limits=SessionConfig(max_duration_s=0.5, tick_s=0.05))
    try:
        for _ in range(40):  # 20 ms of audio every 50 ms: far less audio than wall time
            await run.push([bytes(640)], pause_s=0.05)
    except ActorDead:
        pass
    await run.stopped(timeout_s=5)
    await run.close()
    assert errors(run.events)[:1] == ["session_timeout"]
    assert run.end.total_duration < 0.5  # it ended on the clock, with less than 0.5 s of audio


async def test_a_transcriber_that_stops_mid_session_is_an_internal_error() -> None:
    run = await start_session(FakeDecoder)
    await run.push(fixed_chunks(SPEECH.pcm[: len(SPEECH.pcm) // 2].tobytes(), 3200))
    await run.wait_for(SpeechStarted)
    await run.transcriber.stop()
    reason = await run.session.wait_stopped()
    check_event_order(run.events)
    assert errors(run.events) == ["internal_error"] and run.of(SessionEnded) == []
    assert reason.abnormal and reason.detail == "internal_error"


async def test_a_failed_final_decode_is_an_internal_error_after_the_finals_before_it() -> None:
    decoder = FakeDecoder()
    run = await start_session(lambda: decoder, StreamParams(word_timestamps=False))
    await run.push(fixed_chunks(SPEECH.pcm.tobytes(), 3200))
    await run.push([np.zeros(16000, dtype=np.int16).tobytes()])  # a second of silence ends the sentence
    await run.wait_for(FinalTranscribed)
    decoder.fail_finals = True
    await run.push(fixed_chunks(SPEECH.pcm.tobytes(), 3200))
    await run.session.tell(End())
    reason = await run.session.wait_stopped()
    await run.close()
    check_event_order(run.events)
    check_finals(run.events, with_words=False)
    assert len(run.of(FinalTranscribed)) == 1 and run.of(FinalTranscribed)[0].words is None
    assert errors(run.events) == ["internal_error"] and reason.abnormal
    assert "out of memory" in run.events[-1].message


async def test_the_events_do_not_depend_on_how_the_client_cuts_its_audio() -> None:
    def timeline(events: list) -> list[tuple[str, float, float]]:
        return [(e.type, e.timestamp, 0.0) if isinstance(e, SpeechStarted | SpeechEnded) else (e.type, e.start, e.end)
                for e in events if isinstance(e, SpeechStarted | SpeechEnded | FinalTranscribed)]

    timelines = []
    for seed in range(3):
        run = await start_session(FakeDecoder, StreamParams(interim_results=False))
        await run.push(random_chunks(sample_clip().pcm.tobytes(), random.Random(seed), max_bytes=20000))
        await run.finish()
        await run.close()
        check_event_order(run.events)
        check_finals(run.events, with_words=False)
        timelines.append(timeline(run.events))
    assert len([kind for kind, *_ in timelines[0] if kind == "transcript.final"]) == 5  # five sentences
    assert timelines[1] == timelines[0] and timelines[2] == timelines[0]


async def test_a_session_hands_its_undecoded_final_to_the_model_its_supervisor_restarted() -> None:
    decoder = FakeDecoder()
    decoder.gate.clear()  # the first decode of the final hangs until the model actor is gone
    tree = await start_supervisor([worker_spec("transcriber", lambda: TranscriberActor("fast", lambda: decoder))])

    async def find_transcriber() -> ActorRef | None:
        children = await tree.which_children()
        return children[0].ref

    transcriber = await find_transcriber()
    assert transcriber is not None
    events: list[ServerEvent] = []

    async def sink(event: ServerEvent) -> None:
        events.append(event)

    session = await spawn(SessionActor("s1", StreamParams(), transcriber=transcriber, sink=sink,
                                       segmenter=new_segmenter(VadConfig()), model_language="en",
                                       find_transcriber=find_transcriber))
    for chunk in fixed_chunks(SPEECH.pcm.tobytes(), 3200):
        await session.tell(PushAudio(chunk))
    await session.tell(End())
    assert await asyncio.to_thread(decoder.finals_started.wait, 5)
    await transcriber.kill()  # crashes: the supervisor starts a fresh model actor
    decoder.gate.set()
    await asyncio.wait_for(session.wait_stopped(), 20)
    await tree.stop()
    assert errors(events) == []
    assert [e.text for e in events if isinstance(e, FinalTranscribed)] == ["some words were said"]
    assert isinstance(events[-1], SessionEnded) and events[-1].transcript == "some words were said"


class PrefixRecorder(FakeDecoder):
    """Decodes through `decode_batch`, as the real model does, and records what each final request carried."""

    max_batch = 1

    def __init__(self) -> None:
        super().__init__()
        self.final_prefixes: list[str] = []

    def batch_key(self, samples: int) -> int:
        return samples

    def decode_batch(self, requests: Sequence[Any], *, beam_size: int | None = None,
                     defer_redo: bool = False) -> list[Any]:
        self.final_prefixes += [r.stable_prefix for r in requests if r.final]
        return [self.decode(r.audio, final=r.final, word_timestamps=False, language=None, offset_s=r.offset_s)
                for r in requests]


async def test_a_final_request_carries_its_utterances_stable_partial_for_the_models_guard() -> None:
    decoder = PrefixRecorder()
    run = await start_session(lambda: decoder)
    await run.push(fixed_chunks(SPEECH.pcm.tobytes(), 3200), pause_s=0.1)  # in real time: partials come
    await run.finish()
    await run.close()
    assert run.of(PartialTranscribed), "no partial: nothing could become stable"
    assert decoder.final_prefixes and decoder.final_prefixes[-1] == "some words were said"
