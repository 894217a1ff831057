"""Several channels in one session (a call recorder's one channel per party), on tiny.en and flite voices.

Each channel has its own VAD and assembler and shares the session's model queue; its events say which channel
they are from, and `session.end` gives each channel's transcript and one merged in time order.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from audio_encoders import encode
from speech_fixtures import Clip, check_event_order, errors, random_chunks, start_session
from speech_synthesis import joined, needs_flite, synthesise

from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.protocol import FinalTranscribed, SpeechEnded, SpeechStarted, StreamParams
from dalston.wer import normalize_words, word_error_rate

pytestmark = [pytest.mark.slow, needs_flite]

AGENT = "Thank you for calling the support line, how can I help you today?"
CALLER = "My internet connection stopped working yesterday evening."
AGENT_LATER = "I can send an engineer to your house on Monday morning."


def stereo_call() -> tuple[Clip, Clip]:
    """Two parties taking turns: the agent (slt) on the left, the caller (rms) on the right."""
    agent = synthesise(AGENT, "slt")
    caller = synthesise(CALLER, "rms")
    agent_later = synthesise(AGENT_LATER, "slt")
    left = joined(0.3, agent, 0.5 + caller.duration_s, 0.5, agent_later, 1.0)
    right = joined(0.3 + agent.duration_s + 0.5, caller, 0.5 + agent_later.duration_s + 1.0)
    length = max(len(left.pcm), len(right.pcm))
    pad = [np.pad(side.pcm, (0, length - len(side.pcm))) for side in (left, right)]
    return Clip("left", pad[0], 16000, left.text), Clip("right", pad[1], 16000, right.text)


@pytest.mark.parametrize(("encoding", "rate"), [("pcm_s16le", 16000), ("pcm_mulaw", 8000), ("ogg_opus", 16000)])
async def test_each_channel_of_a_stereo_call_is_transcribed_on_its_own_and_merged_in_time_order(
    tiny_factory: Callable[[], WhisperDecoder], encoding: str, rate: int,
) -> None:
    left, right = stereo_call()
    if rate != 16000:
        left, right = left.resampled(rate), right.resampled(rate)
    interleaved = np.stack([left.pcm, right.pcm], axis=1)
    data = interleaved.tobytes() if encoding == "pcm_s16le" else encode(interleaved, rate, encoding)
    run = await start_session(tiny_factory, StreamParams(encoding=encoding, sample_rate=rate, channels=2,
                                                         word_timestamps=True))
    await run.push(random_chunks(data, random.Random(3), max_bytes=4000))
    await run.finish()
    await run.close()
    assert errors(run.events) == []
    for channel, side in enumerate((left, right)):
        own = [event for event in run.events if getattr(event, "channel", None) == channel]
        check_event_order([run.events[0], *own])
        assert any(isinstance(event, SpeechStarted) for event in own)
        finals = [event for event in own if isinstance(event, FinalTranscribed)]
        text = " ".join(final.text for final in finals)
        assert word_error_rate(side.text, text) <= 0.25, (channel, text)
        assert run.end.to_json()["channels"][channel] == {"channel": channel, "transcript": text}
    assert all(event.channel in (0, 1) for event in run.events
               if isinstance(event, SpeechStarted | SpeechEnded | FinalTranscribed))
    merged = run.end.to_json()["merged"]
    assert [item["start"] for item in merged] == sorted(item["start"] for item in merged)
    assert [item["channel"] for item in merged] == [0, 1, 0]  # agent, caller, agent
    assert "internet" in normalize_words(merged[1]["text"])
    assert run.end.transcript == " ".join(item["text"] for item in merged)


async def test_a_mono_session_is_unchanged_its_events_carry_no_channel(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    clip = joined(0.3, synthesise(CALLER), 1.0)
    run = await start_session(tiny_factory, StreamParams(interim_results=True))
    await run.push([clip.pcm.tobytes()[i:i + 3200] for i in range(0, clip.pcm.nbytes, 3200)])
    await run.finish()
    await run.close()
    assert errors(run.events) == [] and run.of(FinalTranscribed)
    assert all("channel" not in event.to_json() for event in run.events)
    assert "channels" not in run.end.to_json() and "merged" not in run.end.to_json()


class FailingScorer:
    """A VAD model that breaks after a while (a fault at the VAD interface), to crash its channel's actor."""

    def __init__(self, windows_before_failing: int = 40) -> None:
        self.windows = 0
        self._left = windows_before_failing

    def probability(self, window: np.ndarray) -> float:
        self.windows += 1
        self._left -= 1
        if self._left < 0:
            raise RuntimeError("VAD model failed")
        return 0.0

    def reset(self) -> None:
        self.windows = 0


async def test_a_channel_whose_actor_crashes_ends_its_session_with_internal_error(
    tiny_factory: Callable[[], WhisperDecoder],
) -> None:
    from speech_fixtures import SessionRun

    from dalston.actors.runtime import spawn
    from dalston.actors.speech.session import SessionActor
    from dalston.actors.speech.silero import SpeechSegmenter

    run = await start_session(tiny_factory, StreamParams(interim_results=False))  # for its transcriber
    await run.finish()
    crashing = SessionRun(run.transcriber, run.transcriber)
    crashing.session = await spawn(SessionActor(
        "crash", StreamParams(channels=2), transcriber=run.transcriber,
        segmenter=SpeechSegmenter(FailingScorer()), sink=crashing.sink, model_language="en"))
    assert crashing.session.statistics().extra["channels"] == 2
    await crashing.push([np.zeros(16000 * 2 * 2, dtype="<i2").tobytes()])  # 2 s of stereo: past 40 windows
    await crashing.stopped(10)
    await run.close()
    assert errors(crashing.events) == ["internal_error"]
    assert "channel:crash/" in crashing.events[-1].message
