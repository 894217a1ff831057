"""Scheduling in the TranscriberActor, with a slow fake decoder at the model interface."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.decode_queue import DecodeQueue
from dalston.actors.runtime import Actor, ActorRef, spawn
from dalston.actors.transcriber import (
    CancelDecode,
    Decoded,
    DecodeRequest,
    TranscriberActor,
    UtteranceEnded,
)


class GatedDecoder:
    """Each decode waits for the test to open the gate, and records what it decoded."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.order: list[tuple[str, int, bool]] = []
        self.beams: list[int | None] = []

    def decode(self, audio: np.ndarray, *, final: bool, word_timestamps: bool, language: str | None,
               offset_s: float, beam_size: int | None = None) -> str:
        self.gate.wait(5)
        self.order.append((f"{audio[0]:.0f}", int(audio[1]), final))
        self.beams.append(beam_size)
        return "text"


class Inbox(Actor):
    def __init__(self) -> None:
        self.answers: list[Decoded] = []
        self.arrived = asyncio.Event()

    async def receive(self, message: Any) -> None:
        self.answers.append(message)
        self.arrived.set()


def request(inbox: ActorRef, session: int, utterance: int, request_id: int, final: bool) -> DecodeRequest:
    audio = np.array([session, utterance], dtype=np.float32)
    return DecodeRequest(f"s{session}", utterance, request_id, audio, 0.0, final, inbox)


async def start(decoder: GatedDecoder) -> tuple[ActorRef, ActorRef, Inbox]:
    inbox = Inbox()
    inbox_ref = await spawn(inbox, "inbox")
    transcriber = await spawn(TranscriberActor("fake", lambda: decoder, inference_threads=1), "transcriber")
    return transcriber, inbox_ref, inbox


async def wait_for_answers(inbox: Inbox, count: int) -> None:
    async with asyncio.timeout(5):
        while len(inbox.answers) < count:
            inbox.arrived.clear()
            await inbox.arrived.wait()


async def test_finals_are_never_queued_behind_partials() -> None:
    decoder = GatedDecoder()
    transcriber, inbox_ref, inbox = await start(decoder)
    await transcriber.tell(request(inbox_ref, 0, 1, 1, final=False))  # occupies the only thread
    for session in range(1, 5):
        await transcriber.tell(request(inbox_ref, session, 1, 1, final=False))
    await transcriber.tell(request(inbox_ref, 8, 1, 2, final=True))
    await transcriber.tell(request(inbox_ref, 9, 1, 2, final=True))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 7)
    after_first = [final for _, _, final in decoder.order[1:]]
    assert after_first == [True, True, False, False, False, False]
    await transcriber.stop()
    await inbox_ref.stop()


async def test_a_newer_partial_replaces_the_queued_one_and_ended_utterances_lose_theirs() -> None:
    decoder = GatedDecoder()
    transcriber, inbox_ref, inbox = await start(decoder)
    await transcriber.tell(request(inbox_ref, 0, 1, 1, final=True))  # occupies the only thread
    await transcriber.tell(request(inbox_ref, 1, 1, 1, final=False))
    await transcriber.tell(request(inbox_ref, 1, 2, 2, final=False))  # replaces the first: same session
    await transcriber.tell(request(inbox_ref, 2, 1, 1, final=False))
    await transcriber.tell(UtteranceEnded("s2", 1))  # session 2's partial is stale now
    await transcriber.tell(request(inbox_ref, 3, 1, 7, final=True))
    await transcriber.tell(CancelDecode("s3", 7))  # speech resumed: the tentative final is withdrawn
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 2)
    await asyncio.sleep(0.05)
    assert decoder.order == [("0", 1, True), ("1", 2, False)]
    assert all(a.error is None and a.result == "text" for a in inbox.answers)
    stats = transcriber.statistics().extra
    assert stats["partials_replaced"] == 1 and stats["partials_dropped"] == 1
    await transcriber.stop()
    await inbox_ref.stop()


class FailingDecoder:
    def decode(self, audio: np.ndarray, **options: Any) -> str:
        raise RuntimeError("decoder exploded")


async def test_a_failed_decode_is_reported_to_its_session_and_the_transcriber_lives_on() -> None:
    inbox = Inbox()
    inbox_ref = await spawn(inbox, "inbox")
    transcriber = await spawn(TranscriberActor("bad", FailingDecoder), "transcriber")
    await transcriber.tell(request(inbox_ref, 1, 1, 1, final=True))
    await wait_for_answers(inbox, 1)
    assert inbox.answers[0].error and "exploded" in inbox.answers[0].error
    assert transcriber.alive
    await transcriber.stop()
    await inbox_ref.stop()


