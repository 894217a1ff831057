"""Random sequences of registry operations checked against a small model of what they should do.

Heartbeats and re-registrations carry random sets of live sessions (the worker's own, ended ones, ones held by
other workers, ids the registry never saw), leases lapse, workers are marked suspect, and second processes
try to take a live worker's id.

Runs against MemoryRegistry (many examples) and RedisRegistry on a real redis-server (a few).
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from registry_harness import LIVENESS_TTL_S, Harness, assert_consistent, open_harness

from dalston.supervisor.cluster.registry import NodeRegistry, SessionInfo, WorkerIdTaken, WorkerInfo, WorkerStatus

if TYPE_CHECKING:
    from redis_server import RedisServer


MODELS = ("fast", "accurate")
WORKER_IDS = ("w0", "w1", "w2", "w3")
INSTANCES = ("", "run-1", "run-2")
LONG_S = 1e6  # leases and suspicion that only end when a rule says so (the memory clock jumps on expiry)

worker_ids = st.sampled_from(WORKER_IDS)
model_sets = st.lists(st.sampled_from(MODELS), min_size=1, max_size=2, unique=True).map(tuple)


@dataclass
class ModelWorker:
    capacity: int
    models: tuple[str, ...]
    instance: str
    status: WorkerStatus = WorkerStatus.READY
    alive: bool = True
    sessions: set[str] = field(default_factory=set)

    def takes(self, model: str) -> bool:
        return self.alive and self.status is WorkerStatus.READY and model in self.models and self.free > 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.sessions)


@dataclass
class ModelSession:
    worker_id: str
    active: bool = True
    ended_by: str = ""
    lease_lapsed: bool = False


class RegistryMachine(RuleBasedStateMachine):
    kind = "memory"
    redis_url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = AsyncExitStack()
        prefix = f"test:stateful:{uuid.uuid4().hex[:12]}:"
        self.harness: Harness = self.run(
            self.stack.enter_async_context(open_harness(self.kind, self.redis_url, prefix))
        )
        self.registry: NodeRegistry = self.run(self.harness.make(lease_ttl_s=LONG_S))
        self.workers: dict[str, ModelWorker] = {}
        self.sessions: dict[str, ModelSession] = {}
        self.session_ids: list[str] = []
        self.suspects: set[str] = set()
        self.known_models: set[str] = set()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        self.run(self.registry.close())
        self.run(self.stack.aclose())
        self.loop.close()

    # -- the model's rules, mirroring the documented semantics ---------------------------------------------

    def end(self, session_id: str, ended_by: str) -> None:
        record = self.sessions[session_id]
        record.active, record.ended_by = False, ended_by
        self.workers[record.worker_id].sessions.discard(session_id)

    def adopt(self, worker_id: str, session_id: str) -> None:
        record = self.sessions.get(session_id)
        if record is not None and record.active:
            if record.worker_id == worker_id:
                record.lease_lapsed = False
            return
        if record is not None and record.ended_by == "release":
            return
        self.sessions[session_id] = ModelSession(worker_id)
        self.workers[worker_id].sessions.add(session_id)

    def drop(self, worker_id: str, ended_by: str) -> None:
        for session_id in sorted(self.workers[worker_id].sessions):
            self.end(session_id, ended_by)
        del self.workers[worker_id]
        self.suspects.discard(worker_id)

    def draw_live(self, data: st.DataObject) -> list[str]:
        pool = sorted({*self.session_ids, "ghost-1", "ghost-2"})
        return data.draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))

    # -- rules -----------------------------------------------------------------------------------------------

    @rule(worker_id=worker_ids, capacity=st.integers(0, 3), models=model_sets,
          instance=st.sampled_from(INSTANCES), data=st.data())
    def register(self, worker_id: str, capacity: int, models: tuple[str, ...], instance: str,
                 data: st.DataObject) -> None:
        live = self.draw_live(data)
        info = WorkerInfo(worker_id, f"ws://{worker_id}", capacity, models, instance)
        old = self.workers.get(worker_id)
        if old is not None and old.instance and old.instance != instance and old.alive:
            with pytest.raises(WorkerIdTaken):
                self.run(self.registry.register(info, LIVENESS_TTL_S, live))
            return
        self.run(self.registry.register(info, LIVENESS_TTL_S, live))
        kept: set[str] = set()
        if old is not None:
            for session_id in sorted(old.sessions - set(live)):
                self.end(session_id, "replaced")
            kept = set(old.sessions)
        self.workers[worker_id] = ModelWorker(capacity, models, instance, sessions=kept)
        for session_id in live:
            self.adopt(worker_id, session_id)
        self.known_models.update(models)

    @rule(worker_id=worker_ids, data=st.data())
    def heartbeat(self, worker_id: str, data: st.DataObject) -> None:
        known = self.workers.get(worker_id)
        instance = data.draw(st.sampled_from(["", known.instance if known else "", "other"]))
        live = self.draw_live(data)
        accepted = known is not None and (not instance or instance == known.instance)
        assert self.run(self.registry.heartbeat(worker_id, LIVENESS_TTL_S, live, instance)) is accepted
        if known is None or not accepted:
            return
        known.alive = True
        for session_id in live:
            self.adopt(worker_id, session_id)
        for session_id in sorted(known.sessions - set(live)):
            if self.sessions[session_id].lease_lapsed:
                self.end(session_id, "lease")

    @rule(model=st.sampled_from(MODELS), exclude=st.frozensets(worker_ids, max_size=2))
    def acquire(self, model: str, exclude: frozenset[str]) -> None:
        session_id = f"s{len(self.session_ids)}"
        self.session_ids.append(session_id)
        allocation = self.run(self.registry.acquire(SessionInfo(session_id, model), exclude))
        skipped = exclude | self.suspects
        fits = {wid: w.free for wid, w in self.workers.items() if w.takes(model) and wid not in skipped}
        if not fits:
            assert allocation is None
            return
        assert allocation is not None and fits.get(allocation.worker_id) == max(fits.values())
        self.sessions[session_id] = ModelSession(allocation.worker_id)
        self.workers[allocation.worker_id].sessions.add(session_id)

    @precondition(lambda self: self.session_ids)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        session_id = data.draw(st.sampled_from(self.session_ids))
        scope = data.draw(st.none() | worker_ids)  # a gateway's release, or a worker's own (scoped to it)
        record = self.sessions.get(session_id)
        active = record is not None and record.active and scope in (None, record.worker_id)
        assert self.run(self.registry.release(session_id, worker_id=scope)) is active
        if active:
            self.end(session_id, "release")

    @precondition(lambda self: self.session_ids)
    @rule(data=st.data(), worker_id=worker_ids)
    def reinstate(self, data: st.DataObject, worker_id: str) -> None:
        session_id = data.draw(st.sampled_from(self.session_ids))
        record = self.sessions.get(session_id)
        active = record is not None and record.active
        expected = worker_id in self.workers and (not active or record.worker_id == worker_id)
        assert self.run(self.registry.reinstate(SessionInfo(session_id, "fast"), worker_id)) is expected
        if expected and not active:  # active there again, counted even over capacity
            self.sessions[session_id] = ModelSession(worker_id)
            self.workers[worker_id].sessions.add(session_id)

    @precondition(lambda self: any(s.active for s in self.sessions.values()))
    @rule(data=st.data())
    def lease_lapses(self, data: st.DataObject) -> None:
        session_id = data.draw(st.sampled_from(sorted(sid for sid, s in self.sessions.items() if s.active)))
        self.run(self.harness.expire_lease(self.registry, session_id))
        self.sessions[session_id].lease_lapsed = True

    @rule(worker_id=worker_ids)
    def mark_suspect(self, worker_id: str) -> None:
        self.run(self.registry.mark_suspect(worker_id, LONG_S))
        self.suspects.add(worker_id)

    @rule(worker_id=worker_ids, status=st.sampled_from(list(WorkerStatus)))
    def set_status(self, worker_id: str, status: WorkerStatus) -> None:
        known = worker_id in self.workers
        assert self.run(self.registry.set_status(worker_id, status)) is known
        if known:
            self.workers[worker_id].status = status

    @precondition(lambda self: any(w.alive for w in self.workers.values()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(sorted(wid for wid, w in self.workers.items() if w.alive)))
        self.run(self.harness.expire_liveness(self.registry, worker_id))
        self.workers[worker_id].alive = False
        if self.harness.kind == "memory":  # its one clock jumped: the harness renewed the others, sessions too
            for other in self.workers.values():
                for session_id in other.sessions if other.alive else ():
                    self.sessions[session_id].lease_lapsed = False

    @rule()
    def reap(self) -> None:
        dead = sorted(wid for wid, w in self.workers.items() if not w.alive)
        assert sorted(self.run(self.registry.reap())) == dead
        for worker_id in dead:
            self.drop(worker_id, "reaped")

    @rule(worker_id=worker_ids)
    def deregister(self, worker_id: str) -> None:
        assert self.run(self.registry.deregister(worker_id)) is (worker_id in self.workers)
        if worker_id in self.workers:
            self.drop(worker_id, "deregistered")

    @rule()
    def models(self) -> None:
        availability = self.run(self.registry.models())
        assert availability.known == self.known_models
        ready = {m for w in self.workers.values() if w.alive and w.status is WorkerStatus.READY for m in w.models}
        assert availability.ready == ready

    @invariant()
    def registry_agrees_with_the_model(self) -> None:
        self.run(assert_consistent(self.registry, MODELS))
        listed = {w.worker_id: (w.active_sessions, w.status, w.alive) for w in self.run(self.registry.list_workers())}
        assert listed == {wid: (len(w.sessions), w.status, w.alive) for wid, w in self.workers.items()}
        active = {s.session_id: s.worker_id for s in self.run(self.registry.list_sessions())}
        assert active == {sid: wid for wid, w in self.workers.items() for sid in w.sessions}


def test_memory_registry_keeps_counts_and_free_slots_true_under_random_operations() -> None:
    run_state_machine_as_test(
        RegistryMachine, settings=settings(max_examples=300, stateful_step_count=30, deadline=None)
    )


def test_redis_registry_keeps_counts_and_free_slots_true_under_random_operations(redis_server: RedisServer) -> None:
    machine = type("RedisRegistryMachine", (RegistryMachine,), {"kind": "redis", "redis_url": redis_server.url})
    run_state_machine_as_test(machine, settings=settings(max_examples=40, stateful_step_count=30, deadline=None))
