"""Prometheus metrics of sessions moved between workers (failover and drains), on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_SECONDS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, float("inf"))


class FailoverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.moves_total = Counter("dalston_gateway_session_moves_total",
                                   "Sessions placed on another worker: reason lost (failover) or handback (drain)",
                                   ["reason"], registry=registry)
        self.move_failures_total = Counter("dalston_gateway_session_move_failures_total",
                                           "Sessions that could not be moved (the client got worker_lost)",
                                           ["reason"], registry=registry)
        self.replay_seconds = Histogram("dalston_gateway_replay_seconds", "Audio replayed to the new worker",
                                        ["reason"], registry=registry, buckets=_SECONDS)
        self.gap_seconds = Histogram("dalston_gateway_resume_gap_seconds",
                                     "From the last event of the old worker to session.resumed",
                                     ["reason"], registry=registry, buckets=_SECONDS)
        self.placement_seconds = Histogram("dalston_gateway_resume_placement_seconds",
                                           "From noticing the loss to the new worker's spawned reply",
                                           ["reason"], registry=registry, buckets=_SECONDS)

    def moved(self, reason: str, replayed_s: float | None, gap_s: float, placement_s: float) -> None:
        self.moves_total.labels(reason).inc()
        if replayed_s is not None:  # None: a container stream replayed from its start (not decoded here)
            self.replay_seconds.labels(reason).observe(replayed_s)
        self.gap_seconds.labels(reason).observe(gap_s)
        self.placement_seconds.labels(reason).observe(placement_s)

    def failed(self, reason: str) -> None:
        self.move_failures_total.labels(reason).inc()
