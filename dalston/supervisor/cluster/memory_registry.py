"""`MemoryRegistry`: the registry for one process (`dalston serve`), with the same semantics as Redis's.

`RegistryState` is the pure part: plain data and methods that take the time as an argument, mirroring the
Lua scripts one for one (including the lazily pruned free-slot index, leases and reconciliation).
`MemoryRegistry` puts it behind the async `NodeRegistry` interface; since no method awaits mid-change, each
call is atomic on the event loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from dalston.supervisor.cluster.holds import HoldTable
from dalston.supervisor.cluster.registry import (
    DEFAULT_ENDED_SESSION_TTL_S,
    DEFAULT_LEASE_TTL_S,
    Allocation,
    ModelAvailability,
    NodeRegistry,
    SessionExists,
    SessionInfo,
    SessionRecord,
    SessionStatus,
    WorkerIdTaken,
    WorkerInfo,
    WorkerRecord,
    WorkerStatus,
    check_status,
)

RELEASED = "release"  # `ended_by` of a session a gateway ended: its worker's heartbeat does not bring it back


@dataclass
class _Worker:
    endpoint: str
    status: WorkerStatus
    capacity: int
    models: tuple[str, ...]
    instance: str
    started_at: float
    last_heartbeat: float
    alive_until: float
    active_sessions: int = 0
    sessions: set[str] = field(default_factory=set)


@dataclass
class _Session:
    worker_id: str
    status: SessionStatus
    model: str
    language: str
    client_ip: str
    started_at: float
    lease_until: float = 0.0
    ended_at: float | None = None
    ended_by: str = ""
    expires_at: float | None = None


class RegistryState:
    """Workers, sessions and the per-model free-slot index. No I/O, no asyncio: `now` is always given."""

    def __init__(self, ended_session_ttl_s: float = DEFAULT_ENDED_SESSION_TTL_S,
                 lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")
        self._ended_ttl_s = ended_session_ttl_s
        self._lease_ttl_s = lease_ttl_s
        self._workers: dict[str, _Worker] = {}
        self._sessions: dict[str, _Session] = {}
        self._free: dict[str, dict[str, int]] = {}
        self._known_models: set[str] = set()
        self._suspect_until: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []  # heap of (expires_at, session id) for ended sessions

    # -- workers -----------------------------------------------------------------------------------------

    def register(self, info: WorkerInfo, liveness_ttl_s: float, live: Collection[str], now: float) -> None:
        self._expire_sessions(now)
        old = self._workers.pop(info.worker_id, None)
        if old is not None:
            if old.instance and old.instance != info.instance and old.alive_until > now:
                self._workers[info.worker_id] = old
                raise WorkerIdTaken(info.worker_id)
            for session_id in old.sessions - set(live):
                self._end_session(session_id, now, "replaced")
            for model in old.models:
                self._free.get(model, {}).pop(info.worker_id, None)
        kept = old.sessions & set(live) if old is not None else set()
        worker = _Worker(info.endpoint, WorkerStatus.READY, info.capacity, tuple(info.models), info.instance,
                         started_at=now, last_heartbeat=now, alive_until=now + liveness_ttl_s,
                         active_sessions=len(kept), sessions=kept)
        self._workers[info.worker_id] = worker
        for session_id in live:
            self._adopt(info.worker_id, session_id, now)
        self._known_models.update(info.models)
        self._sync_free(info.worker_id, now)

    def heartbeat(self, worker_id: str, liveness_ttl_s: float, live: Collection[str], instance: str,
                  now: float) -> bool:
        self._expire_sessions(now)
        worker = self._workers.get(worker_id)
        if worker is None or (instance and worker.instance != instance):
            return False
        worker.alive_until = now + liveness_ttl_s
        worker.last_heartbeat = now
        for session_id in live:
            self._adopt(worker_id, session_id, now)
        for session_id in sorted(worker.sessions - set(live)):
            if self._sessions[session_id].lease_until <= now:
                self._end_session(session_id, now, "lease")
                worker.sessions.discard(session_id)
                worker.active_sessions = max(0, worker.active_sessions - 1)
        self._sync_free(worker_id, now)
        return True

    def set_status(self, worker_id: str, status: str, now: float) -> bool:
        worker = self._workers.get(worker_id)
        if worker is None:
            return False
        worker.status = check_status(status)
        self._sync_free(worker_id, now)
        return True

    def deregister(self, worker_id: str, now: float, ended_by: str = "deregistered") -> bool:
        self._expire_sessions(now)
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return False
        for session_id in worker.sessions:
            self._end_session(session_id, now, ended_by)
        for model in worker.models:
            self._free.get(model, {}).pop(worker_id, None)
        self._suspect_until.pop(worker_id, None)
        return True

    def reap(self, now: float) -> list[str]:
        dead = sorted(wid for wid, worker in self._workers.items() if worker.alive_until <= now)
        for worker_id in dead:
            self.deregister(worker_id, now, "reaped")
        self._suspect_until = {wid: t for wid, t in self._suspect_until.items() if t > now}
        return dead

    def mark_suspect(self, worker_id: str, for_s: float, now: float) -> None:
        self._suspect_until = {wid: t for wid, t in self._suspect_until.items() if t > now}
        self._suspect_until[worker_id] = max(self._suspect_until.get(worker_id, now), now + for_s)

    # -- sessions ----------------------------------------------------------------------------------------

    def acquire(self, session: SessionInfo, exclude: frozenset[str], now: float) -> Allocation | None:
        self._expire_sessions(now)
        existing = self._sessions.get(session.session_id)
        if existing is not None and existing.status is SessionStatus.ACTIVE:
            raise SessionExists(session.session_id)
        index = self._free.get(session.model, {})
        while True:
            candidates = [(free, wid) for wid, free in index.items()
                          if free >= 1 and wid not in exclude and self._suspect_until.get(wid, now) <= now]
            if not candidates:
                return None
            _, worker_id = max(candidates)
            worker = self._workers[worker_id]
            if self._eligible(worker, now):
                return self._reserve(worker_id, session, now)
            self._sync_free(worker_id, now)  # dead or stale: drops out of the candidates

    def release(self, session_id: str, now: float, worker_id: str | None = None) -> bool:
        self._expire_sessions(now)
        session = self._sessions.get(session_id)
        if session is None or session.status is not SessionStatus.ACTIVE:
            return False
        if worker_id is not None and session.worker_id != worker_id:
            return False  # it moved to another worker: that record is not ours to end
        self._end_session(session_id, now, RELEASED)
        worker = self._workers.get(session.worker_id)
        if worker is not None and session_id in worker.sessions:
            worker.sessions.discard(session_id)
            worker.active_sessions = max(0, worker.active_sessions - 1)
            self._sync_free(session.worker_id, now)
        return True

    def expire_lease(self, session_id: str, now: float) -> None:
        """Tests: let the session's lease lapse now, as if its worker had not listed it for a lease TTL."""
        self._sessions[session_id].lease_until = now

    # -- reading -----------------------------------------------------------------------------------------

    def workers(self, now: float) -> list[WorkerRecord]:
        return [self._worker_record(wid, w, now) for wid, w in sorted(self._workers.items())]

    def session(self, session_id: str, now: float) -> SessionRecord | None:
        self._expire_sessions(now)
        session = self._sessions.get(session_id)
        return None if session is None else _session_record(session_id, session)

    def sessions(self, active_only: bool, now: float) -> list[SessionRecord]:
        self._expire_sessions(now)
        return [
            _session_record(sid, s)
            for sid, s in sorted(self._sessions.items())
            if not active_only or s.status is SessionStatus.ACTIVE
        ]

    def free_slots(self, model: str) -> dict[str, int]:
        return dict(self._free.get(model, {}))

    def models(self, now: float) -> ModelAvailability:
        ready = set()
        for model in self._known_models:
            index = self._free.get(model, {})
            # As the script does: walk best first, dropping dead entries, until a live worker is met.
            for _, worker_id in sorted(((f, w) for w, f in index.items()), reverse=True):
                if self._workers[worker_id].alive_until > now:
                    ready.add(model)
                    break
                del index[worker_id]
        return ModelAvailability(frozenset(self._known_models), frozenset(ready))

    # -- internals ---------------------------------------------------------------------------------------

    @staticmethod
    def _eligible(worker: _Worker, now: float) -> bool:
        return (
            worker.alive_until > now
            and worker.status is WorkerStatus.READY
            and worker.active_sessions < worker.capacity
        )

    def _reserve(self, worker_id: str, session: SessionInfo, now: float) -> Allocation:
        worker = self._workers[worker_id]
        worker.active_sessions += 1
        worker.sessions.add(session.session_id)
        self._sync_free(worker_id, now)
        self._sessions[session.session_id] = _Session(
            worker_id=worker_id,
            status=SessionStatus.ACTIVE,
            model=session.model,
            language=session.language,
            client_ip=session.client_ip,
            started_at=now,
            lease_until=now + self._lease_ttl_s,
        )
        return Allocation(session_id=session.session_id, worker_id=worker_id, endpoint=worker.endpoint)

    def _adopt(self, worker_id: str, session_id: str, now: float) -> None:
        """Renew a listed session's lease, or adopt it: not one a gateway released, nor one active elsewhere."""
        session = self._sessions.get(session_id)
        if session is not None and session.status is SessionStatus.ACTIVE:
            if session.worker_id == worker_id:
                session.lease_until = now + self._lease_ttl_s
            return
        if session is not None and session.ended_by == RELEASED:
            return
        self._activate(worker_id, SessionInfo(session_id, "", "", ""), now)

    def reinstate(self, session: SessionInfo, worker_id: str, now: float) -> bool:
        self._expire_sessions(now)
        if worker_id not in self._workers:
            return False
        current = self._sessions.get(session.session_id)
        if current is not None and current.status is SessionStatus.ACTIVE:
            return current.worker_id == worker_id
        self._activate(worker_id, session, now)
        self._sync_free(worker_id, now)
        return True

    def _activate(self, worker_id: str, info: SessionInfo, now: float) -> None:
        """The session active on the worker and counted there; an ended record keeps what it knew."""
        session = self._sessions.get(info.session_id)
        if session is None:
            session = _Session(worker_id, SessionStatus.ACTIVE, info.model, info.language, info.client_ip,
                               started_at=now)
            self._sessions[info.session_id] = session
        session.worker_id, session.status = worker_id, SessionStatus.ACTIVE
        session.ended_at, session.ended_by, session.expires_at = None, "", None
        session.lease_until = now + self._lease_ttl_s
        worker = self._workers[worker_id]
        worker.sessions.add(info.session_id)
        worker.active_sessions += 1

    def _sync_free(self, worker_id: str, now: float) -> None:
        worker = self._workers[worker_id]
        listed = worker.status is WorkerStatus.READY and worker.alive_until > now
        for model in worker.models:
            index = self._free.setdefault(model, {})
            if listed:
                index[worker_id] = worker.capacity - worker.active_sessions
            else:
                index.pop(worker_id, None)

    def _end_session(self, session_id: str, now: float, ended_by: str) -> None:
        session = self._sessions[session_id]
        if session.status is SessionStatus.ACTIVE:
            session.status = SessionStatus.ENDED
            session.ended_at = now
            session.ended_by = ended_by
            session.expires_at = now + self._ended_ttl_s
            heapq.heappush(self._expiries, (session.expires_at, session_id))

    def _expire_sessions(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, session_id = heapq.heappop(self._expiries)
            session = self._sessions.get(session_id)
            # A reused id may have started again since this entry was pushed.
            if session is not None and session.expires_at == expires_at and session.status is SessionStatus.ENDED:
                del self._sessions[session_id]

    @staticmethod
    def _worker_record(worker_id: str, worker: _Worker, now: float) -> WorkerRecord:
        return WorkerRecord(
            worker_id=worker_id,
            endpoint=worker.endpoint,
            status=worker.status,
            capacity=worker.capacity,
            active_sessions=worker.active_sessions,
            models=worker.models,
            started_at=worker.started_at,
            last_heartbeat=worker.last_heartbeat,
            alive=worker.alive_until > now,
        )


def _session_record(session_id: str, session: _Session) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        worker_id=session.worker_id,
        status=session.status,
        model=session.model,
        language=session.language,
        client_ip=session.client_ip,
        started_at=session.started_at,
        ended_at=session.ended_at,
    )


