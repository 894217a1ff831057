"""TranscriberActor: one loaded speech model, shared by every session of a node.

Sessions `tell` it a `DecodeRequest` naming where the answer goes; it queues requests in a `DecodeQueue`
(finals before partials, partials latest-wins per session), runs at most `inference_threads` decodes at once
in its own thread pool, and tells each result back as `Decoded`. Blocking inference never runs on the loop.

Batching: when a thread frees up and the model can decode batches (`decode_batch`), the requests of one kind
that are waiting at that moment and share a batch key (the same encoder window length) go to the model in one
call, up to the model's `max_batch`. A lone final starts at once: nothing ever waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from dalston.actors.runtime import Actor, ActorDead, ActorRef, ExitReason
from dalston.actors.speech.decode_queue import DecodeQueue

log = structlog.get_logger(__name__)


class Decoder(Protocol):
    """The model interface (a faster-whisper `WhisperDecoder`, or a fake in scheduling tests)."""

    def decode(
        self,
        audio: np.ndarray,
        *,
        final: bool,
        word_timestamps: bool,
        language: str | None,
        offset_s: float,
        beam_size: int | None = None,
    ) -> Any: ...


class BatchDecoder(Decoder, Protocol):
    """A model that also decodes several requests in one call (the real `WhisperDecoder`)."""

    max_batch: int

    def batch_key(self, samples: int) -> Hashable: ...

    def batch_limit(self, key: Any) -> int: ...  # optional: at most this many of one key in a call

    def decode_batch(self, requests: Sequence[Any], *, beam_size: int | None = None,
                     defer_redo: bool = False) -> list[Any]: ...


@dataclass(frozen=True, eq=False)
class DecodeRequest:
    """Decode `audio` (float32, 16 kHz) of one utterance; `reply_to` receives a `Decoded`."""

    session_id: str
    utterance_id: int
    request_id: int
    audio: np.ndarray
    offset_s: float
    final: bool
    reply_to: ActorRef
    word_timestamps: bool = False
    language: str | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    stable_prefix: str = ""  # the utterance's stable partial text: a final contradicting it is decoded again
    full_window: bool = False  # set by the transcriber when a batch's output for it was degenerate
    prompt: str | None = None  # Whisper initial prompt (the session's keyterms and prompt)


@dataclass(frozen=True)
class UtteranceEnded:
    """Partials of this utterance (and earlier ones) are no longer wanted."""

    session_id: str
    utterance_id: int


@dataclass(frozen=True)
class CancelDecode:
    """Withdraw one queued request, if it has not started."""

    session_id: str
    request_id: int


@dataclass(frozen=True)
class CancelSession:
    """The session stopped: withdraw everything it queued."""

    session_id: str


@dataclass(frozen=True, eq=False)
class Decoded:
    """The answer to a DecodeRequest: a result, or the error that prevented one."""

    session_id: str
    utterance_id: int
    request_id: int
    final: bool
    result: Any | None
    error: str | None
    queued_s: float
    decode_s: float


@dataclass(frozen=True)
class _DecodeFinished:
    pass


DecoderFactory = Callable[[], Decoder]


class TranscriberActor(Actor):
    """Owns one model. `load_decoder` runs in the thread pool at start (loading takes seconds)."""

    mailbox_size = 1024

    def __init__(self, alias: str, load_decoder: DecoderFactory, inference_threads: int = 2) -> None:
        self.alias = alias
        self._load_decoder = load_decoder
        self._threads = inference_threads
        self._queue: DecodeQueue[DecodeRequest] = DecodeQueue()
        self._running: set[asyncio.Task[None]] = set()
        # Sessions with a partial decode running. Partials get at most threads - 1 threads, so a final never
        # waits for a whole partial decode to finish before it can start.
        self._partial_sessions: set[str] = set()
        self._partial_batches = 0  # running partial decodes (each a batch of one or more sessions)
        self._max_partials = max(1, inference_threads - 1)
        self._batches = 0
        self._batched_requests = 0
        self._largest_batch = 0
        self._redone = 0  # batch members decoded again alone with the full window
        self._pool: ThreadPoolExecutor | None = None
        self._decoder: Decoder | None = None
        self._decodes = {"final": 0, "partial": 0, "failed": 0}
        self._greedy_finals = 0  # finals decoded greedily because others were waiting
        self._decode_s_sum = dict.fromkeys(self._decodes, 0.0)  # per kind, for the worker's /metrics
        self._queued_s_sum = dict.fromkeys(self._decodes, 0.0)

    async def on_start(self) -> None:
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"decode-{self.alias}")
        self._decoder = await asyncio.get_running_loop().run_in_executor(self._pool, self._load_decoder)

    async def receive(self, message: Any) -> None:
        match message:
            case DecodeRequest():
                self._queue.submit(message)
            case UtteranceEnded(session_id, utterance_id):
                self._queue.utterance_ended(session_id, utterance_id)
            case CancelDecode(session_id, request_id):
                self._queue.cancel(session_id, request_id)
            case CancelSession(session_id):
                self._queue.cancel_session(session_id)
            case _DecodeFinished():
                pass
            case _:
                await super().receive(message)
        self._dispatch()

    def _dispatch(self) -> None:
        while len(self._running) < self._threads:
            first = self._queue.next(allow_partials=self._partial_batches < self._max_partials,
                                     busy_sessions=self._partial_sessions)
            if first is None:
                return
            limit = self._batch_limit(first)
            batch = self._batch_with(first, limit)
            self._batches += 1  # decode calls, and how many requests they carried
            self._batched_requests += len(batch)
            self._largest_batch = max(self._largest_batch, len(batch))
            if not first.final:
                self._partial_batches += 1
                self._partial_sessions.update(request.session_id for request in batch)
            # At least one more whole batch of finals waits behind this one: decode it greedily, so a deep
            # backlog clears ~25% sooner. Greedy costs word error (tiny.en, window study: 6.8% against 6.0%
            # with beam 5), so a shorter queue keeps the model's beam.
            beam_size = 1 if first.final and self._queue.statistics().finals_queued >= limit else None
            self._greedy_finals += len(batch) if beam_size == 1 else 0
            task = self.start_task(self._decode(batch, beam_size), name=f"decode:{first.session_id}")  # owned
            self._running.add(task)

    def _batch_limit(self, first: DecodeRequest) -> int:
        """How many requests may share `first`'s call: 1 for a model without batches or a full-window redo."""
        decoder = self._decoder
        max_batch = getattr(decoder, "max_batch", 1)
        if max_batch <= 1 or not hasattr(decoder, "decode_batch") or first.full_window:
            return 1
        if hasattr(decoder, "batch_limit"):
            return decoder.batch_limit(decoder.batch_key(first.audio.size))  # type: ignore[union-attr]
        return max_batch

    def _batch_with(self, first: DecodeRequest, limit: int) -> list[DecodeRequest]:
        """`first` and the requests of its kind waiting now with its encoder window and prompt, up to `limit`."""
        if limit <= 1:
            return [first]
        decoder = self._decoder
        key = decoder.batch_key(first.audio.size)  # type: ignore[union-attr]
        return self._queue.take_batch(  # one prompt per batch: the model would split it anyway
            first, limit, lambda r: decoder.batch_key(r.audio.size) == key and r.prompt == first.prompt
            and not r.full_window,
            busy_sessions=self._partial_sessions)

    async def _decode(self, batch: list[DecodeRequest], beam_size: int | None) -> None:
        assert self._pool is not None and self._decoder is not None
        started = time.monotonic()
        results: list[Any] = [None] * len(batch)
        error = None
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._pool, self._run_decoder, batch,
                                                                       beam_size)
        except Exception as exc:  # a failed decode is reported to its sessions; the model stays loaded
            error = f"{type(exc).__name__}: {exc}"
            log.exception("transcriber.decode_failed", model=self.alias, session_id=batch[0].session_id,
                          batch=len(batch))
        finished = time.monotonic()
        try:
            for request, result in zip(batch, results, strict=True):
                self._count(request, error, finished - started, started - request.submitted_at)
                if error is None and getattr(result, "needs_full_window", False):
                    # Its output was degenerate: decode it again with the 30 s window, first in line, without
                    # having held up the rest of its batch.
                    self._queue.resubmit(dataclasses.replace(request, full_window=True))
                    self._redone += 1
                    continue
                answer = Decoded(request.session_id, request.utterance_id, request.request_id, request.final,
                                 result, error, started - request.submitted_at, finished - started)
                # Never waits: a session that cannot keep up (its client stopped reading) must not hold an
                # inference slot. Unbounded is safe: a session has at most a few decodes outstanding.
                with contextlib.suppress(ActorDead):  # the session may have ended while its decode ran
                    request.reply_to.tell_unbounded(answer)
        finally:
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
            if not batch[0].final:
                self._partial_batches -= 1
                self._partial_sessions.difference_update(request.session_id for request in batch)
            with contextlib.suppress(ActorDead):
                self.ref.send_system(_DecodeFinished())  # wake the dispatcher: a thread is free

    def _run_decoder(self, batch: list[DecodeRequest], beam_size: int | None) -> list[Any]:
        decoder = self._decoder
        assert decoder is not None
        if hasattr(decoder, "decode_batch"):  # even for one: the request's stable_prefix goes with it
            return list(decoder.decode_batch(batch, beam_size=beam_size, defer_redo=len(batch) > 1))
        request = batch[0]
        return [decoder.decode(request.audio, final=request.final, word_timestamps=request.word_timestamps,
                               language=request.language, offset_s=request.offset_s, beam_size=beam_size)]

    def _count(self, request: DecodeRequest, error: str | None, decode_s: float, queued_s: float) -> None:
        kind = "failed" if error else "final" if request.final else "partial"
        self._decodes[kind] += 1
        self._decode_s_sum[kind] += decode_s
        self._queued_s_sum[kind] += queued_s

    async def on_stop(self, reason: ExitReason) -> None:
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def statistics_extra(self) -> dict[str, Any]:
        queue = self._queue.statistics()
        done = sum(self._decodes.values())
        return {
            "model": self.alias,
            "running": len(self._running),
            "finals_queued": queue.finals_queued,
            "partials_queued": queue.partials_queued,
            "partials_replaced": queue.partials_replaced,
            "partials_dropped": queue.partials_dropped,
            "decodes": dict(self._decodes),
            "greedy_finals": self._greedy_finals,
            "batches": self._batches,
            "mean_batch": round(self._batched_requests / self._batches, 3) if self._batches else None,
            "largest_batch": self._largest_batch,
            "finals_redone_alone": self._redone,
            "mean_decode_s": round(sum(self._decode_s_sum.values()) / done, 4) if done else None,
            "decode_s_sum": dict(self._decode_s_sum),
            "queued_s_sum": dict(self._queued_s_sum),
        }
