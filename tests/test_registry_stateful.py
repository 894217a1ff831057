"""Random sequences of registry operations checked against a small model of what they should do.

Runs against MemoryRegistry (many examples) and RedisRegistry on a real redis-server (a few).
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from registry_harness import LIVENESS_TTL_S, Harness, assert_consistent, open_harness

from dalston.supervisor.registry import NodeRegistry, SessionInfo, WorkerInfo, WorkerStatus

if TYPE_CHECKING:
    from redis_server import RedisServer


MODELS = ("fast", "accurate")
WORKER_IDS = ("w0", "w1", "w2", "w3")

worker_ids = st.sampled_from(WORKER_IDS)
model_sets = st.lists(st.sampled_from(MODELS), min_size=1, max_size=2, unique=True).map(tuple)


@dataclass
class ModelWorker:
    capacity: int
    models: tuple[str, ...]
    status: WorkerStatus = WorkerStatus.READY
    alive: bool = True
    sessions: set[str] = field(default_factory=set)

    def takes(self, model: str) -> bool:
        return self.alive and self.status is WorkerStatus.READY and model in self.models and self.free > 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.sessions)


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
        self.registry: NodeRegistry = self.run(self.harness.make())
        self.workers: dict[str, ModelWorker] = {}
        self.session_ids: list[str] = []

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        self.run(self.registry.close())
        self.run(self.stack.aclose())
        self.loop.close()

    @rule(worker_id=worker_ids, capacity=st.integers(0, 3), models=model_sets)
    def register(self, worker_id: str, capacity: int, models: tuple[str, ...]) -> None:
        info = WorkerInfo(worker_id, f"ws://{worker_id}", capacity, models)
        self.run(self.registry.register(info, LIVENESS_TTL_S))
        self.workers[worker_id] = ModelWorker(capacity, models)

    @rule(model=st.sampled_from(MODELS), exclude=st.frozensets(worker_ids, max_size=2))
    def acquire(self, model: str, exclude: frozenset[str]) -> None:
        session_id = f"s{len(self.session_ids)}"
        self.session_ids.append(session_id)
        allocation = self.run(self.registry.acquire(SessionInfo(session_id, model), exclude))
        fits = {wid: w.free for wid, w in self.workers.items() if w.takes(model) and wid not in exclude}
        if not fits:
            assert allocation is None
            return
        assert allocation is not None and fits.get(allocation.worker_id) == max(fits.values())
        self.workers[allocation.worker_id].sessions.add(session_id)

    @precondition(lambda self: self.session_ids)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        session_id = data.draw(st.sampled_from(self.session_ids))
        holder = next((w for w in self.workers.values() if session_id in w.sessions), None)
        assert self.run(self.registry.release(session_id)) is (holder is not None)
        if holder is not None:
            holder.sessions.discard(session_id)

    @rule(worker_id=worker_ids, status=st.sampled_from(list(WorkerStatus)))
    def set_status(self, worker_id: str, status: WorkerStatus) -> None:
        known = worker_id in self.workers
        assert self.run(self.registry.set_status(worker_id, status)) is known
        if known:
            self.workers[worker_id].status = status

    @rule(worker_id=worker_ids)
    def heartbeat(self, worker_id: str) -> None:
        known = worker_id in self.workers
        assert self.run(self.registry.heartbeat(worker_id, LIVENESS_TTL_S)) is known
        if known:
            self.workers[worker_id].alive = True

    @precondition(lambda self: any(w.alive for w in self.workers.values()))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        worker_id = data.draw(st.sampled_from(sorted(wid for wid, w in self.workers.items() if w.alive)))
        self.run(self.harness.expire_liveness(self.registry, worker_id))
        self.workers[worker_id].alive = False

    @rule()
    def reap(self) -> None:
        dead = sorted(wid for wid, w in self.workers.items() if not w.alive)
        assert sorted(self.run(self.registry.reap())) == dead
        for worker_id in dead:
            del self.workers[worker_id]

    @rule(worker_id=worker_ids)
    def deregister(self, worker_id: str) -> None:
        assert self.run(self.registry.deregister(worker_id)) is (worker_id in self.workers)
        self.workers.pop(worker_id, None)

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
