"""Run a Dalston session actor inside your own asyncio service: no web layer, no registry, no supervisor.

    .venv/bin/python examples/embed_session.py                      # transcribes dalston/data/sample.wav
    .venv/bin/python examples/embed_session.py talk.wav --realtime  # any 16-bit mono/stereo WAV, 8-48 kHz

The parts, and what each one is for:

1. A `TranscriberActor` owns one loaded speech model ("fast" is Whisper tiny.en, from a local package; nothing
   is downloaded). Loading takes about a second, so start it once and share it between all the streams of the
   process; it queues their decodes (finals before partials) on its own thread pool, off the event loop.
2. A `SessionActor` per live stream owns the stream's PCM decoder, voice activity detector and transcript.
   Its `sink` is an async callback that receives every event as a frozen dataclass from
   `dalston.actors.speech.protocol` (`FinalTranscribed`, `PartialTranscribed`, `SessionEnded`, `ErrorOccurred`, ...);
   `event.to_json()` gives the same JSON a WebSocket client would get.
3. Audio goes in as raw s16le PCM bytes, in chunks of any size, at the rate named in `StreamParams`:
   `await session.tell(PushAudio(chunk))`. The session's mailbox is bounded: `tell` waits while it is full
   (backpressure), so a fast producer is slowed down rather than having audio dropped.
4. `End()` finalises the speech still buffered and emits `session.end` with the whole transcript; the actor
   then stops itself (`await session.wait_stopped()`). `Flush()` finalises without ending. An error that ends
   the session (`invalid_audio`, a lost model, ...) arrives as `ErrorOccurred` and the actor stops.
5. Stop the transcriber when your service shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from dalston.actors.runtime import ActorRef, spawn
from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.factory import decoder_factory, new_segmenter
from dalston.actors.speech.models import ModelCatalogue
from dalston.actors.speech.protocol import (
    End,
    ErrorOccurred,
    FinalTranscribed,
    ServerEvent,
    SessionEnded,
    StreamParams,
)
from dalston.actors.speech.session import PushAudio, SessionActor
from dalston.actors.speech.transcriber import TranscriberActor
from dalston.config import SessionConfig, VadConfig
from dalston.logs import configure_logging

SAMPLE = Path(__file__).resolve().parent.parent / "dalston" / "data" / "sample.wav"
CHUNK_MS = 100
INFERENCE_THREADS = 2


async def start_transcriber(alias: str = "fast") -> ActorRef:
    """Load the model once (in the transcriber's thread pool) and return the shared transcriber."""
    factory = decoder_factory(ModelCatalogue.default(), alias, parallel_decodes=INFERENCE_THREADS)
    return await spawn(TranscriberActor(alias, factory, inference_threads=INFERENCE_THREADS), f"transcriber-{alias}")


class Transcript:
    """The session's sink: hands each final to `on_final` and keeps how the session ended."""

    def __init__(self, on_final: Callable[[FinalTranscribed], None]) -> None:
        self.on_final = on_final
        self.ended: SessionEnded | None = None
        self.error: ErrorOccurred | None = None

    async def __call__(self, event: ServerEvent) -> None:
        if isinstance(event, FinalTranscribed):
            self.on_final(event)
        elif isinstance(event, SessionEnded):
            self.ended = event
        elif isinstance(event, ErrorOccurred):
            self.error = event


def print_final(final: FinalTranscribed) -> None:
    print(f"[{final.start:6.2f} - {final.end:6.2f}] {final.text}", flush=True)


async def transcribe_file(transcriber: ActorRef, path: Path, *, realtime: bool = False,
                          on_final: Callable[[FinalTranscribed], None] = print_final) -> str:
    """Stream a WAV file through a new session (as fast as it is taken, or at real-time pace); the transcript."""
    pcm, sample_rate = read_wav(path)
    sink = Transcript(on_final)
    session = await spawn(SessionActor(
        path.stem, StreamParams(sample_rate=sample_rate, word_timestamps=True), transcriber=transcriber,
        segmenter=new_segmenter(VadConfig()), sink=sink, limits=SessionConfig(), model_language="en",
    ))
    chunk_samples = sample_rate * CHUNK_MS // 1000
    for at in range(0, len(pcm), chunk_samples):
        await session.tell(PushAudio(pcm[at : at + chunk_samples].tobytes()))
        if realtime:
            await asyncio.sleep(CHUNK_MS / 1000)
    await session.tell(End())
    await session.wait_stopped()
    if sink.ended is None:
        raise RuntimeError(f"the session ended with an error: {sink.error}")
    return sink.ended.transcript


async def main(path: Path = SAMPLE, *, realtime: bool = False) -> str:
    transcriber = await start_transcriber()
    try:
        return await transcribe_file(transcriber, path, realtime=realtime)
    finally:
        await transcriber.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wav", nargs="?", type=Path, default=SAMPLE, help="16-bit PCM WAV (default: the sample)")
    parser.add_argument("--realtime", action="store_true", help="send the audio at the pace it was spoken")
    args = parser.parse_args()
    configure_logging("warning")  # your service configures its own logging; the example keeps stdout clean
    transcript = asyncio.run(main(args.wav, realtime=args.realtime))
    print(f"\ntranscript: {transcript}")
    sys.exit(0 if transcript else 1)