class MemoryRegistry(NodeRegistry):
    """An in-process `NodeRegistry`. `clock` gives Unix-like seconds for stamps, liveness and leases."""

    def __init__(
        self,
        *,
        ended_session_ttl_s: float = DEFAULT_ENDED_SESSION_TTL_S,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = RegistryState(ended_session_ttl_s, lease_ttl_s)
        self._holds = HoldTable()
        self._clock = clock

    @property
    def state(self) -> RegistryState:
        return self._state

    async def register(self, worker: WorkerInfo, liveness_ttl_s: float, live_sessions: Collection[str] = ()) -> None:
        self._state.register(worker, liveness_ttl_s, live_sessions, self._clock())

    async def heartbeat(self, worker_id: str, liveness_ttl_s: float, live_sessions: Collection[str] = (),
                        instance: str = "") -> bool:
        return self._state.heartbeat(worker_id, liveness_ttl_s, live_sessions, instance, self._clock())

    async def set_status(self, worker_id: str, status: str) -> bool:
        return self._state.set_status(worker_id, status, self._clock())

    async def deregister(self, worker_id: str) -> bool:
        return self._state.deregister(worker_id, self._clock())

    async def acquire(self, session: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        return self._state.acquire(session, exclude, self._clock())

    async def release(self, session_id: str, worker_id: str | None = None) -> bool:
        return self._state.release(session_id, self._clock(), worker_id)

    async def reinstate(self, session: SessionInfo, worker_id: str) -> bool:
        return self._state.reinstate(session, worker_id, self._clock())

    async def mark_suspect(self, worker_id: str, for_s: float) -> None:
        self._state.mark_suspect(worker_id, for_s, self._clock())

    async def hold(self, holder: str, session_id: str, limit: int, ttl_s: float) -> bool:
        return self._holds.hold(holder, session_id, limit, ttl_s, self._clock())

    async def unhold(self, holder: str, session_id: str) -> None:
        self._holds.unhold(holder, session_id)

    async def models(self) -> ModelAvailability:
        return self._state.models(self._clock())

    async def list_workers(self) -> list[WorkerRecord]:
        return self._state.workers(self._clock())

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self._state.session(session_id, self._clock())

    async def list_sessions(self, active_only: bool = True) -> list[SessionRecord]:
        return self._state.sessions(active_only, self._clock())

    async def free_slots(self, model: str) -> dict[str, int]:
        return self._state.free_slots(model)

    async def reap(self) -> list[str]:
        return self._state.reap(self._clock())

    async def close(self) -> None:
        return None
