"""Scheduling in the TranscriberActor, with a slow fake decoder at the model interface."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dalston.actors.runtime import Actor, ActorRef, spawn
from dalston.actors.speech.decode_queue import DecodeQueue
from dalston.actors.speech.transcriber import (
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


# ---------------------------------------------------------------- batching across sessions


class BatchingDecoder(GatedDecoder):
    """A model interface that decodes batches: records each call's members; the key is the audio length."""

    def __init__(self, max_batch: int = 4) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.calls: list[list[tuple[str, bool]]] = []
        self.called = threading.Condition()

    def wait_for_calls(self, count: int) -> bool:
        with self.called:
            return self.called.wait_for(lambda: len(self.calls) >= count, timeout=5)

    def batch_key(self, samples: int) -> int:
        return samples

    def decode_batch(self, requests: list[DecodeRequest], *, beam_size: int | None = None,
                     defer_redo: bool = False) -> list[Any]:
        with self.called:
            self.calls.append([(r.session_id, r.final) for r in requests])
            self.beams.append(beam_size)
            self.called.notify_all()
        self.gate.wait(5)
        return [f"text of {r.session_id}" for r in requests]


def sized(inbox: ActorRef, session: int, request_id: int, final: bool, samples: int = 2) -> DecodeRequest:
    audio = np.zeros(samples, dtype=np.float32)
    audio[0] = session
    return DecodeRequest(f"s{session}", 1, request_id, audio, 0.0, final, inbox)


async def start_batching(decoder: BatchingDecoder, threads: int = 1) -> tuple[ActorRef, ActorRef, Inbox]:
    inbox = Inbox()
    inbox_ref = await spawn(inbox, "inbox")
    transcriber = await spawn(TranscriberActor("fake", lambda: decoder, inference_threads=threads), "transcriber")
    return transcriber, inbox_ref, inbox


async def finals_behind_a_busy_thread(count: int) -> tuple[BatchingDecoder, ActorRef, ActorRef, Inbox]:
    """One final occupies the only thread while `count` more arrive; then the model answers them all."""
    decoder = BatchingDecoder(max_batch=4)
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    for session in range(count + 1):
        await transcriber.tell(sized(inbox_ref, session, 1, final=True))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, count + 1)
    return decoder, transcriber, inbox_ref, inbox


async def test_a_batch_is_greedy_only_while_another_whole_batch_of_finals_waits_behind_it() -> None:
    decoder, transcriber, inbox_ref, _ = await finals_behind_a_busy_thread(10)
    assert [len(call) for call in decoder.calls] == [1, 4, 4, 2]
    # Behind the second call 6 finals waited (a whole batch and more): greedy. Behind the third, 2: beam.
    assert decoder.beams == [None, 1, None, None]
    assert transcriber.statistics().extra["greedy_finals"] == 4
    await transcriber.stop()
    await inbox_ref.stop()


async def test_finals_waiting_at_the_same_moment_are_decoded_in_one_call_up_to_max_batch() -> None:
    decoder, transcriber, inbox_ref, inbox = await finals_behind_a_busy_thread(6)
    assert [len(call) for call in decoder.calls] == [1, 4, 2]
    assert [s for call in decoder.calls for s, _ in call] == [f"s{i}" for i in range(7)]  # oldest first
    assert decoder.beams == [None, None, None]  # fewer than a whole batch waited behind the second call
    assert {a.session_id: a.result for a in inbox.answers} == {f"s{i}": f"text of s{i}" for i in range(7)}
    stats = transcriber.statistics().extra
    assert stats["largest_batch"] == 4 and stats["batches"] == 3
    await transcriber.stop()
    await inbox_ref.stop()


async def test_a_lone_final_starts_at_once_and_never_waits_for_a_batch_to_fill() -> None:
    decoder = BatchingDecoder(max_batch=8)
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    decoder.gate.set()
    await transcriber.tell(sized(inbox_ref, 1, 1, final=True))
    await wait_for_answers(inbox, 1)  # answered with nothing else ever submitted
    assert decoder.calls == [[("s1", True)]]
    await transcriber.stop()
    await inbox_ref.stop()


async def test_a_final_is_never_batched_with_or_delayed_by_partials() -> None:
    decoder = BatchingDecoder(max_batch=8)
    transcriber, inbox_ref, inbox = await start_batching(decoder, threads=2)
    await transcriber.tell(sized(inbox_ref, 1, 1, final=False))  # runs on the partials' thread
    assert await asyncio.to_thread(decoder.wait_for_calls, 1)
    for session in range(2, 5):
        await transcriber.tell(sized(inbox_ref, session, 1, final=False))  # wait: partials have one thread
    await transcriber.tell(sized(inbox_ref, 9, 2, final=True))
    assert await asyncio.to_thread(decoder.wait_for_calls, 2)  # the final starts while the partial runs
    assert decoder.calls == [[("s1", False)], [("s9", True)]]
    decoder.gate.set()
    await wait_for_answers(inbox, 5)
    assert decoder.calls[2:] == [[("s2", False), ("s3", False), ("s4", False)]]  # then one partial batch
    await transcriber.stop()
    await inbox_ref.stop()


