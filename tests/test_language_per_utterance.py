"""language_detection=utterance: a multilingual model (`accurate`, Whisper base) detects each utterance's language
anew, and transcript.final.language says which; the default detects once per session and keeps it.

The speech: an English flite sentence, a Spanish one from espeak-ng, English again (Whisper base detects espeak's
Spanish reliably; its German it takes for English, and a VAD-cut French sentence it once took for Thai). Each
sentence is sent once the previous one's final is back, as a live call would: a session detects its language
from its first final, and a decode already queued by then still detects.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soxr
from speech_fixtures import Clip, SessionRun, check_event_order, errors, fixed_chunks
from speech_synthesis import joined, needs_flite, synthesise

from dalston.actors.runtime import spawn
from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.factory import new_segmenter
from dalston.actors.speech.models import ModelCatalogue
from dalston.actors.speech.protocol import FinalTranscribed, StreamParams
from dalston.actors.speech.session import SessionActor
from dalston.actors.speech.transcriber import TranscriberActor
from dalston.config import VadConfig

pytestmark = [pytest.mark.slow, needs_flite,
              pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                 reason="espeak-ng is not installed (scripts/setup.sh --for-tests)")]

ENGLISH = "Good morning, I would like to book a table for two tonight."
SPANISH = "Buenos días, quisiera reservar una mesa para dos personas esta noche."
AGAIN = "Thank you, we will see you at eight."


@functools.cache
def espeak(text: str, voice: str) -> Clip:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
        pcm, rate = read_wav(path)
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 16000, quality="HQ")
    return Clip(f"espeak-{voice}", np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16), 16000, text)


@functools.cache
def _load_base() -> WhisperDecoder:
    decoder = WhisperDecoder(ModelCatalogue.default().resolve("accurate"), num_workers=2)
    decoder.warm_up()
    return decoder


@pytest.fixture(scope="module")
def base_factory() -> Callable[[], WhisperDecoder]:
    decoder = _load_base()
    assert decoder.multilingual
    return lambda: decoder


async def final_languages(factory: Callable[[], WhisperDecoder], detection: str) -> list[str | None]:
    parts = [joined(0.3, synthesise(ENGLISH), 1.2), joined(espeak(SPANISH, "es"), 1.2),
             joined(synthesise(AGAIN), 1.2)]
    transcriber = await spawn(TranscriberActor("accurate", factory, inference_threads=2))
    run = SessionRun(transcriber, transcriber)
    run.session = await spawn(SessionActor(
        "s1", StreamParams(model="accurate", interim_results=False, language_detection=detection),
        transcriber=transcriber, segmenter=new_segmenter(VadConfig()), sink=run.sink, model_language=None))
    for count, part in enumerate(parts, 1):
        await run.push(fixed_chunks(part.pcm.tobytes(), 6400))
        await run.wait_for(FinalTranscribed, count, timeout_s=60)
    await run.finish(120)
    await run.close()
    check_event_order(run.events)
    assert errors(run.events) == []
    finals = run.of(FinalTranscribed)
    assert len(finals) == 3, [final.text for final in finals]
    return [final.language for final in finals]


async def test_each_utterance_gets_its_own_language_when_asked(base_factory: Callable[[], WhisperDecoder]) -> None:
    assert await final_languages(base_factory, "utterance") == ["en", "es", "en"]


async def test_by_default_the_language_detected_first_is_kept_for_the_session(
    base_factory: Callable[[], WhisperDecoder],
) -> None:
    assert await final_languages(base_factory, "session") == ["en", "en", "en"]
