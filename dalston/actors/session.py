"""SessionActor: one live stream in, interim and final text out (DESIGN §5, §7).

It owns its PCM decoder, VAD segmenter, pending finals and assembler; the speech model is shared through a
TranscriberActor. Events go to an async `sink` (a WebSocket, a link, or a callback of an embedding service).
The session stops itself after `session.end`, or after an error that ends it; whoever runs it closes the
client's connection when it stops, with the close code of the last error (`last_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from dalston.actors.assembler import PartialStabilizer, TranscriptAssembler
from dalston.actors.audio import InvalidAudio, PcmDecoder
from dalston.actors.finals import PendingFinal, PendingFinals
from dalston.actors.protocol import (
    End,
    ErrorCode,
    ErrorOccurred,
    FinalTranscribed,
    Flush,
    PartialTranscribed,
    ServerEvent,
    SessionBegan,
    SessionEnded,
    SpeechEnded,
    SpeechStarted,
    StreamParams,
    WordTiming,
)
from dalston.actors.runtime import NORMAL, Actor, ActorDead, ActorRef, Down, ExitReason
from dalston.actors.silero import SegmenterEvent, SpeechSegmenter
from dalston.actors.transcriber import CancelDecode, CancelSession, Decoded, DecodeRequest, UtteranceEnded
from dalston.actors.vad import PauseStarted, SpeechResumed
from dalston.actors.vad import SpeechEnded as VadSpeechEnded
from dalston.actors.vad import SpeechStarted as VadSpeechStarted

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
EventSink = Callable[[ServerEvent], Awaitable[None]]
# Where a session finds its model actor again after the model's supervisor restarted it (None: not running).
TranscriberLookup = Callable[[], Awaitable[ActorRef | None]]


@dataclass(frozen=True, eq=False)
class PushAudio:
    """A binary frame of client PCM."""

    data: bytes


@dataclass(frozen=True)
class _Tick:
    """The session's clock: idle timeout and maximum length are checked on it."""


@dataclass(frozen=True)
class SessionLimits:
    max_frame_bytes: int = 131072
    idle_timeout_s: float = 60.0
    max_duration_s: float = 14400.0
    partial_interval_ms: int = 500
    tick_s: float = 0.5
    transcriber_restart_wait_s: float = 15.0  # how long a session waits for a restarted model