async def test_queued_finals_go_before_queued_partials_and_batches_never_mix_kinds_or_windows() -> None:
    decoder = BatchingDecoder(max_batch=8)
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    await transcriber.tell(sized(inbox_ref, 0, 1, final=True))  # occupies the only thread
    await transcriber.tell(sized(inbox_ref, 1, 1, final=False))
    await transcriber.tell(sized(inbox_ref, 2, 1, final=True))
    await transcriber.tell(sized(inbox_ref, 3, 1, final=True, samples=5))  # another encoder window
    await transcriber.tell(sized(inbox_ref, 4, 1, final=False))
    await transcriber.tell(sized(inbox_ref, 5, 1, final=True))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 6)
    assert decoder.calls == [[("s0", True)], [("s2", True), ("s5", True)], [("s3", True)],
                             [("s1", False), ("s4", False)]]
    await transcriber.stop()
    await inbox_ref.stop()


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 2)), max_size=30),
       st.integers(1, 5))
def test_a_batch_holds_one_kind_one_key_at_most_limit_requests_and_each_request_once(
    submissions: list[tuple[int, bool, int]], limit: int,
) -> None:
    queue: DecodeQueue[Req] = DecodeQueue()
    keys = {}
    for n, (session, final, key) in enumerate(submissions):
        queue.submit(Req(f"s{session}", 1, n, final))
        keys[n] = key
    served: list[int] = []
    while (first := queue.next()) is not None:
        batch = queue.take_batch(first, limit, lambda r, k=keys[first.request_id]: keys[r.request_id] == k)
        assert 1 <= len(batch) <= limit and batch[0] is first
        assert len({r.final for r in batch}) == 1 and len({keys[r.request_id] for r in batch}) == 1
        assert len({r.session_id for r in batch}) == len(batch) or first.final
        served += [r.request_id for r in batch]
    assert len(served) == len(set(served))
    assert len(served) == len(submissions) - queue.statistics().partials_replaced


async def test_requests_with_different_prompts_are_not_batched_together() -> None:
    decoder = BatchingDecoder(max_batch=8)
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    await transcriber.tell(sized(inbox_ref, 0, 1, final=True))  # occupies the only thread
    for session, prompt in ((1, None), (2, "Dalston"), (3, None), (4, "Dalston")):
        await transcriber.tell(replace(sized(inbox_ref, session, 1, final=True), prompt=prompt))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 5)
    assert decoder.calls[1:] == [[("s1", True), ("s3", True)], [("s2", True), ("s4", True)]]
    await transcriber.stop()
    await inbox_ref.stop()


class FrameLimitedDecoder(BatchingDecoder):
    """Long windows batch fewer: at most 6 "frames" (here, samples) in one call."""

    def batch_limit(self, key: int) -> int:
        return max(1, min(self.max_batch, 6 // key))


async def test_a_batch_of_long_windows_holds_fewer_requests() -> None:
    decoder = FrameLimitedDecoder(max_batch=8)
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    await transcriber.tell(sized(inbox_ref, 0, 1, final=True))  # occupies the only thread
    for session in range(1, 4):
        await transcriber.tell(sized(inbox_ref, session, 1, final=True, samples=3))
    for session in range(4, 8):
        await transcriber.tell(sized(inbox_ref, session, 1, final=True, samples=1))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 8)
    assert [len(call) for call in decoder.calls] == [1, 2, 1, 4]  # 3-sample windows two at a time, oldest first
    await transcriber.stop()
    await inbox_ref.stop()


@dataclass(frozen=True)
class Verdict:
    text: str
    needs_full_window: bool


class OneDegenerateDecoder(BatchingDecoder):
    """Session s2's output is degenerate whenever it is decoded in a batch (not alone, not in the 30 s window)."""

    def __init__(self) -> None:
        super().__init__(max_batch=8)
        self.full_window: list[bool] = []

    def decode_batch(self, requests: list[DecodeRequest], *, beam_size: int | None = None,
                     defer_redo: bool = False) -> list[Any]:
        super().decode_batch(requests, beam_size=beam_size, defer_redo=defer_redo)
        self.full_window += [r.full_window for r in requests]
        return [Verdict(f"text of {r.session_id}", defer_redo and r.session_id == "s2" and not r.full_window)
                for r in requests]


async def test_a_degenerate_batch_member_is_decoded_again_alone_without_holding_up_the_others() -> None:
    decoder = OneDegenerateDecoder()
    transcriber, inbox_ref, inbox = await start_batching(decoder)
    await transcriber.tell(sized(inbox_ref, 0, 1, final=True))  # occupies the only thread
    for session in range(1, 4):
        await transcriber.tell(sized(inbox_ref, session, 1, final=True))
    await asyncio.sleep(0.05)
    decoder.gate.set()
    await wait_for_answers(inbox, 4)
    assert [a.session_id for a in inbox.answers] == ["s0", "s1", "s3", "s2"]  # s2 came after its redo
    assert decoder.calls == [[("s0", True)], [("s1", True), ("s2", True), ("s3", True)], [("s2", True)]]
    assert decoder.full_window[-1] and not any(decoder.full_window[:-1])
    assert all(not a.result.needs_full_window for a in inbox.answers)
    assert transcriber.statistics().extra["finals_redone_alone"] == 1
    await transcriber.stop()
    await inbox_ref.stop()
