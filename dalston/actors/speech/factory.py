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

from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.models import ModelCatalogue
from dalston.actors.speech.silero import SpeechSegmenter
from dalston.actors.speech.vad import VadParams
from dalston.actors.speech.vad_backends import new_vad
from dalston.config import VadConfig

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


