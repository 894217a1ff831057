"""Builders that turn configuration into the speech actors' parts (models, VAD, limits).

Used by worker nodes and by services that embed a session actor without the web layer:

    transcriber = await spawn(TranscriberActor("fast", decoder_factory(catalogue, "fast")))
    session = await spawn(SessionActor("s1", StreamParams(), transcriber=transcriber,
                                       segmenter=new_segmenter(config.vad), sink=on_event))
    await session.tell(PushAudio(pcm_bytes)); await session.tell(End())
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from dalston.actors.decoder import WhisperDecoder
from dalston.actors.models import ModelCatalogue
from dalston.actors.protocol import SessionBounds
from dalston.actors.session import SessionLimits
from dalston.actors.silero import SpeechSegmenter
from dalston.actors.vad import VadParams
from dalston.actors.vad_backends import new_vad
from dalston.config import SessionConfig, VadConfig

log = structlog.get_logger(__name__)


def decoder_factory(catalogue: ModelCatalogue, alias: str, parallel_decodes: int = 2) -> Callable[[], WhisperDecoder]:
    """A loader for `TranscriberActor`: resolves the weights (sha256-checked), loads them, warms up.

    Runs in the transcriber's thread pool, so a restart reloads a fresh model without blocking the loop.
    `parallel_decodes` should match the transcriber's `inference_threads`: CTranslate2 runs one decode per
    worker at a time, and its workers share one copy of the weights.
    """

    def load() -> WhisperDecoder:
        decoder = WhisperDecoder(catalogue.resolve(alias), num_workers=parallel_decodes)
        warm_up_s = decoder.warm_up()
        log.info("model.loaded", model=alias, load_s=round(decoder.load_s, 3), warm_up_s=round(warm_up_s, 3))
        return decoder

    return load


def vad_params(config: VadConfig) -> VadParams:
    return VadParams(
        threshold=config.threshold,
        min_speech_ms=config.min_speech_ms,
        min_silence_ms=config.min_silence_ms,
        speech_pad_ms=config.speech_pad_ms,
        max_segment_s=config.max_segment_s,
    )


def new_segmenter(config: VadConfig) -> SpeechSegmenter:
    """A segmenter with its own recurrent VAD state over the process-wide Silero model (`config.backend`)."""
    return SpeechSegmenter(new_vad(config.backend), vad_params(config))


def session_limits(config: SessionConfig) -> SessionLimits:
    return SessionLimits(
        max_frame_bytes=config.max_frame_bytes,
        idle_timeout_s=config.idle_timeout_s,
        max_duration_s=config.max_duration_s,
        partial_interval_ms=config.partial_interval_ms,
        bounds=session_bounds(config),
    )


def session_bounds(config: SessionConfig) -> SessionBounds:
    """What a client may ask of a session, from [session]: the gateway checks query parameters against it, the
    session checks `configure` messages."""
    return SessionBounds(
        min_silence_ms=(config.min_silence_ms_min, config.min_silence_ms_max),
        max_segment_s=(config.max_segment_s_min, config.max_segment_s_max),
        vad_threshold=(config.vad_threshold_min, config.vad_threshold_max),
        max_keyterms=config.max_keyterms,
        max_keyterm_chars=config.max_keyterm_chars,
        max_prompt_chars=config.max_prompt_chars,
    )
