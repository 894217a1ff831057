"""Real speech, the real tiny.en model and a session runner, shared by the session tests.

Load with `pytest_plugins = ["redis_server", "speech_fixtures"]` in tests/conftest.py, or import the fixtures.
- `tiny_decoder` (session): tiny.en loaded once per test run (about 1 s and ~150 MB), warmed up;
- `tiny_factory`: a `TranscriberActor` loader that hands out that one decoder (it is thread-safe), so each
  test spawns its own transcriber on its own event loop without reloading the model;
- `Clip`, `librivox_clips()`, `sample_clip()`: int16 speech with its reference text;
- `SessionRun` / `run_session()`: spawn a transcriber and a session actor, stream PCM, collect every event;
- `check_event_order()`, `check_finals()`: invariants every session's events must keep.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soxr

from dalston.actors.runtime import ActorRef, spawn
from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.factory import new_segmenter
from dalston.actors.speech.models import ModelCatalogue
from dalston.actors.speech.protocol import (
    End,
    ErrorOccurred,
    FinalTranscribed,
    PartialTranscribed,
    ServerEvent,
    SessionBegan,
    SessionEnded,
    SpeechEnded,
    SpeechStarted,
    StreamParams,
)
from dalston.actors.speech.session import PushAudio, SessionActor
from dalston.actors.speech.transcriber import TranscriberActor
from dalston.config import SessionConfig, VadConfig

LIBRIVOX_DIR = Path(__file__).parent / "data" / "librivox"
DATA_DIR = Path(__file__).parent.parent / "dalston" / "data"
SAMPLE_RATE = 16000
INFERENCE_THREADS = 2


@dataclass(frozen=True, eq=False)
class Clip:
    name: str
    pcm: np.ndarray  # int16 mono
    sample_rate: int
    text: str

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate

    def resampled(self, sample_rate: int) -> Clip:
        """The same speech at another rate (soxr, high quality), still int16."""
        audio = soxr.resample(self.pcm.astype(np.float32) / 32768.0, self.sample_rate, sample_rate, quality="HQ")
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
        return Clip(f"{self.name}@{sample_rate}", pcm, sample_rate, self.text)

    def head(self, fraction: float) -> Clip:
        """The first `fraction` of the clip (the text is kept whole: it is no longer a reference)."""
        return Clip(f"{self.name}[:{fraction:g}]", self.pcm[: int(len(self.pcm) * fraction)], self.sample_rate,
                    self.text)


def load_clip(wav: Path) -> Clip:
    pcm, rate = read_wav(wav)
    return Clip(wav.stem, pcm, rate, wav.with_suffix(".txt").read_text().strip())


@functools.cache
def librivox_clips() -> tuple[Clip, ...]:
    return tuple(load_clip(wav) for wav in sorted(LIBRIVOX_DIR.glob("*.wav")))


@functools.cache
def sample_clip() -> Clip:
    """The bundled 31 s sample: the five LibriVox sentences with 1.2 s pauses."""
    return load_clip(DATA_DIR / "sample.wav")


def random_chunks(data: bytes, rng: random.Random, max_bytes: int = 8000) -> Iterator[bytes]:
    """`data` cut into pieces of random sizes 1..max_bytes (odd sizes included)."""
    at = 0
    while at < len(data):
        size = rng.randint(1, max_bytes)
        yield data[at : at + size]
        at += size


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into pieces of the given sizes, and the rest."""
    frames, at = [], 0
    for size in sizes:
        frames.append(data[at : at + size])
        at += size
    return [*frames, data[at:]]


def fixed_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


# ---------------------------------------------------------------- the model


@functools.cache
def _load_tiny() -> WhisperDecoder:
    # Cached at module level too, so importing the fixture into several test modules still loads once.
    catalogue = ModelCatalogue.default()
    # Two CTranslate2 workers to match the transcribers' two inference threads (one would serialise them).
    decoder = WhisperDecoder(catalogue.resolve("fast"), num_workers=INFERENCE_THREADS)
    decoder.warm_up()
    return decoder


@pytest.fixture(scope="session")
def tiny_decoder() -> WhisperDecoder:
    return _load_tiny()


