"""Prometheus metrics of a worker node (`/metrics`), each app with its own registry (tests run several).

Two feeds, so no actor knows about Prometheus:
- per session, a `SessionProbe` sits on the link: it notes when each audio frame reached the worker and
  watches the events the session sends, which gives final and partial latency measured inside the worker;
- at scrape time, `NodeCollector` reads the node's tree snapshot: active sessions, and each transcriber's
  queue depth, running decodes, decode counts and cumulative decode and queue-wait seconds.

Latency definitions (session time is what the events' timestamps count, in seconds of audio):
- final latency: from the arrival at the worker of the frame holding the final's `end` (the utterance's last
  sample plus the VAD's end padding, at most `speech_pad_ms`) to the final being sent;
- partial latency: from the arrival of the frame holding the utterance's `vad.speech_start` sample to the
  utterance's first partial, i.e. how long a speaker waits for the first words to appear (it includes the
  `partial_interval_ms` the session waits before asking for a partial, and the VAD's start padding).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from dalston.actors.speech.protocol import (
    FinalTranscribed,
    PartialTranscribed,
    ServerEvent,
    SpeechEnded,
    SpeechStarted,
    StreamParams,
)
from dalston.actors.speech.session import EventSink
from dalston.supervisor.cluster.node import WorkerNode
from dalston.supervisor.tree import TreeNode

LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, float("inf"))
MAX_FRAMES_REMEMBERED = 3000  # five minutes of 100 ms frames with no final to prune at


class AudioArrivals:
    """When the audio up to each point of a session reached the worker (pure: the caller gives the times)."""

    def __init__(self, sample_rate: int, max_frames: int = MAX_FRAMES_REMEMBERED) -> None:
        self._bytes_per_s = 2 * sample_rate  # int16 mono
        self._max_frames = max_frames
        self._received_bytes = 0
        self._frames: deque[tuple[float, float]] = deque()  # (session time where the frame ends, arrival)
        self._forgotten_until_s = float("-inf")  # where the last forgotten frame ended

    def received(self, num_bytes: int, at: float) -> None:
        self._received_bytes += num_bytes
        self._frames.append((self._received_bytes / self._bytes_per_s, at))
        if len(self._frames) > self._max_frames:
            self._forgotten_until_s = self._frames.popleft()[0]

    def arrival_of(self, audio_s: float) -> float | None:
        """When the frame holding session time `audio_s` arrived; None if it is unknown or forgotten."""
        if self._forgotten_until_s + 1e-6 >= audio_s:  # it was in a forgotten frame
            return None
        for frame_end_s, at in self._frames:
            if frame_end_s + 1e-6 >= audio_s:
                return at
        return None

    def forget_before(self, audio_s: float) -> None:
        """Drop the frames that end before `audio_s` (no later question is about them)."""
        while self._frames and self._frames[0][0] < audio_s:
            self._forgotten_until_s = self._frames.popleft()[0]


class SessionProbe:
    """Watches one session on the link: call `audio_received` per frame, and send events through `wrap`."""

    def __init__(self, metrics: WorkerMetrics, params: StreamParams, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._model = params.model
        self._clock = clock
        self._arrivals = AudioArrivals(params.sample_rate)
        self._speech_started_at: float | None = None  # arrival of the current utterance's first frame

    def audio_received(self, num_bytes: int) -> None:
        self._arrivals.received(num_bytes, self._clock())

    def wrap(self, sink: EventSink) -> EventSink:
        async def observed(event: ServerEvent) -> None:
            await sink(event)
            self.observe(event)

        return observed

    def observe(self, event: ServerEvent) -> None:
        metrics, now = self._metrics, self._clock()
        match event:
            case SpeechStarted(timestamp):
                metrics.vad_events.labels("speech_start").inc()
                self._speech_started_at = self._arrivals.arrival_of(timestamp)
            case SpeechEnded():
                metrics.vad_events.labels("speech_end").inc()
            case PartialTranscribed():
                metrics.transcripts.labels("partial").inc()
                if self._speech_started_at is not None:
                    metrics.partial_latency.labels(self._model).observe(max(0.0, now - self._speech_started_at))
                    self._speech_started_at = None  # only the utterance's first partial counts
            case FinalTranscribed(end=end):
                metrics.transcripts.labels("final").inc()
                self._speech_started_at = None
                arrived = self._arrivals.arrival_of(end)
                if arrived is not None:
                    metrics.final_latency.labels(self._model).observe(max(0.0, now - arrived))
                self._arrivals.forget_before(end)


class WorkerMetrics:
    def __init__(self, node: WorkerNode, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self.node_view = NodeCollector(node)
        self.registry.register(self.node_view)
        self.sessions_total = Counter("dalston_worker_sessions_total", "Sessions started on this worker",
                                      ["model"], registry=self.registry)
        self.final_latency = Histogram(
            "dalston_worker_final_latency_seconds",
            "From the arrival of the frame holding an utterance's end to its final being sent",
            ["model"], registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.partial_latency = Histogram(
            "dalston_worker_partial_latency_seconds",
            "From the arrival of the frame where an utterance starts to its first partial being sent",
            ["model"], registry=self.registry, buckets=LATENCY_BUCKETS_S)
        self.vad_events = Counter("dalston_worker_vad_events_total", "Voice activity events sent, by event",
                                  ["event"], registry=self.registry)
        self.transcripts = Counter("dalston_worker_transcripts_total", "Transcript events sent, by kind",
                                   ["kind"], registry=self.registry)

    def session_probe(self, params: StreamParams) -> SessionProbe:
        return SessionProbe(self, params, self._clock)

    def session_started(self, model: str) -> None:
        self.sessions_total.labels(model).inc()

    async def handler(self, request: web.Request) -> web.Response:
        await self.node_view.refresh()
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response


@dataclass(frozen=True)
class _NodeView:
    capacity: int
    sessions_active: int
    transcribers: tuple[TreeNode, ...]


class NodeCollector(Collector):
    """Figures read from the node's live tree; `refresh` (async) runs just before each scrape."""

    def __init__(self, node: WorkerNode) -> None:
        self._node = node
        self._view = _NodeView(node.capacity, 0, ())

    async def refresh(self) -> None:
        tree = await self._node.tree()
        nodes = list(_walk(tree)) if tree is not None else []
        sessions = sum(1 for n in nodes if n.actor == "SessionActor" and n.status == "running")
        transcribers = tuple(n for n in nodes if n.actor == "TranscriberActor")
        self._view = _NodeView(self._node.capacity, sessions, transcribers)

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield GaugeMetricFamily("dalston_worker_capacity", "Sessions this worker accepts at once",
                                value=view.capacity)
        yield GaugeMetricFamily("dalston_worker_sessions_active", "Sessions running now",
                                value=view.sessions_active)
        yield from _transcriber_metrics(view.transcribers)


