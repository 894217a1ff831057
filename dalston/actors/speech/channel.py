"""One audio channel of a session: its own VAD, pending finals, assembler and partial stabiliser.

A mono session has one channel; `channels=N` gives N, each segmented and transcribed on its own and all sharing
the session's model queue. Each channel's decodes go to the model under its own queue key (`decode_key`), so
"latest partial wins" and "utterance ended" act per channel, not across them. The channel is driven by its
`SessionActor` (which owns the mailbox, the clock and the client); it reaches the model and the client through
the session (`ChannelHost`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dalston.actors.runtime import Actor, ActorDead, ActorRef
from dalston.actors.speech.assembler import AssembledFinal, PartialStabilizer, TranscriptAssembler
from dalston.actors.speech.finals import PendingFinal, PendingFinals
from dalston.actors.speech.partial_pace import PartialPace
from dalston.actors.speech.protocol import (
    ErrorCode,
    FinalTranscribed,
    PartialTranscribed,
    ServerEvent,
    SpeechEnded,
    SpeechStarted,
    WordTiming,
)
from dalston.actors.speech.silero import SegmenterEvent, SpeechSegmenter
from dalston.actors.speech.transcriber import CancelDecode, Decoded, DecodeRequest, UtteranceEnded
from dalston.actors.speech.vad import PauseStarted, SpeechResumed, VadParams
from dalston.actors.speech.vad import SpeechEnded as VadSpeechEnded
from dalston.actors.speech.vad import SpeechStarted as VadSpeechStarted

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class DecodeOptions:
    """What every decode of a channel carries, as the session's settings say now."""

    word_timestamps: bool
    language: str | None
    prompt: str | None
    interim_results: bool
    partial_interval_ms: int


def whisper_prompt(keyterms: tuple[str, ...], prompt: str) -> str | None:
    """The decoder prompt for a session's vocabulary: Whisper continues the text it is shown, so terms listed
    there come out spelt that way when they are said (and, short of hallucination, not when they are not)."""
    parts = [f"{', '.join(keyterms)}." if keyterms else "", prompt]  # a bare list: "Glossary:" did worse
    text = " ".join(part for part in parts if part)
    return text or None


class ChannelHost(Protocol):
    """What a channel needs from its session."""

    ref: ActorRef

    def decode_options(self) -> DecodeOptions: ...

    def new_request_id(self) -> int: ...

    def language_detected(self, language: str) -> None: ...

    async def tell_transcriber(self, message: Any) -> None: ...

    async def emit(self, event: ServerEvent) -> None: ...

    async def fail(self, code: ErrorCode, message: str) -> None: ...