@pytest.fixture
def tiny_factory(tiny_decoder: WhisperDecoder) -> Callable[[], WhisperDecoder]:
    return lambda: tiny_decoder


# ---------------------------------------------------------------- running a session


@dataclass
class SessionRun:
    """A live session and everything it sent, each event with its arrival time (monotonic)."""

    transcriber: ActorRef
    session: ActorRef
    events: list[ServerEvent] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)
    _arrival: asyncio.Event = field(default_factory=asyncio.Event)

    async def sink(self, event: ServerEvent) -> None:
        self.events.append(event)
        self.arrived_at.append(time.monotonic())
        self._arrival.set()

    def of(self, kind: type) -> list:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def end(self) -> SessionEnded:
        ended = self.of(SessionEnded)
        assert len(ended) == 1, f"expected one session.end, got {self.events}"
        return ended[0]

    async def push(self, chunks: Iterator[bytes] | Sequence[bytes], pause_s: float = 0.0) -> None:
        for chunk in chunks:
            await self.session.tell(PushAudio(chunk))
            if pause_s:
                await asyncio.sleep(pause_s)

    async def wait_for(self, kind: type, count: int = 1, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.of(kind)) < count:
                self._arrival.clear()
                await self._arrival.wait()

    async def finish(self, timeout_s: float = 60.0) -> None:
        """Send `end` and wait for the session to stop."""
        await self.session.tell(End())
        await self.stopped(timeout_s)

    async def stopped(self, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self.session.wait_stopped()

    async def close(self) -> None:
        await self.session.stop()
        await self.transcriber.stop()


async def start_session(
    load_decoder: Callable[[], object],
    params: StreamParams | None = None,
    *,
    limits: SessionConfig | None = None,
    vad: VadConfig | None = None,
    session_id: str = "s1",
) -> SessionRun:
    transcriber = await spawn(TranscriberActor("fast", load_decoder, inference_threads=INFERENCE_THREADS))  # type: ignore[arg-type]
    run = SessionRun(transcriber, transcriber)  # the session ref is filled in below, once the sink exists
    run.session = await spawn(SessionActor(
        session_id, params or StreamParams(word_timestamps=True), transcriber=transcriber,
        segmenter=new_segmenter(vad or VadConfig()), sink=run.sink, limits=limits or SessionConfig(),
        model_language="en",
    ))
    return run


# ---------------------------------------------------------------- invariants


def check_event_order(events: Sequence[ServerEvent]) -> None:
    """session.begin first, session.end last (when there is one), speech starts and ends alternate."""
    assert events and isinstance(events[0], SessionBegan), events[:1]
    assert sum(isinstance(event, SessionBegan) for event in events) == 1
    ended = [i for i, event in enumerate(events) if isinstance(event, SessionEnded)]
    assert len(ended) <= 1 and (not ended or ended[0] == len(events) - 1), events[-3:]
    in_speech = False
    for event in events:
        if isinstance(event, SpeechStarted):
            assert not in_speech, "two speech_start in a row"
            in_speech = True
        elif isinstance(event, SpeechEnded):
            assert in_speech, "speech_end without a speech_start before it"
            in_speech = False


def check_finals(events: Sequence[ServerEvent], *, with_words: bool = True) -> None:
    """Finals are ordered and disjoint, their words ordered inside them, and session.end joins them."""
    finals = [event for event in events if isinstance(event, FinalTranscribed)]
    previous_end = 0.0
    for final in finals:
        assert final.text.strip()
        assert previous_end <= final.start < final.end, (previous_end, final)
        previous_end = final.end
        if with_words:
            assert final.words, final
            word_floor = final.start
            for word in final.words:
                assert final.start <= word.start <= word.end <= final.end, (word, final.start, final.end)
                assert word.start >= word_floor, (word, word_floor)
                word_floor = word.end
    ended = [event for event in events if isinstance(event, SessionEnded)]
    if ended:
        assert ended[0].transcript == " ".join(final.text for final in finals)


def errors(events: Sequence[ServerEvent]) -> list[str]:
    return [str(event.code) for event in events if isinstance(event, ErrorOccurred)]


def partials(events: Sequence[ServerEvent]) -> list[PartialTranscribed]:
    return [event for event in events if isinstance(event, PartialTranscribed)]