def _walk(node: TreeNode) -> Iterator[TreeNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _transcriber_metrics(transcribers: tuple[TreeNode, ...]) -> Iterator[Metric]:
    queued = GaugeMetricFamily("dalston_worker_transcriber_queue_depth", "Decode requests waiting, by kind",
                               labels=["model", "kind"])
    running = GaugeMetricFamily("dalston_worker_transcriber_running", "Decodes running now", labels=["model"])
    mailbox = GaugeMetricFamily("dalston_worker_transcriber_mailbox_depth", "Messages waiting in the mailbox",
                                labels=["model"])
    decodes = CounterMetricFamily("dalston_worker_decodes", "Decodes done, by kind (final, partial, failed)",
                                  labels=["model", "kind"])
    dropped = CounterMetricFamily("dalston_worker_partials_dropped", "Partial requests never decoded",
                                  labels=["model", "why"])
    decode_s = SummaryMetricFamily("dalston_worker_decode_seconds", "Time spent decoding, by kind",
                                   labels=["model", "kind"])
    wait_s = SummaryMetricFamily("dalston_worker_decode_wait_seconds", "Time a decode request waited, by kind",
                                 labels=["model", "kind"])
    for node in transcribers:
        extra: dict[str, Any] = node.extra
        model = str(extra.get("model", node.id))
        queued.add_metric([model, "final"], extra.get("finals_queued", 0))
        queued.add_metric([model, "partial"], extra.get("partials_queued", 0))
        running.add_metric([model], extra.get("running", 0))
        mailbox.add_metric([model], node.mailbox_depth)
        dropped.add_metric([model, "replaced"], extra.get("partials_replaced", 0))
        dropped.add_metric([model, "utterance_ended"], extra.get("partials_dropped", 0))
        counts: dict[str, int] = extra.get("decodes", {})
        for kind, count in counts.items():
            decodes.add_metric([model, kind], count)
        for family, sums in ((decode_s, extra.get("decode_s_sum", {})), (wait_s, extra.get("queued_s_sum", {}))):
            for kind, total in sums.items():
                family.add_metric([model, kind], count_value=counts.get(kind, 0), sum_value=total)
    yield from (queued, running, mailbox, decodes, dropped, decode_s, wait_s)