class Channel:
    def __init__(self, index: int | None, decode_key: str, segmenter: SpeechSegmenter, host: ChannelHost) -> None:
        self.index = index  # None for a mono session: its events carry no channel
        self.decode_key = decode_key
        self.segmenter = segmenter
        self._host = host
        self.finals = PendingFinals()
        self.assembler = TranscriptAssembler()
        self._stabilizer = PartialStabilizer()
        self._utterance = 0  # id of the current (or last) utterance
        self.in_speech = False
        self._samples_at_last_partial = 0
        self._partial_pace = PartialPace()
        self.failed = False

    # -- audio --------------------------------------------------------------------------------------------

    async def push(self, samples: np.ndarray) -> None:
        await self._handle_vad(self.segmenter.push(samples))
        await self._maybe_request_partial()

    async def flush(self) -> None:
        await self._handle_vad(self.segmenter.flush())

    async def _handle_vad(self, events: list[SegmenterEvent]) -> None:
        for item in events:
            match item.event:
                case VadSpeechStarted(start):
                    self._utterance += 1
                    self.in_speech = True
                    self._stabilizer.reset()
                    self._samples_at_last_partial = start
                    await self._host.emit(SpeechStarted(round(start / SAMPLE_RATE, 3), self.index))
                case PauseStarted(start, end):
                    # A queued partial of this utterance would only compete with its early final.
                    await self._host.tell_transcriber(UtteranceEnded(self.decode_key, self._utterance))
                    await self._request_final(start, end, item, confirmed=False)
                case SpeechResumed():
                    withdrawn = self.finals.withdraw_tentative()
                    if withdrawn is not None:
                        await self._host.tell_transcriber(CancelDecode(self.decode_key, withdrawn.request_id))
                case VadSpeechEnded(start, end):
                    await self._on_speech_ended(start, end, item)

    async def _on_speech_ended(self, start: int, end: int, item: SegmenterEvent) -> None:
        self.in_speech = False
        await self._host.tell_transcriber(UtteranceEnded(self.decode_key, self._utterance))
        tentative = self.finals.tentative()
        if tentative is not None and (tentative.start_sample, tentative.end_sample) == (start, end):
            tentative.confirmed = True  # its decode started when the pause began
        else:
            if tentative is not None:
                self.finals.withdraw_tentative()
                await self._host.tell_transcriber(CancelDecode(self.decode_key, tentative.request_id))
            await self._request_final(start, end, item, confirmed=True)
        await self._host.emit(SpeechEnded(round(end / SAMPLE_RATE, 3), self.index))
        await self.publish_ready()

    # -- decodes ------------------------------------------------------------------------------------------

    async def _request_final(self, start: int, end: int, item: SegmenterEvent, *, confirmed: bool) -> None:
        assert item.audio is not None
        final = PendingFinal(self._utterance, self._host.new_request_id(), start, end, confirmed, item.audio,
                             stable_prefix=" ".join(self._stabilizer.stable_words))
        self.finals.add(final)
        await self.submit_final(final)

    async def submit_final(self, final: PendingFinal) -> None:
        options = self._host.decode_options()
        await self._host.tell_transcriber(self._request(
            final.utterance_id, final.request_id, final.audio, final.start_sample, final=True,
            word_timestamps=options.word_timestamps, stable_prefix=final.stable_prefix))

    def _request(self, utterance: int, request_id: int, audio: np.ndarray, start: int, *, final: bool,
                 word_timestamps: bool = False, stable_prefix: str = "") -> DecodeRequest:
        options = self._host.decode_options()
        return DecodeRequest(self.decode_key, utterance, request_id, audio, start / SAMPLE_RATE, final,
                             self._host.ref, word_timestamps=word_timestamps, language=options.language,
                             prompt=options.prompt, stable_prefix=stable_prefix)

    async def _maybe_request_partial(self) -> None:
        options = self._host.decode_options()
        if not (options.interim_results and self.in_speech) or self.finals.tentative() is not None:
            return
        interval = self._partial_pace.interval_samples(options.partial_interval_ms)
        if self.segmenter.samples_seen - self._samples_at_last_partial < interval:
            return
        utterance = self.segmenter.current_utterance()
        if utterance is None:
            return
        start, audio = utterance
        self._samples_at_last_partial = self.segmenter.samples_seen
        await self._host.tell_transcriber(
            self._request(self._utterance, self._host.new_request_id(), audio, start, final=False))

    async def on_decoded(self, decoded: Decoded) -> None:
        if not decoded.final:
            await self._on_partial(decoded)
            return
        if not self.finals.answer(decoded.request_id, decoded.result, decoded.error):
            return  # a tentative final withdrawn when speech resumed
        await self.publish_ready()

    async def _on_partial(self, decoded: Decoded) -> None:
        self._partial_pace.observe(decoded.queued_s, self._host.decode_options().partial_interval_ms)
        if decoded.error or decoded.result is None or decoded.utterance_id != self._utterance:
            return
        if not self.in_speech or self.finals.tentative() is not None:
            return  # the utterance ended (or paused) meanwhile: its final is on the way
        text = decoded.result.text.strip()
        if not text:
            return
        view = self._stabilizer.update(text)
        start = decoded.result.segments[0].start_s if decoded.result.segments else 0.0
        await self._host.emit(PartialTranscribed(view.text, round(start, 3), view.stable_text, self.index))

    async def publish_ready(self) -> None:
        for final in self.finals.pop_ready():
            if final.error is not None:
                self.failed = True
                await self._host.fail(ErrorCode.INTERNAL_ERROR, f"decoding failed: {final.error}")
                return
            await self._publish_final(final)

    async def _publish_final(self, final: PendingFinal) -> None:
        result = final.result
        text = result.text.strip() if result is not None else ""
        if not text:
            return  # silence or noise the guards threw away: no final text
        start_s, end_s = final.start_sample / SAMPLE_RATE, final.end_sample / SAMPLE_RATE
        words = None
        if self._host.decode_options().word_timestamps:
            words = tuple(
                WordTiming(w.word.strip(), round(w.start_s, 3), round(w.end_s, 3), round(w.confidence, 3))
                for segment in result.segments for w in (segment.words or ())
            )
        if result.language:
            self._host.language_detected(result.language)
        self.assembler.add_final(text, start_s, end_s, language=result.language or "")
        await self._host.emit(FinalTranscribed(text, round(start_s, 3), round(end_s, 3), words, result.language,
                                               self.index))

    @property
    def finished_finals(self) -> tuple[AssembledFinal, ...]:
        return self.assembler.finals