class Req:
    def __init__(self, session_id: str, utterance_id: int, request_id: int, final: bool) -> None:
        self.session_id, self.utterance_id, self.request_id, self.final = session_id, utterance_id, request_id, final


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()), max_size=40))
def test_the_queue_serves_every_final_before_any_partial_and_at_most_one_partial_per_session(
    submissions: list[tuple[int, int, bool]],
) -> None:
    queue: DecodeQueue[Req] = DecodeQueue()
    for n, (session, utterance, final) in enumerate(submissions):
        queue.submit(Req(f"s{session}", utterance, n, final))
    served = []
    while (item := queue.next()) is not None:
        served.append(item)
    finals = [r for r in served if r.final]
    partials = [r for r in served if not r.final]
    assert served == finals + partials
    assert [r.request_id for r in finals] == sorted(r.request_id for r in finals)
    assert len({r.session_id for r in partials}) == len(partials)
    assert len(finals) == sum(1 for *_, final in submissions if final)
    for r in partials:  # the partial served is the newest one that session submitted
        newest = max(n for n, (s, _, final) in enumerate(submissions) if f"s{s}" == r.session_id and not final)
        assert r.request_id == newest


class StartRecordingDecoder(GatedDecoder):
    """Records each decode as it starts, then waits for the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, bool]] = []

    def decode(self, audio: np.ndarray, *, final: bool, **options: Any) -> str:
        self.started.append((f"s{audio[0]:.0f}", final))
        self.gate.wait(5)
        return "text"


async def test_partials_leave_a_thread_for_finals_and_a_session_runs_one_partial_at_a_time() -> None:
    decoder = StartRecordingDecoder()
    inbox = Inbox()
    inbox_ref = await spawn(inbox, "inbox")
    transcriber = await spawn(TranscriberActor("fake", lambda: decoder, inference_threads=2), "transcriber")
    await transcriber.tell(request(inbox_ref, 1, 1, 1, final=False))  # runs
    await transcriber.tell(request(inbox_ref, 1, 1, 2, final=False))  # waits: session 1 has a partial running
    await transcriber.tell(request(inbox_ref, 2, 1, 1, final=False))  # waits: the other thread is for finals
    await asyncio.sleep(0.05)
    await transcriber.tell(request(inbox_ref, 3, 1, 1, final=True))  # starts at once on the free thread
    await asyncio.sleep(0.05)
    assert decoder.started == [("s1", False), ("s3", True)]
    decoder.gate.set()
    await wait_for_answers(inbox, 4)
    assert sorted(decoder.started[2:]) == [("s1", False), ("s2", False)]
    await transcriber.stop()
    await inbox_ref.stop()


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30), st.sets(st.integers(0, 3)),
       st.booleans())
def test_the_queue_skips_busy_sessions_and_holds_partials_when_told(
    submissions: list[tuple[int, bool]], busy: set[int], allow_partials: bool,
) -> None:
    queue: DecodeQueue[Req] = DecodeQueue()
    for n, (session, final) in enumerate(submissions):
        queue.submit(Req(f"s{session}", 1, n, final))
    busy_sessions = {f"s{s}" for s in busy}
    served = []
    while (item := queue.next(allow_partials=allow_partials, busy_sessions=busy_sessions)) is not None:
        served.append(item)
    assert all(r.final or (allow_partials and r.session_id not in busy_sessions) for r in served)
    assert len(served) + len(queue) == len(submissions) - queue.statistics().partials_replaced
    waiting = {s for s, final in submissions if not final}
    assert len(queue) == (len(waiting) if not allow_partials else len(waiting & busy))


async def test_finals_with_others_waiting_behind_them_are_decoded_greedily_and_a_lone_final_is_not() -> None:
    decoder = GatedDecoder()
    transcriber, inbox_ref, inbox = await start(decoder)
    for session in range(3):
        await transcriber.tell(request(inbox_ref, session, 1, 1, final=True))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 3)
    # The first started alone; the second started with the third still waiting; the third started alone.
    assert decoder.beams == [None, 1, None]
    assert transcriber.statistics().extra["greedy_finals"] == 1
    await transcriber.stop()
    await inbox_ref.stop()
