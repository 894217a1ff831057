"""The operations page's data, built from what workers report (pure: no server)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dalston.supervisor.cluster.registry import WorkerRecord, WorkerStatus
from dalston.web.introspection import WorkerTree
from dalston.web.ops_view import BUCKETS_S, build_snapshot, final_latency

METRICS_A = """\
# TYPE dalston_worker_final_latency_seconds histogram
dalston_worker_final_latency_seconds_bucket{le="0.1",model="fast"} 0.0
dalston_worker_final_latency_seconds_bucket{le="0.2",model="fast"} 1.0
dalston_worker_final_latency_seconds_bucket{le="0.3",model="fast"} 1.0
dalston_worker_final_latency_seconds_bucket{le="0.5",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="0.75",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="1.0",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="1.5",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="2.0",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="3.0",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="5.0",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="10.0",model="fast"} 3.0
dalston_worker_final_latency_seconds_bucket{le="+Inf",model="fast"} 4.0
dalston_worker_final_latency_seconds_count{model="fast"} 4.0
dalston_worker_final_latency_seconds_sum{model="fast"} 12.9
"""


def test_final_latency_adds_the_workers_cumulative_buckets_up_into_counts_per_bucket() -> None:
    metrics_b = METRICS_A.replace('model="fast"', 'model="accurate"')
    histogram = final_latency([METRICS_A, metrics_b, "# nothing here\n"])
    assert histogram.bounds_s == BUCKETS_S
    expected = [0] * len(BUCKETS_S)
    expected[BUCKETS_S.index(0.2)], expected[BUCKETS_S.index(0.5)], expected[-1] = 2, 4, 2
    assert list(histogram.counts) == expected


def worker(worker_id: str) -> WorkerRecord:
    return WorkerRecord(worker_id, f"ws://{worker_id}:1", WorkerStatus.READY, 4, 1, ("fast",), 0.0, 0.0, True)


def tree(worker_id: str, finals: int, final_s: float, restarts: int = 0) -> WorkerTree:
    def actor(node_id: str, kind: str, extra: dict[str, Any], children: tuple[Any, ...] = ()) -> dict[str, Any]:
        return {"id": node_id, "name": node_id, "kind": kind, "actor": extra.pop("_class"), "status": "running",
                "restarts": restarts if node_id.startswith("transcriber") else 0, "uptime_s": 3.0,
                "mailbox_depth": 0, "mailbox_bound": 64, "messages_handled": 0, "extra": extra,
                "children": list(children)}

    transcriber = actor("transcriber:fast", "worker", {
        "_class": "TranscriberActor", "model": "fast", "running": 1, "finals_queued": 2, "partials_queued": 0,
        "decodes": {"final": finals, "partial": 0, "failed": 0}, "decode_s_sum": {"final": final_s, "partial": 0.0},
        "mean_decode_s": None})
    session = actor("sess_1", "worker", {"_class": "SessionActor", "session_id": "sess_1", "model": "fast",
                                         "audio_s": 2.5, "finals_pending": 1, "in_speech": True})
    sessions = actor("sessions", "supervisor", {"_class": "Supervisor", "strategy": "one_for_one"}, (session,))
    root = actor(f"node:{worker_id}", "supervisor", {"_class": "Supervisor", "strategy": "one_for_one"},
                 (transcriber, sessions))
    return WorkerTree(f"http://{worker_id}:1", {"worker_id": worker_id}, root)


def test_a_snapshot_lists_sessions_and_model_queues_with_their_worker() -> None:
    snapshot = build_snapshot([worker("w1")], [tree("w1", 3, 0.9)], {}, None)
    [session] = snapshot.sessions
    assert session["session_id"] == "sess_1" and session["worker_id"] == "w1"
    assert session["audio_s"] == 2.5 and session["finals_pending"] == 1 and session["in_speech"]
    [model] = snapshot.models
    assert model["actor"] == "transcriber:fast" and model["finals_queued"] == 2 and model["running"] == 1
    assert snapshot.to_json()["decode_time"]["final"]["counts"][BUCKETS_S.index(0.3)] == 3  # 3 decodes of 0.3 s


def test_decode_time_bins_only_new_decodes_and_starts_again_after_a_model_restart() -> None:
    first = build_snapshot([worker("w1")], [tree("w1", 2, 0.2)], {}, None)  # 2 decodes of 0.1 s
    second = build_snapshot([worker("w1")], [tree("w1", 4, 2.2)], {}, first)  # 2 more of 1.0 s
    restarted = build_snapshot([worker("w1")], [tree("w1", 1, 0.5, restarts=1)], {}, second)  # 1 of 0.5 s
    counts = restarted.decode_time["final"].counts
    assert counts[BUCKETS_S.index(0.1)] == 2 and counts[BUCKETS_S.index(1.0)] == 2
    assert counts[BUCKETS_S.index(0.5)] == 1 and sum(counts) == 5
    assert restarted.models[0]["restarts"] == 1


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0.0, 5.0)), min_size=1, max_size=20))
def test_every_decode_a_model_reports_is_binned_once(steps: list[tuple[int, float]]) -> None:
    """Whatever the model reports between snapshots, the histogram holds each decode exactly once."""
    snapshot, count, total_s, expected = None, 0, 0.0, 0
    for new, mean_s in steps:
        count, total_s, expected = count + new, total_s + new * mean_s, expected + new
        snapshot = build_snapshot([worker("w1")], [tree("w1", count, total_s)], {}, snapshot)
    assert snapshot is not None
    assert sum(snapshot.decode_time["final"].counts) == expected if expected else "final" not in snapshot.decode_time