# -- the channel as an actor of its session ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ChannelAudio:
    """16 kHz float32 samples of this channel, in order."""

    samples: np.ndarray


@dataclass(frozen=True)
class FlushChannel:
    """Finalise the speech buffered so far."""


@dataclass(frozen=True)
class FinishChannel:
    """No more audio: flush, and report `ChannelDone` once every final is published."""


@dataclass(frozen=True)
class ChannelSettings:
    """What the channel's decodes carry from now on, and new endpointing (None: unchanged)."""

    options: DecodeOptions
    vad: VadParams | None = None


@dataclass(frozen=True)
class UseTranscriber:
    """The model actor was restarted: decode with this one, and again whatever the old one had not answered."""

    transcriber: ActorRef


@dataclass(frozen=True, eq=False)
class ChannelEvent:
    """An event for the client (the session sends it, so all of a session's events go out one way)."""

    event: ServerEvent


@dataclass(frozen=True)
class ChannelFailed:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class LanguageDetected:
    language: str


@dataclass(frozen=True)
class ChannelDone:
    index: int
    transcript: str
    finals: tuple[AssembledFinal, ...]


class ChannelActor(Actor):
    """One channel of a session as its own actor, owned and monitored by the session (a crash of it ends the
    session with `internal_error`; the runtime reaps it with the session). Its decodes go straight to the shared
    model actor and their answers straight back here; what the client must see goes through the session, told
    without waiting (`tell_unbounded`), so a session waiting to hand this channel audio never deadlocks with it.
    """

    mailbox_size = 64

    def __init__(self, index: int, decode_key: str, segmenter: SpeechSegmenter, session: ActorRef,
                 transcriber: ActorRef, options: DecodeOptions, *, labelled: bool) -> None:
        self.index = index
        self._session = session
        self._transcriber = transcriber
        self._options = options
        self._channel = Channel(index if labelled else None, decode_key, segmenter, self)
        self._next_request = 0
        self._finishing = False
        self._done = False
        self._language_reported = False

    async def receive(self, message: Any) -> None:
        match message:
            case ChannelAudio(samples):
                await self._channel.push(samples)
            case Decoded():
                await self._channel.on_decoded(message)
            case FlushChannel():
                await self._channel.flush()
            case FinishChannel():
                self._finishing = True
                await self._channel.flush()
            case ChannelSettings(options, vad):
                self._options = options
                if vad is not None:
                    self._channel.segmenter.machine.retune(vad)
            case UseTranscriber(transcriber):
                self._transcriber = transcriber
                for final in self._channel.finals.unanswered():
                    await self._channel.submit_final(final)
            case _:
                await super().receive(message)
        self._report_done()

    def _report_done(self) -> None:
        if self._finishing and not self._done and not self._channel.failed and not len(self._channel.finals):
            self._done = True
            assembler = self._channel.assembler
            self._tell_session(ChannelDone(self.index, assembler.transcript, assembler.finals))

    # -- ChannelHost ----------------------------------------------------------------------------------------

    def decode_options(self) -> DecodeOptions:
        return self._options

    def new_request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    def language_detected(self, language: str) -> None:
        if not self._language_reported:
            self._language_reported = True
            self._tell_session(LanguageDetected(language))

    async def tell_transcriber(self, message: Any) -> None:
        with contextlib.suppress(ActorDead):  # the session hears of a dead model through its monitor
            await self._transcriber.tell(message)

    async def emit(self, event: ServerEvent) -> None:
        self._tell_session(ChannelEvent(event))

    async def fail(self, code: ErrorCode, message: str) -> None:
        self._tell_session(ChannelFailed(code, message))

    def _tell_session(self, message: Any) -> None:
        with contextlib.suppress(ActorDead):  # the session is stopping; this channel goes with it
            self._session.tell_unbounded(message)

    def statistics_extra(self) -> dict[str, Any]:
        return {"channel": self.index, "in_speech": self._channel.in_speech,
                "finals_pending": len(self._channel.finals),
                "audio_s": round(self._channel.segmenter.samples_seen / SAMPLE_RATE, 3)}