class SessionActor(Actor):
    mailbox_size = 64

    def __init__(
        self,
        session_id: str,
        params: StreamParams,
        *,
        transcriber: ActorRef,
        segmenter: SpeechSegmenter,
        sink: EventSink,
        limits: SessionLimits | None = None,
        model_language: str | None = None,
        find_transcriber: TranscriberLookup | None = None,
    ) -> None:
        self.session_id = session_id
        self.params = params
        self.limits = limits or SessionLimits()
        self._transcriber = transcriber
        self._find_transcriber = find_transcriber
        self._segmenter = segmenter
        self._sink = sink
        self._language = params.language if params.language != "auto" else model_language
        self._pcm = PcmDecoder(params.sample_rate, self.limits.max_frame_bytes)
        self._finals = PendingFinals()
        self._assembler = TranscriptAssembler()
        self._stabilizer = PartialStabilizer()
        self._utterance = 0  # id of the current (or last) utterance
        self._in_speech = False
        self._next_request = 0
        self._samples_at_last_partial = 0
        self._ending = False
        self._ended = False
        self._last_audio_at = time.monotonic()
        self.last_error: ErrorOccurred | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        # The runtime drops this monitor, reaps the ticker and runs the callback however the session ends
        # (a kill included), so there is no on_stop to write and nothing in it that could block.
        self._transcriber.monitor(self.ref)
        self.ref.monitor(self._cancel_queued_decodes)
        config = {**self.params.to_json(), "interim_results": self.params.interim_results}
        await self._emit(SessionBegan(self.session_id, config))
        self.start_task(self._tick_forever(), name=f"tick:{self.session_id}")

    def _cancel_queued_decodes(self, _ref: ActorRef, _reason: ExitReason) -> None:
        with contextlib.suppress(ActorDead):  # never waits: the model actor must not hold up a stopping session
            self._transcriber.tell_unbounded(CancelSession(self.session_id))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.tick_s)
            with contextlib.suppress(ActorDead):
                self.ref.send_system(_Tick())

    # -- messages -----------------------------------------------------------------------------------------

    async def receive(self, message: Any) -> None:
        match message:
            case PushAudio(data):
                await self._on_audio(data)
            case Decoded():
                await self._on_decoded(message)
            case Flush():
                await self._flush()
            case End():
                await self._begin_ending()
            case _Tick():
                await self._check_limits()
            case Down(ref) if ref is self._transcriber:
                await self._on_transcriber_down()
            case _:
                await super().receive(message)

    async def _on_transcriber_down(self) -> None:
        """The model actor stopped: wait for its supervisor's fresh one and hand it the undecoded finals."""
        replacement = await self._find_replacement()
        if replacement is None:
            await self._fail(ErrorCode.INTERNAL_ERROR, "the speech model stopped; the session cannot go on")
            return
        log.warning("session.transcriber_replaced", session_id=self.session_id, transcriber=replacement.name)
        self._transcriber = replacement
        replacement.monitor(self.ref)
        for final in self._finals.unanswered():
            await self._submit_final(final)

    async def _find_replacement(self) -> ActorRef | None:
        if self._find_transcriber is None:
            return None
        deadline = time.monotonic() + self.limits.transcriber_restart_wait_s
        while time.monotonic() < deadline:
            ref = await self._find_transcriber()
            if ref is not None and ref is not self._transcriber and ref.alive:
                return ref
            await asyncio.sleep(0.1)
        return None

    async def _on_audio(self, data: bytes) -> None:
        if self._ending:
            await self._emit(ErrorOccurred(ErrorCode.INVALID_MESSAGE,
                                           "the session is ending: audio after 'end' or a timeout is not transcribed"))
            return
        try:
            samples = self._pcm.decode(data)
        except InvalidAudio as error:
            await self._fail(ErrorCode.INVALID_AUDIO, str(error))
            return
        self._last_audio_at = time.monotonic()
        await self._handle_vad(self._segmenter.push(samples))
        await self._maybe_request_partial()

    async def _flush(self) -> None:
        await self._handle_vad(self._segmenter.flush())

    async def _begin_ending(self) -> None:
        if self._ending:
            return
        self._ending = True
        tail = self._pcm.finish()
        events = self._segmenter.push(tail) if tail.size else []
        await self._handle_vad(events + self._segmenter.flush())
        await self._finish_if_done()

    async def _check_limits(self) -> None:
        if self._ending:
            return
        audio_s = self._segmenter.samples_seen / SAMPLE_RATE
        idle_s = time.monotonic() - self._last_audio_at
        if audio_s >= self.limits.max_duration_s:
            await self._timeout(f"the session reached its maximum length of {self.limits.max_duration_s:g} s")
        elif idle_s >= self.limits.idle_timeout_s:
            await self._timeout(f"no audio for {self.limits.idle_timeout_s:g} s")

    async def _timeout(self, why: str) -> None:
        # Said at once, before the buffered speech is finalised: audio the client sends meanwhile is refused,
        # and the client must know why before it reads that refusal.
        self.last_error = ErrorOccurred(ErrorCode.SESSION_TIMEOUT, why)
        await self._emit(self.last_error)
        await self._begin_ending()

    async def _fail(self, code: ErrorCode, message: str) -> None:
        """An error that ends the session at once; whatever was already final stays delivered."""
        error = ErrorOccurred(code, message)
        self.last_error = error
        await self._emit(error)
        self._ended = True
        if code is ErrorCode.INTERNAL_ERROR:
            log.error("session.failed", session_id=self.session_id, code=str(code), message=message)
            self.stop_self(ExitReason("error", str(code)))
        else:
            # The client's mistake, not a crash: a clean exit, so no supervisor or runtime reports it as one.
            log.warning("session.ended_by_client_error", session_id=self.session_id, code=str(code),
                        message=message)
            self.stop_self(ExitReason("normal", str(code)))

    # -- voice activity -----------------------------------------------------------------------------------

    async def _handle_vad(self, events: list[SegmenterEvent]) -> None:
        for item in events:
            match item.event:
                case VadSpeechStarted(start):
                    self._utterance += 1
                    self._in_speech = True
                    self._stabilizer.reset()
                    self._samples_at_last_partial = start
                    await self._emit(SpeechStarted(round(start / SAMPLE_RATE, 3)))
                case PauseStarted(start, end):
                    # A queued partial of this utterance would only compete with its early final.
                    await self._tell_transcriber(UtteranceEnded(self.session_id, self._utterance))
                    await self._request_final(start, end, item, confirmed=False)
                case SpeechResumed():
                    withdrawn = self._finals.withdraw_tentative()
                    if withdrawn is not None:
                        await self._tell_transcriber(CancelDecode(self.session_id, withdrawn.request_id))
                case VadSpeechEnded(start, end):
                    await self._on_speech_ended(start, end, item)

    async def _on_speech_ended(self, start: int, end: int, item: SegmenterEvent) -> None:
        self._in_speech = False
        await self._tell_transcriber(UtteranceEnded(self.session_id, self._utterance))
        tentative = self._finals.tentative()
        if tentative is not None and (tentative.start_sample, tentative.end_sample) == (start, end):
            tentative.confirmed = True  # its decode started when the pause began
        else:
            if tentative is not None:
                self._finals.withdraw_tentative()
                await self._tell_transcriber(CancelDecode(self.session_id, tentative.request_id))
            await self._request_final(start, end, item, confirmed=True)
        await self._emit(SpeechEnded(round(end / SAMPLE_RATE, 3)))
        await self._publish_ready()

    async def _request_final(self, start: int, end: int, item: SegmenterEvent, *, confirmed: bool) -> None:
        assert item.audio is not None
        request_id = self._new_request_id()
        final = PendingFinal(self._utterance, request_id, start, end, confirmed, item.audio)
        self._finals.add(final)
        await self._submit_final(final)

    async def _submit_final(self, final: PendingFinal) -> None:
        await self._tell_transcriber(DecodeRequest(
            self.session_id, final.utterance_id, final.request_id, final.audio, final.start_sample / SAMPLE_RATE,
            True, self.ref, word_timestamps=self.params.word_timestamps, language=self._language,
        ))

    async def _maybe_request_partial(self) -> None:
        if not (self.params.interim_results and self._in_speech) or self._finals.tentative() is not None:
            return
        interval = self.limits.partial_interval_ms * SAMPLE_RATE // 1000
        if self._segmenter.samples_seen - self._samples_at_last_partial < interval:
            return
        utterance = self._segmenter.current_utterance()
        if utterance is None:
            return
        start, audio = utterance
        self._samples_at_last_partial = self._segmenter.samples_seen
        await self._tell_transcriber(DecodeRequest(
            self.session_id, self._utterance, self._new_request_id(), audio, start / SAMPLE_RATE, False,
            self.ref, language=self._language,
        ))

    # -- decodes ------------------------------------------------------------------------------------------

    async def _on_decoded(self, decoded: Decoded) -> None:
        if not decoded.final:
            await self._on_partial(decoded)
            return
        if not self._finals.answer(decoded.request_id, decoded.result, decoded.error):
            return  # a tentative final withdrawn when speech resumed
        await self._publish_ready()

    async def _on_partial(self, decoded: Decoded) -> None:
        if decoded.error or decoded.result is None or decoded.utterance_id != self._utterance:
            return
        if not self._in_speech or self._finals.tentative() is not None:
            return  # the utterance ended (or paused) meanwhile: its final is on the way
        text = decoded.result.text.strip()
        if not text:
            return
        view = self._stabilizer.update(text)
        start = decoded.result.segments[0].start_s if decoded.result.segments else 0.0
        await self._emit(PartialTranscribed(view.text, round(start, 3), view.stable_text))

    async def _publish_ready(self) -> None:
        for final in self._finals.pop_ready():
            if final.error is not None:
                await self._fail(ErrorCode.INTERNAL_ERROR, f"decoding failed: {final.error}")
                return
            await self._publish_final(final)
        await self._finish_if_done()

    async def _publish_final(self, final: PendingFinal) -> None:
        result = final.result
        text = result.text.strip() if result is not None else ""
        if not text:
            return  # silence or noise the guards threw away: no final text
        start_s, end_s = final.start_sample / SAMPLE_RATE, final.end_sample / SAMPLE_RATE
        words = None
        if self.params.word_timestamps:
            words = tuple(
                WordTiming(w.word.strip(), round(w.start_s, 3), round(w.end_s, 3), round(w.confidence, 3))
                for segment in result.segments for w in (segment.words or ())
            )
        if self._language is None and result.language:
            self._language = result.language  # detected once; later decodes skip detection (~0.6 s on base)
        self._assembler.add_final(text, start_s, end_s)
        await self._emit(FinalTranscribed(text, round(start_s, 3), round(end_s, 3), words, result.language))

    async def _finish_if_done(self) -> None:
        if not self._ending or self._ended or len(self._finals):
            return
        self._ended = True
        total = round(self._segmenter.samples_seen / SAMPLE_RATE, 3)
        await self._emit(SessionEnded(self.session_id, total, self._assembler.transcript))
        self.stop_self(NORMAL)

    # -- helpers ------------------------------------------------------------------------------------------

    def _new_request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    async def _tell_transcriber(self, message: Any) -> None:
        with contextlib.suppress(ActorDead):  # a dead transcriber is reported through its Down message
            await self._transcriber.tell(message)

    async def _emit(self, event: ServerEvent) -> None:
        await self._sink(event)

    def statistics_extra(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "model": self.params.model,
            "audio_s": round(self._segmenter.samples_seen / SAMPLE_RATE, 3),
            "finals_pending": len(self._finals),
            "in_speech": self._in_speech,
        }
