"""The cluster registry: which workers exist, how full they are, which sessions run where.

`NodeRegistry` is the interface the gateway, the worker node and the CLI use. Two implementations share its
semantics: `RedisRegistry` (many processes, one Redis, a Sentinel-managed primary or Redis Cluster; every
mutation is one atomic Lua script) and `MemoryRegistry` (one process, no Redis). Allocation is "most free
slots wins" among live, ready workers that have the model, chosen from a per-model index of free slots so
that acquiring never reads every worker.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

DEFAULT_PREFIX = "dalston:realtime:"
DEFAULT_ENDED_SESSION_TTL_S = 3600.0
# A session's slot lease. Ten of the default 1 s heartbeats: a worker that misses a few heartbeats (a GC pause, a
# slow Redis) keeps its sessions, while a slot nobody holds any more (a reservation its gateway never spawned, a
# release that never landed) is back within 10 s. A reservation is in no heartbeat until its session runs on the
# worker, so the lease must exceed the gateway's spawn timeout (5 s) plus one heartbeat interval; sessions a
# worker lists are renewed by every heartbeat, however late (so a worker back from a pause keeps them).
DEFAULT_LEASE_TTL_S = 10.0


class WorkerStatus(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class SessionStatus(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class RegistryError(Exception):
    """Base of the errors a registry raises on purpose."""


class RegistryUnavailable(RegistryError):
    """The backing store cannot be reached (Redis down or restarting); retrying later may work."""


class SessionExists(RegistryError):
    """An acquire named a session id that is already active."""


class WorkerIdTaken(RegistryError):
    """A live worker with this id, but another instance (another process), is registered already."""


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker announces when it registers."""

    worker_id: str
    endpoint: str
    capacity: int
    models: tuple[str, ...]
    instance: str = ""  # unique per process start: two processes claiming one worker id are told apart

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")
        if not self.worker_id:
            raise ValueError("worker_id must not be empty")


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the registry sees it. Times are Unix seconds."""

    worker_id: str
    endpoint: str
    status: WorkerStatus
    capacity: int
    active_sessions: int
    models: tuple[str, ...]
    started_at: float
    last_heartbeat: float
    alive: bool

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.active_sessions)


@dataclass(frozen=True)
class SessionInfo:
    """What the gateway knows about a session when it asks for a slot."""

    session_id: str
    model: str
    language: str = "auto"
    client_ip: str = ""


@dataclass(frozen=True)
class SessionRecord:
    """A session as the registry sees it. `ended_at` is None while it is active."""

    session_id: str
    worker_id: str
    status: SessionStatus
    model: str
    language: str
    client_ip: str
    started_at: float
    ended_at: float | None


@dataclass(frozen=True)
class ModelAvailability:
    """`known`: models some worker has ever registered with; `ready`: models a live, ready worker has now."""

    known: frozenset[str]
    ready: frozenset[str]


@dataclass(frozen=True)
class Allocation:
    """A reserved slot: the session may now be spawned on `worker_id` at `endpoint`."""

    session_id: str
    worker_id: str
    endpoint: str


def check_status(status: str) -> WorkerStatus:
    """The `WorkerStatus` named by `status`; ValueError for anything else."""
    try:
        return WorkerStatus(status)
    except ValueError:
        raise ValueError(f"unknown worker status {status!r}") from None


class NodeRegistry(abc.ABC):
    """Workers register and heartbeat; gateways acquire and release slots; a reaper removes the dead.

    Semantics every implementation keeps:
    - a worker is eligible for a new session while its liveness has not lapsed, its status is `ready`, it
      loaded the model and it has a free slot; among eligible workers the one with most free slots wins;
    - every active session is a lease on its slot: acquire starts it at `lease_ttl_s`; the worker's heartbeat,
      which carries the ids of the sessions it runs, renews those and reconciles the rest (one atomic step):
      a session of that worker absent from the list whose lease expired is ended and its slot freed; a live
      session the registry does not know (after a reap or a Redis restart) is adopted. So a reservation that
      no worker ever confirmed, or a release that never landed, holds its slot at most one lease TTL;
    - adopting never takes a session a gateway released (its worker may list it for a moment while it stops),
      nor one active on another worker (placed there again after a failover); an adopted session is counted
      even if that puts the worker over its capacity (the worker runs it: the count tells the truth, and acquire
      gives it nothing until it is below capacity again);
    - `active_sessions` is the number of active sessions recorded on the worker; only acquire, release,
      reconciliation and reaping/deregistering change it;
    - `mark_suspect` makes every acquire skip the worker until the time is up (a longer suspicion is kept);
    - ended sessions are kept for `ended_session_ttl_s` and then vanish.
    """

    @abc.abstractmethod
    async def register(self, worker: WorkerInfo, liveness_ttl_s: float, live_sessions: Collection[str] = ()) -> None:
        """Announce a (re)started worker as ready, with the sessions it still runs (adopted, leases renewed).

        A record left by an earlier run with the same id is replaced and its other sessions are ended; but a
        live record of another instance (`WorkerInfo.instance`) is not: that raises `WorkerIdTaken`.
        """

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, liveness_ttl_s: float, live_sessions: Collection[str] = (),
                        instance: str = "") -> bool:
        """Renew liveness and reconcile the worker's sessions against `live_sessions` (see the class doc).

        False when the registry does not know the worker, or knows it as another instance: the caller
        registers again (and learns from `WorkerIdTaken` if its id is taken).
        """

    @abc.abstractmethod
    async def set_status(self, worker_id: str, status: str) -> bool:
        """Change the status; only `ready` workers get new sessions. False for an unknown worker."""

    @abc.abstractmethod
    async def deregister(self, worker_id: str) -> bool:
        """Remove the worker and end its sessions. False when it was not registered."""

    @abc.abstractmethod
    async def acquire(self, session: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        """Reserve a slot on the best eligible worker not in `exclude`, and record the session as active.

        None when no worker can take it. Raises `SessionExists` if the session id is already active.
        """

    @abc.abstractmethod
    async def release(self, session_id: str, worker_id: str | None = None) -> bool:
        """End the session and free its slot. True only for the call that actually ended it.

        With `worker_id`, only while the session is active on that worker: a worker releasing a session it ran
        never ends the record of the worker the session moved to, whatever the timing (one atomic step).
        """

    @abc.abstractmethod
    async def reinstate(self, session: SessionInfo, worker_id: str) -> bool:
        """Record the session as active on `worker_id` again: a move released it, found no other worker, and
        the call goes on where it was. Counted there even over capacity, as an adopted session is. False when
        the worker is unknown or the session is active on another worker."""

    @abc.abstractmethod
    async def mark_suspect(self, worker_id: str, for_s: float) -> None:
        """A gateway failed to reach this worker: acquire skips it for `for_s` seconds, for every gateway."""

    @abc.abstractmethod
    async def hold(self, holder: str, session_id: str, limit: int, ttl_s: float) -> bool:
        """Count the session against `holder` (an API key or a client address) across every gateway.

        False when the holder already has `limit` live holds. A hold lapses after `ttl_s` unless held again:
        holding an existing session renews it and is never refused.
        """

    @abc.abstractmethod
    async def unhold(self, holder: str, session_id: str) -> None:
        """Give the hold back (idempotent)."""

    @abc.abstractmethod
    async def models(self) -> ModelAvailability:
        """Known and ready models, from per-model indexes (work independent of the number of workers)."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker, dead-but-not-yet-reaped ones included (`alive` False)."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def list_sessions(self, active_only: bool = True) -> list[SessionRecord]: ...

    @abc.abstractmethod
    async def free_slots(self, model: str) -> dict[str, int]:
        """The index acquire chooses from for `model`: worker id -> free slots (may still hold dead workers)."""

    @abc.abstractmethod
    async def reap(self) -> list[str]:
        """Remove workers whose liveness lapsed, ending their sessions; returns their ids."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
