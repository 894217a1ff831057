"""A session that resumes a call on a new worker: its events in the call's session time, no final twice, and
`session.end` with the whole call (dalston.actors.speech.resume, pure), and the resume record on the link."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.speech.protocol import (
    FinalTranscribed,
    PartialTranscribed,
    SessionEnded,
    SpeechStarted,
    StreamParams,
    WordTiming,
)
from dalston.actors.speech.resume import ResumedFinal, ResumedSession, ResumeRecord
from dalston.web.link_protocol import Spawn

EARLIER = (ResumedFinal("one two", 0.5, 2.0), ResumedFinal("three", 2.5, 4.0))


def test_times_are_shifted_into_the_calls_session_time() -> None:
    resumed = ResumedSession(ResumeRecord(4.0, EARLIER))
    assert resumed.rewrite(SpeechStarted(0.25)) == SpeechStarted(4.25)
    assert resumed.rewrite(PartialTranscribed("fo", 0.3, "")) == PartialTranscribed("fo", 4.3, "")
    final = resumed.rewrite(FinalTranscribed("four", 0.3, 1.5, (WordTiming("four", 0.4, 1.0, 0.9),), "en"))
    assert final == FinalTranscribed("four", 4.3, 5.5, (WordTiming("four", 4.4, 5.0, 0.9),), "en")


def test_a_final_the_client_already_has_is_not_sent_again_and_session_end_holds_the_whole_call() -> None:
    # The replay started before the end of the last final (a container stream replays from the start).
    resumed = ResumedSession(ResumeRecord(0.0, EARLIER))
    assert resumed.rewrite(FinalTranscribed("one two", 0.5, 2.0, None, "en")) is None
    assert resumed.rewrite(FinalTranscribed("three", 2.45, 4.02, None, "en")) is None
    kept = resumed.rewrite(FinalTranscribed("five", 3.9, 6.0, None, "en"))
    assert kept is not None and kept.start == 4.0  # never reaches back into a delivered final
    ended = resumed.rewrite(SessionEnded("s", 6.5, "three five"))
    assert ended == SessionEnded("s", 6.5, "one two three five")


@given(offset_s=st.floats(min_value=0, max_value=1e4, allow_nan=False),
       ends=st.lists(st.floats(min_value=0.01, max_value=100, allow_nan=False), max_size=20))
def test_whatever_a_replay_decodes_the_finals_sent_stay_in_order_and_never_repeat(offset_s: float,
                                                                                 ends: list[float]) -> None:
    resumed = ResumedSession(ResumeRecord(offset_s, (ResumedFinal("x", 0.0, offset_s),)))
    sent: list[FinalTranscribed] = []
    for end in ends:
        event = resumed.rewrite(FinalTranscribed("w", max(0.0, end - 1.0), end, None, None))
        if isinstance(event, FinalTranscribed):
            sent.append(event)
    times = [(offset_s, offset_s)] + [(f.start, f.end) for f in sent]
    assert all(b[1] > a[1] and b[0] >= a[1] for a, b in itertools.pairwise(times))


def test_the_resume_record_travels_in_the_spawn_message() -> None:
    spawn = Spawn("sess_1", StreamParams(), "127.0.0.1", ResumeRecord(12.5, EARLIER))
    again = Spawn.from_json(spawn.to_json())
    assert again == spawn
    assert Spawn.from_json(Spawn("sess_1", StreamParams()).to_json()).resume is None
