"""The pure VAD state machine: worked examples with exact sample times, then hypothesis properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dalston.actors.speech.vad import (
    PauseStarted,
    SpeechEnded,
    SpeechResumed,
    SpeechStarted,
    VadEvent,
    VadParams,
    VadStateMachine,
)

W = 512
SPEECH, QUIET = 0.9, 0.05


def run(probabilities: list[float], params: VadParams | None = None, flush: bool = True) -> list[VadEvent]:
    machine = VadStateMachine(params)
    events = [event for p in probabilities for event in machine.feed(p)]
    return events + machine.flush() if flush else events


# Default params in samples: min_speech 4000, min_silence 8000, pad = end pad 1920, window 512.


def test_speech_between_silences_gives_padded_segment_with_a_pause_then_an_end():
    events = run([QUIET] * 10 + [SPEECH] * 20 + [QUIET] * 30)
    # raw speech [5120, 15360); starts padded by 1920, ends padded by 1920.
    assert events == [
        SpeechStarted(3200),
        PauseStarted(3200, 17280),
        SpeechEnded(3200, 17280, "silence"),
    ]


def test_speech_started_is_emitted_only_once_min_speech_is_confirmed():
    machine = VadStateMachine()
    emitted_at = [machine.samples_fed for p in [SPEECH] * 10 if machine.feed(p)]
    assert emitted_at == [8 * W]  # 8 windows = 4096 samples >= 4000


def test_a_blip_shorter_than_min_speech_produces_no_events():
    assert run([QUIET] * 5 + [SPEECH] * 7 + [QUIET] * 40) == []


def test_speech_resuming_after_a_pause_voids_the_tentative_end():
    events = run([SPEECH] * 10 + [QUIET] * 6 + [SPEECH] * 10 + [QUIET] * 20)
    assert events == [
        SpeechStarted(0),
        PauseStarted(0, 10 * W + 1920),
        SpeechResumed(16 * W),
        PauseStarted(0, 26 * W + 1920),
        SpeechEnded(0, 26 * W + 1920, "silence"),
    ]


def test_release_threshold_holds_speech_but_cannot_bring_it_back_after_silence():
    middling = 0.4  # between release (0.35) and threshold (0.5)
    held = run([SPEECH] * 10 + [middling] * 10 + [QUIET] * 20)
    assert held[-1] == SpeechEnded(0, 20 * W + 1920, "silence")
    not_resumed = run([SPEECH] * 10 + [QUIET] + [middling] * 20)
    assert not_resumed[-1] == SpeechEnded(0, 10 * W + 1920, "silence")


def test_flush_during_a_pause_reproduces_the_pause_bounds():
    events = run([SPEECH] * 10 + [QUIET] * 6)
    assert events[-2:] == [PauseStarted(0, 10 * W + 1920), SpeechEnded(0, 10 * W + 1920, "flush")]


def test_flush_during_speech_ends_at_the_last_sample_fed_including_a_short_window():
    machine = VadStateMachine()
    for _ in range(10):
        machine.feed(SPEECH)
    machine.feed(SPEECH, num_samples=100)
    assert machine.flush() == [SpeechEnded(0, 10 * W + 100, "flush")]
    assert machine.flush() == []


def test_a_monologue_is_cut_at_max_segment_and_continues_at_once():
    params = VadParams(max_segment_s=2.0)  # 32000 samples
    events = run([SPEECH] * 100, params)
    cuts = [e for e in events if isinstance(e, SpeechEnded) and e.cause == "max_length"]
    assert cuts[0] == SpeechEnded(0, 58 * W, "max_length")  # 59*512 + 1920 > 32000
    assert events[events.index(cuts[0]) + 1] == SpeechStarted(58 * W)
    assert events[-1] == SpeechEnded(events[-2].start_sample, 100 * W, "flush")


def test_params_reject_a_release_above_the_threshold_and_a_too_short_max_segment():
    with pytest.raises(ValueError):
        VadParams(threshold=0.5, release_threshold=0.6)
    with pytest.raises(ValueError):
        VadParams(max_segment_s=0.5)


# -- properties -------------------------------------------------------------------------------------


@st.composite
def vad_params(draw: st.DrawFn) -> VadParams:
    threshold = draw(st.floats(0.1, 0.9))
    release = draw(st.one_of(st.none(), st.floats(0.01, 1.0).map(lambda f: max(0.01, f * threshold))))
    base = dict(
        threshold=threshold,
        release_threshold=release,
        min_speech_ms=draw(st.integers(0, 600)),
        min_silence_ms=draw(st.integers(0, 900)),
        speech_pad_ms=draw(st.integers(0, 400)),
        window_samples=draw(st.sampled_from([160, 256, 512])),
    )
    probe = VadParams(**base, max_segment_s=1e6)
    needed = probe.min_speech + probe.min_silence + probe.pad + probe.end_pad + 2 * probe.window_samples
    extra_s = draw(st.floats(0.0, 3.0))
    return VadParams(**base, max_segment_s=math.ceil(needed) / 16000 + extra_s + 1e-3)


@st.composite
def probability_runs(draw: st.DrawFn) -> list[float]:
    """Runs of speech-like, silence-like and borderline windows, so every transition gets exercised."""
    out: list[float] = []
    for _ in range(draw(st.integers(0, 25))):
        level = draw(st.sampled_from(["speech", "quiet", "any"]))
        length = draw(st.integers(1, 80))
        if level == "any":
            out += draw(st.lists(st.floats(0.0, 1.0), min_size=length, max_size=length))
        else:
            lo, hi = (0.8, 1.0) if level == "speech" else (0.0, 0.2)
            out += [draw(st.floats(lo, hi))] * length
    return out


@dataclass
class Replay:
    """Checks event grammar as events arrive and collects the finished segments."""

    params: VadParams
    segments: list[tuple[int, int, str, bool]] = field(default_factory=list)
    open_start: int | None = None
    open_is_continuation: bool = False
    pause: tuple[int, int] | None = None

    def take(self, event: VadEvent, fed: int) -> None:
        last_end = self.segments[-1][1] if self.segments else 0
        match event:
            case SpeechStarted(start):
                assert self.open_start is None, "two starts in a row"
                assert last_end <= start <= fed
                # A start right after a max_length end is that monologue going on.
                self.open_is_continuation = bool(self.segments) and self.segments[-1][2] == "max_length"
                self.open_start, self.pause = start, None
            case PauseStarted(start, end):
                assert self.open_start == start and self.pause is None
                assert start < end <= fed
                self.pause = (start, end)
            case SpeechResumed(at):
                assert self.pause is not None and at <= fed
                self.pause = None
            case SpeechEnded(start, end, cause):
                assert self.open_start == start, "an end must follow its start"
                assert start < end <= fed
                if cause == "silence":
                    assert self.pause == (start, end)
                self.segments.append((start, end, cause, self.open_is_continuation))
                self.open_start, self.pause, self.open_is_continuation = None, None, False


def replay(params: VadParams, probabilities: list[float]) -> tuple[Replay, VadStateMachine, bool]:
    machine = VadStateMachine(params)
    checker = Replay(params)
    for p in probabilities:
        for event in machine.feed(p):
            checker.take(event, machine.samples_fed)
    open_before_flush = checker.open_start is not None
    for event in machine.flush():
        checker.take(event, machine.samples_fed)
    return checker, machine, open_before_flush


@settings(max_examples=300, deadline=None)
@given(vad_params(), probability_runs())
def test_events_form_ordered_non_overlapping_segments_within_the_audio(params, probabilities):
    checker, machine, _ = replay(params, probabilities)
    previous_end = 0
    for start, end, _cause, _cont in checker.segments:
        assert previous_end <= start < end <= machine.samples_fed
        previous_end = end


@settings(max_examples=300, deadline=None)
@given(vad_params(), probability_runs())
def test_segment_lengths_respect_min_speech_and_max_segment(params, probabilities):
    checker, _, _ = replay(params, probabilities)
    for start, end, _cause, continuation in checker.segments:
        assert end - start <= params.max_segment
        if not continuation:  # a segment continuing after a max_length cut may be short
            assert end - start >= params.min_speech


@settings(max_examples=300, deadline=None)
@given(vad_params(), probability_runs())
def test_every_sample_fed_is_in_exactly_one_segment_or_gap(params, probabilities):
    checker, machine, _ = replay(params, probabilities)
    speech = sum(end - start for start, end, _, _ in checker.segments)
    bounds = [0] + [b for s, e, _, _ in checker.segments for b in (s, e)] + [machine.samples_fed]
    gaps = [bounds[i + 1] - bounds[i] for i in range(0, len(bounds), 2)]
    assert all(g >= 0 for g in gaps)
    assert speech + sum(gaps) == machine.samples_fed == len(probabilities) * params.window_samples


@settings(max_examples=300, deadline=None)
@given(vad_params(), probability_runs())
def test_flush_ends_open_speech_and_leaves_nothing_open(params, probabilities):
    checker, machine, open_before = replay(params, probabilities)
    assert checker.open_start is None and not machine.in_speech
    if open_before:
        assert checker.segments[-1][2] == "flush"


@settings(max_examples=300, deadline=None)
@given(vad_params(), probability_runs())
def test_sustained_speech_is_always_inside_a_segment(params, probabilities):
    checker, _, _ = replay(params, probabilities)
    w = params.window_samples
    needed = max(1, math.ceil(params.min_speech / w))
    run_start = None
    for i, p in enumerate([*probabilities, 0.0]):
        if p >= params.threshold:
            run_start = i if run_start is None else run_start
            continue
        if run_start is not None and i - run_start >= needed:
            for k in range(run_start, i):
                assert any(s <= k * w and (k + 1) * w <= e for s, e, _, _ in checker.segments)
        run_start = None


@settings(max_examples=100, deadline=None)
@given(vad_params(), st.lists(st.floats(0.0, 1.0), max_size=300))
def test_probabilities_below_threshold_never_start_speech(params, probabilities):
    quiet = [p * params.threshold * 0.999 for p in probabilities]
    assert run(quiet, params) == []
