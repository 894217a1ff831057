"""The operations page's data: one snapshot of the cluster, built from the registry's workers, each node's tree
and each node's Prometheus text (pure: no I/O, the caller fetches).

Histograms:
- final latency: the workers' `dalston_worker_final_latency_seconds` histograms, summed over workers and models;
- decode time: the transcribers report only the count and total time of their decodes, so each snapshot bins
  the decodes done since the previous one at their mean time over that interval (per kind); the first
  snapshot bins every decode so far at the overall mean.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dalston.supervisor.cluster.registry import WorkerRecord
from dalston.web.introspection import WorkerTree, worker_json

BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, float("inf"))
FINAL_LATENCY = "dalston_worker_final_latency_seconds"


@dataclass(frozen=True)
class Histogram:
    """Counts per bucket (not cumulative): `counts[i]` fell in (bounds[i-1], bounds[i]]."""

    bounds_s: tuple[float, ...] = BUCKETS_S
    counts: tuple[int, ...] = (0,) * len(BUCKETS_S)

    def add(self, value_s: float, count: int = 1) -> Histogram:
        index = next(i for i, bound in enumerate(self.bounds_s) if value_s <= bound)
        counts = list(self.counts)
        counts[index] += count
        return Histogram(self.bounds_s, tuple(counts))

    def to_json(self) -> dict[str, Any]:
        return {"bounds_s": ["+Inf" if b == float("inf") else b for b in self.bounds_s], "counts": list(self.counts),
                "total": sum(self.counts)}


@dataclass(frozen=True)
class OpsSnapshot:
    taken_at: float  # monotonic, for refresh decisions
    at: float  # Unix time
    workers: list[dict[str, Any]]
    trees: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    models: list[dict[str, Any]]
    final_latency: Histogram
    decode_time: dict[str, Histogram]
    # Per (worker, model actor name, kind): the decode count and total seconds last seen.
    decode_totals: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "workers": self.workers,
            "trees": self.trees,
            "sessions": self.sessions,
            "models": self.models,
            "final_latency": self.final_latency.to_json(),
            "decode_time": {kind: h.to_json() for kind, h in sorted(self.decode_time.items())},
        }


def build_snapshot(workers: list[WorkerRecord], trees: list[WorkerTree], metrics: dict[str, str],
                   previous: OpsSnapshot | None) -> OpsSnapshot:
    """`metrics` maps worker ids to their Prometheus text; `previous` carries the decode-time histogram on."""
    now = time.time()
    sessions, models = [], []
    for tree in trees:
        worker_id = str((tree.worker or {}).get("worker_id", tree.url))
        for node in _walk(tree.tree):
            if node.get("actor") == "SessionActor" and node.get("status") != "stopped":
                sessions.append(_session_row(worker_id, node))
            elif node.get("actor") == "TranscriberActor":
                models.append(_model_row(worker_id, node))
    decode_time, totals = _decode_time(models, previous)
    return OpsSnapshot(
        taken_at=time.monotonic(), at=now, workers=[worker_json(w, now) for w in workers],
        trees=[t.to_json() for t in trees], sessions=sessions, models=models,
        final_latency=final_latency(metrics.values()), decode_time=decode_time, decode_totals=totals,
    )


def _walk(node: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    if node is None:
        return
    yield node
    for child in node.get("children", []):
        yield from _walk(child)


def _session_row(worker_id: str, node: dict[str, Any]) -> dict[str, Any]:
    extra = node.get("extra") or {}
    return {"session_id": extra.get("session_id", node.get("id")), "worker_id": worker_id,
            "model": extra.get("model"), "age_s": round(float(node.get("uptime_s", 0.0)), 1),
            "audio_s": extra.get("audio_s"), "finals_pending": extra.get("finals_pending"),
            "in_speech": bool(extra.get("in_speech")), "mailbox_depth": node.get("mailbox_depth")}


def _model_row(worker_id: str, node: dict[str, Any]) -> dict[str, Any]:
    extra = node.get("extra") or {}
    return {"worker_id": worker_id, "actor": node.get("name"), "model": extra.get("model"),
            "status": node.get("status"), "restarts": node.get("restarts"),
            "mailbox_depth": node.get("mailbox_depth"), "running": extra.get("running", 0),
            "finals_queued": extra.get("finals_queued", 0), "partials_queued": extra.get("partials_queued", 0),
            "decodes": extra.get("decodes") or {}, "decode_s_sum": extra.get("decode_s_sum") or {},
            "mean_decode_s": extra.get("mean_decode_s")}


def final_latency(texts: Any) -> Histogram:
    """The workers' final-latency histograms added up (Prometheus buckets are cumulative; ours are not)."""
    cumulative: dict[float, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name != FINAL_LATENCY:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
    counts, below = [], 0.0
    for bound in BUCKETS_S:
        at_or_below = cumulative.get(bound, below)
        counts.append(round(at_or_below - below))
        below = at_or_below
    return Histogram(BUCKETS_S, tuple(counts))


def _decode_time(models: list[dict[str, Any]], previous: OpsSnapshot | None
                 ) -> tuple[dict[str, Histogram], dict[tuple[str, str, str], tuple[int, float]]]:
    histograms = dict(previous.decode_time) if previous else {}
    seen = previous.decode_totals if previous else {}
    totals: dict[tuple[str, str, str], tuple[int, float]] = {}
    for row in models:
        for kind, count in row["decodes"].items():
            if kind == "failed":
                continue
            key = (row["worker_id"], str(row["actor"]), kind)
            total_s = float(row["decode_s_sum"].get(kind, 0.0))
            totals[key] = (int(count), total_s)
            last_count, last_s = seen.get(key, (0, 0.0))
            if count < last_count:  # the model actor was restarted: its totals began again
                last_count, last_s = 0, 0.0
            new = int(count) - last_count
            if new > 0:
                histograms[kind] = histograms.get(kind, Histogram()).add(max(0.0, total_s - last_s) / new, new)
    return histograms, totals
