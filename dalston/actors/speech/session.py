"""SessionActor: one live stream in, interim and final text out (DESIGN §5, §7).

It owns its audio decoder and one `ChannelActor` per audio channel (its own VAD segmenter, pending finals and
assembler; spawned and monitored by the session); the model is shared through a TranscriberActor. It owns what the
client may tune while it runs: vocabulary and endpointing (`configure`), and the idle clock (`keepalive`).
Events go to an async `sink` (a WebSocket, a link, or a callback of an embedding service).
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

import numpy as np
import structlog

from dalston.actors.runtime import NORMAL, Actor, ActorDead, ActorRef, Down, ExitReason, spawn
from dalston.actors.speech.audio import InvalidAudio, new_decoder
from dalston.actors.speech.channel import (
    ChannelActor,
    ChannelAudio,
    ChannelDone,
    ChannelEvent,
    ChannelFailed,
    ChannelSettings,
    DecodeOptions,
    FinishChannel,
    FlushChannel,
    LanguageDetected,
    UseTranscriber,
    whisper_prompt,
)
from dalston.actors.speech.protocol import (
    ChannelFinal,
    Configure,
    End,
    ErrorCode,
    ErrorOccurred,
    Flush,
    Keepalive,
    ServerEvent,
    SessionBegan,
    SessionConfigured,
    SessionEnded,
    StreamParams,
    check_endpointing,
    check_vocabulary,
)
from dalston.actors.speech.resume import ResumedSession, ResumeRecord
from dalston.actors.speech.silero import SpeechSegmenter
from dalston.actors.speech.transcriber import CancelSession
from dalston.actors.speech.vad import with_endpointing
from dalston.config import SessionConfig

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


CHANNEL_STOP_S = 1.0  # a channel handles one message at a time; none takes this long
MIN_ACTIVITY_SAMPLES = SAMPLE_RATE // 50  # 20 ms: less audio in a frame does not count as activity


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
        limits: SessionConfig | None = None,
        model_language: str | None = None,
        find_transcriber: TranscriberLookup | None = None,
        resume: ResumeRecord | None = None,
    ) -> None:
        self.session_id = session_id
        self.params = params
        self.limits = limits or SessionConfig()  # [session]: limits, bounds, timers
        self._transcriber = transcriber
        self._find_transcriber = find_transcriber
        # A call taken over from another worker: times in the call's session time, no final sent twice.
        self._resumed = ResumedSession(resume) if resume is not None else None
        self._sink = sink
        self._fixed_language = params.language if params.language != "auto" else model_language
        self._detected_language: str | None = None
        self._decoder = new_decoder(params.encoding, params.sample_rate, self.limits.max_frame_bytes,
                                    params.channels)
        self._keyterms, self._prompt = params.keyterms, params.prompt
        self._refusal: str | None = None  # endpointing that cannot work together: refused at start
        try:
            self._vad_params = with_endpointing(segmenter.machine.params, params.min_silence_ms,
                                                params.max_segment_s, params.vad_threshold)
        except ValueError as error:
            self._vad_params, self._refusal = segmenter.machine.params, str(error)
        self._vad_source = segmenter.vad
        self._segmenters = [self._new_segmenter(segmenter if i == 0 else None) for i in range(params.channels)]
        mono = params.channels == 1
        self._decode_keys = [session_id if mono else f"{session_id}/{i}" for i in range(params.channels)]
        self._channels: list[ActorRef] = []  # started in on_start, one actor per channel
        self._done: dict[int, ChannelDone] = {}
        self._samples_in = 0  # per channel, 16 kHz: the session's audio time
        self._ending = False
        self._ended = False
        self._last_activity_at = self._started_at = time.monotonic()
        self.last_error: ErrorOccurred | None = None

    def _new_segmenter(self, segmenter: SpeechSegmenter | None) -> SpeechSegmenter:
        if segmenter is None:  # the same VAD backend, with its own recurrent state
            return SpeechSegmenter(type(self._vad_source)(), self._vad_params)
        segmenter.machine.retune(self._vad_params)
        return segmenter

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        # The runtime drops this monitor, reaps the ticker and runs the callback however the session ends
        # (a kill included), so there is no on_stop to write and nothing in it that could block.
        self._transcriber.monitor(self.ref)
        self.ref.monitor(self._cancel_queued_decodes)
        await self.emit(SessionBegan(self.session_id, {**self.params.to_json(), **self._settings()}))
        if self._refusal is not None:
            await self.fail(ErrorCode.INVALID_REQUEST, self._refusal)
            return
        for index, segmenter in enumerate(self._segmenters):
            # Owned by this session (reaped with it) and monitored: a channel that crashes ends the session.
            channel = await spawn(ChannelActor(index, self._decode_keys[index], segmenter, self.ref,
                                               self._transcriber, self.decode_options(),
                                               labelled=self.params.channels > 1),
                                  f"channel:{self._decode_keys[index]}")
            channel.monitor(self.ref)
            self._channels.append(channel)
        self.start_task(self._tick_forever(), name=f"tick:{self.session_id}")

    async def on_stop(self, reason: ExitReason) -> None:
        # Bounded (each channel is killed past CHANNEL_STOP_S): the channels end normally before their session,
        # instead of being killed when the runtime reaps what the session owns (which it reports as a crash).
        for channel in self._channels:
            await channel.stop(NORMAL, timeout_s=CHANNEL_STOP_S)

    def _settings(self) -> dict[str, Any]:
        """The settings a client may change, as they are now (session.begin and session.configured)."""
        vad = self._vad_params
        return {"keyterms": list(self._keyterms), "prompt": self._prompt, "min_silence_ms": vad.min_silence_ms,
                "max_segment_s": vad.max_segment_s, "vad_threshold": vad.threshold}

    def _cancel_queued_decodes(self, _ref: ActorRef, _reason: ExitReason) -> None:
        with contextlib.suppress(ActorDead):  # never waits: the model actor must not hold up a stopping session
            for key in self._decode_keys:
                self._transcriber.tell_unbounded(CancelSession(key))

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
            case ChannelEvent(event):
                if not self._ended:
                    await self.emit(event)
            case ChannelDone(index):
                self._done[index] = message
                await self._finish_if_done()
            case ChannelFailed(code, why):
                await self.fail(code, why)
            case LanguageDetected(language):
                self._language_detected(language)
            case Flush():
                await self._tell_channels(FlushChannel())
            case End():
                await self._begin_ending()
            case Keepalive():
                self._last_activity_at = time.monotonic()
            case Configure():
                await self._configure(message)
            case _Tick():
                await self._check_limits()
            case Down(ref) if ref is self._transcriber:
                await self._on_transcriber_down()
            case Down(ref, reason) if ref in self._channels:
                await self.fail(ErrorCode.INTERNAL_ERROR, f"{ref.name} stopped: {reason}")
            case _:
                await super().receive(message)

    async def _on_transcriber_down(self) -> None:
        """The model actor stopped: wait for its supervisor's fresh one and hand it the undecoded finals."""
        replacement = await self._find_replacement()
        if replacement is None:
            await self.fail(ErrorCode.INTERNAL_ERROR, "the speech model stopped; the session cannot go on")
            return
        log.warning("session.transcriber_replaced", session_id=self.session_id, transcriber=replacement.name)
        self._transcriber = replacement
        replacement.monitor(self.ref)
        await self._tell_channels(UseTranscriber(replacement))

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
            await self.emit(ErrorOccurred(ErrorCode.INVALID_MESSAGE,
                                          "the session is ending: audio after 'end' or a timeout is not transcribed"))
            return
        try:
            samples = self._decoder.decode(data)
        except InvalidAudio as error:
            await self.fail(ErrorCode.INVALID_AUDIO, str(error))
            return
        if samples.shape[1] >= MIN_ACTIVITY_SAMPLES:  # a trickle of bytes does not keep a session alive
            self._last_activity_at = time.monotonic()
        await self._push(samples)

    async def _push(self, samples: np.ndarray) -> None:
        if samples.shape[1] == 0:
            return
        self._samples_in += samples.shape[1]
        for channel, row in zip(self._channels, samples, strict=True):
            with contextlib.suppress(ActorDead):  # a channel that stopped is reported through its Down
                await channel.tell(ChannelAudio(row))

    async def _tell_channels(self, message: Any) -> None:
        for channel in self._channels:
            with contextlib.suppress(ActorDead):
                await channel.tell(message)

    async def _configure(self, message: Configure) -> None:
        """Vocabulary and endpointing for what is said from now on; out of bounds: reported, nothing changed."""
        bounds = self.limits.bounds
        try:
            vocabulary = check_vocabulary(self._keyterms if message.keyterms is None else message.keyterms,
                                          self._prompt if message.prompt is None else message.prompt, bounds)
            check_endpointing(message.min_silence_ms, message.max_segment_s, message.vad_threshold, bounds)
            vad = with_endpointing(self._vad_params, message.min_silence_ms, message.max_segment_s,
                                   message.vad_threshold)
        except ValueError as error:
            await self.emit(ErrorOccurred(ErrorCode.INVALID_MESSAGE, f"configure: {error}"))
            return
        self._keyterms, self._prompt = vocabulary["keyterms"], vocabulary["prompt"]
        self._vad_params = vad
        await self._tell_channels(ChannelSettings(self.decode_options(), vad))
        await self.emit(SessionConfigured(self._settings()))

    async def _begin_ending(self) -> None:
        if self._ending:
            return
        self._ending = True
        try:
            tail = self._decoder.finish()
        except InvalidAudio as error:
            await self.fail(ErrorCode.INVALID_AUDIO, str(error))
            return
        await self._push(tail)
        await self._tell_channels(FinishChannel())  # each answers ChannelDone when its last final is out
        await self._finish_if_done()

    async def _check_limits(self) -> None:
        if self._ending:
            return
        idle_s = time.monotonic() - self._last_activity_at
        if time.monotonic() - self._started_at >= self.limits.max_duration_s:  # wall time: audio can trickle
            await self._timeout(f"the session reached its maximum length of {self.limits.max_duration_s:g} s")
        elif idle_s >= self.limits.idle_timeout_s:
            await self._timeout(f"no audio or keepalive for {self.limits.idle_timeout_s:g} s")

    async def _timeout(self, why: str) -> None:
        # Said at once, before the buffered speech is finalised: audio the client sends meanwhile is refused,
        # and the client must know why before it reads that refusal.
        self.last_error = ErrorOccurred(ErrorCode.SESSION_TIMEOUT, why)
        await self.emit(self.last_error)
        await self._begin_ending()

    async def fail(self, code: ErrorCode, message: str) -> None:
        """An error that ends the session at once; whatever was already final stays delivered."""
        if self._ended:
            return
        error = ErrorOccurred(code, message)
        self.last_error = error
        await self.emit(error)
        self._ended = True
        if code is ErrorCode.INTERNAL_ERROR:
            log.error("session.failed", session_id=self.session_id, code=str(code), message=message)
            self.stop_self(ExitReason("error", str(code)))
        else:
            # The client's mistake, not a crash: a clean exit, so no supervisor or runtime reports it as one.
            log.warning("session.ended_by_client_error", session_id=self.session_id, code=str(code),
                        message=message)
            self.stop_self(ExitReason("normal", str(code)))

    async def _finish_if_done(self) -> None:
        if not self._ending or self._ended or len(self._done) < len(self._channels):
            return
        self._ended = True
        total = round(self._samples_in / SAMPLE_RATE, 3)
        done = [self._done[index] for index in range(len(self._channels))]
        if len(done) == 1:
            await self.emit(SessionEnded(self.session_id, total, done[0].transcript))
        else:
            merged = sorted((ChannelFinal(channel.index, round(final.start_s, 3), round(final.end_s, 3), final.text)
                             for channel in done for final in channel.finals),
                            key=lambda final: (final.start, final.channel))
            await self.emit(SessionEnded(
                self.session_id, total, " ".join(final.text for final in merged),
                channels=tuple(channel.transcript for channel in done), merged=tuple(merged)))
        self.stop_self(NORMAL)

    # -- what the channels decode with -------------------------------------------------------------------

    def decode_options(self) -> DecodeOptions:
        per_utterance = self.params.language_detection == "utterance"
        language = self._fixed_language or (None if per_utterance else self._detected_language)
        return DecodeOptions(self.params.word_timestamps, language, whisper_prompt(self._keyterms, self._prompt),
                             self.params.interim_results, self.limits.partial_interval_ms)

    def _language_detected(self, language: str) -> None:
        if self._detected_language is None and self.params.language_detection == "session":
            # Detected once (from the first final of any channel); later decodes skip detection (~0.6 s on base).
            self._detected_language = language
            for channel in self._channels:
                with contextlib.suppress(ActorDead):
                    channel.tell_unbounded(ChannelSettings(self.decode_options()))

    async def emit(self, event: ServerEvent) -> None:
        if self._resumed is not None:
            rewritten = self._resumed.rewrite(event)
            if rewritten is None:
                return  # a final of the replay the client already has
            event = rewritten
        await self._sink(event)

    def statistics_extra(self) -> dict[str, Any]:
        channels = [channel.statistics() for channel in self._channels if channel.alive]
        return {
            "session_id": self.session_id,
            "model": self.params.model,
            "audio_s": round(self._samples_in / SAMPLE_RATE, 3),
            "channels": len(self._segmenters),
            # Audio a channel has not taken in yet counts as pending: a final may still come out of it.
            "finals_pending": sum(c.extra.get("finals_pending", 0) + c.mailbox_depth for c in channels),
            "in_speech": any(c.extra.get("in_speech", False) for c in channels),
        }
