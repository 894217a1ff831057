"""WorkerNode: a supervision tree with a capacity limit that registers in the registry and heartbeats.

The tree (DESIGN §4): root (one_for_one) -> one TranscriberActor per loaded model (permanent) -> the sessions
supervisor (permanent; dynamic, temporary session children, at most `capacity`). The node refuses a spawn when
it is full or draining, so a gateway's stale view of it never over-fills it.

Failure at the top reaches the operator (DESIGN §4): when the root supervisor exits without being asked to (it
reached its restart intensity), the node refuses every spawn at once, stops heartbeating, leaves the registry and
sets `failure`; the process that runs it then exits non-zero so that systemd or Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dalston.actors.cancellation import cancel_and_wait
from dalston.actors.runtime import ActorDead, ActorRef, ExitReason, spawn
from dalston.actors.speech.factory import decoder_factory, new_segmenter
from dalston.actors.speech.models import ModelCatalogue
from dalston.actors.speech.protocol import End, ErrorCode, StreamParams
from dalston.actors.speech.resume import ResumeRecord
from dalston.actors.speech.session import EventSink, SessionActor
from dalston.actors.speech.transcriber import Decoder, TranscriberActor
from dalston.config import Config
from dalston.supervisor.cluster.registry import (
    NodeRegistry,
    RegistryUnavailable,
    WorkerIdTaken,
    WorkerInfo,
    WorkerStatus,
)
from dalston.supervisor.spec import ChildSpec, Restart
from dalston.supervisor.supervisor import (
    CapacityReached,
    SupervisorHandle,
    start_supervisor,
    supervisor_spec,
)
from dalston.supervisor.tree import TreeNode, snapshot

log = structlog.get_logger(__name__)

SESSIONS_ID = "sessions"


class SpawnRefused(Exception):
    """The node will not start this session; `code` is the client-facing error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NodeStatistics:
    worker_id: str
    status: str
    capacity: int
    active_sessions: int
    models: tuple[str, ...]
    unavailable_models: dict[str, str]
    uptime_s: float


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerNode:
    def __init__(
        self,
        config: Config,
        registry: NodeRegistry,
        endpoint: str,
        *,
        catalogue: ModelCatalogue | None = None,
        decoders: Mapping[str, Callable[[], Decoder]] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.endpoint = endpoint
        self.worker_id = config.node.worker_id or default_worker_id()
        self.capacity = config.node.capacity
        self._catalogue = catalogue or ModelCatalogue.from_config(config.models)
        self._decoders = dict(decoders) if decoders is not None else None
        self.models: tuple[str, ...] = ()
        self.unavailable: dict[str, str] = {}
        self.status = WorkerStatus.STOPPED
        self._root: SupervisorHandle | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._releases: set[asyncio.Task[None]] = set()
        self.instance = secrets.token_hex(8)  # tells this process apart from another claiming the same id
        self._live_sessions: set[str] = set()  # carried by every heartbeat: the leases to renew
        self.failure: ExitReason | None = None  # why the node failed (its root supervisor exited, its id taken)
        self._failed = asyncio.Event()
        # Set when a drain begins: each session's link hands it back to its gateway at its next pause, or at
        # `hand_back_by` (monotonic) at the latest; the gateway moves it to another worker.
        self.handing_back = asyncio.Event()
        self.hand_back_by = math.inf
        # Whether the registry's record under this id is ours: a node whose id another live process holds must
        # never mark that record draining nor remove it (on a failed start, or after losing its id).
        self._registered = False
        self._started_at = time.monotonic()
        self._log = log.bind(worker_id=self.worker_id)

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models, start the tree, register as ready and start heartbeating."""
        factories = self._decoder_factories()
        if not factories:
            raise RuntimeError(f"no model could be loaded: {self.unavailable}")
        children = [self._transcriber_spec(alias, factory) for alias, factory in factories.items()]
        children.append(supervisor_spec(SESSIONS_ID, [], max_children=self.capacity, max_restarts=1000,
                                        period_s=1.0))
        self._root = await start_supervisor(children, name=f"node:{self.worker_id}", max_restarts=5, period_s=30)
        self._root.ref.monitor(self._root_exited)
        self.models = tuple(factories)
        await self._register()
        self._registered = True
        self._stopping.clear()
        self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name=f"heartbeat:{self.worker_id}")
        self._log.info("node.started", models=self.models, capacity=self.capacity, endpoint=self.endpoint)

    def _decoder_factories(self) -> dict[str, Callable[[], Decoder]]:
        if self._decoders is not None:
            return self._decoders
        factories: dict[str, Callable[[], Decoder]] = {}
        available = self._catalogue.available()
        for alias in self.config.node.models:
            reason = available.get(alias, f"no model {alias!r} in the configuration")
            if reason is None:
                factories[alias] = decoder_factory(self._catalogue, alias, self.config.transcriber.inference_threads)
            else:
                self.unavailable[alias] = reason
                self._log.warning("node.model_unavailable", model=alias, reason=reason)
        return factories

    def _transcriber_spec(self, alias: str, factory: Callable[[], Decoder]) -> ChildSpec:
        threads = self.config.transcriber.inference_threads

        async def start(restarts: int) -> ActorRef:
            return await spawn(TranscriberActor(alias, factory, threads), f"transcriber:{alias}", restarts=restarts)

        return ChildSpec(f"transcriber:{alias}", start, Restart.PERMANENT, shutdown_s=10.0)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Take no new sessions, hand running ones back to their gateways (each at its next pause, all within
        `timeout_s`), then deregister and stop the tree. A session no gateway took back in time is ended."""
        timeout_s = self.config.node.drain_timeout_s if timeout_s is None else timeout_s
        await self.begin_drain(timeout_s)
        # The gateways need a moment past the deadline to place the last sessions elsewhere and close the links.
        if not await self._wait_for_no_sessions(timeout_s + self.config.server.placement_deadline_s):
            await self._end_running_sessions()
        await self.stop()

    async def begin_drain(self, timeout_s: float | None = None) -> None:
        """Stop taking sessions and start handing the running ones back (`dalston drain`; SIGTERM adds the stop)."""
        timeout_s = self.config.node.drain_timeout_s if timeout_s is None else timeout_s
        self.status = WorkerStatus.DRAINING
        if self._registered:
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.set_status(self.worker_id, WorkerStatus.DRAINING)
        if not self.handing_back.is_set():
            self.hand_back_by = time.monotonic() + timeout_s
            self.handing_back.set()
        self._log.info("node.draining", active_sessions=await self.active_sessions(), timeout_s=timeout_s)

    async def _wait_for_no_sessions(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while await self.active_sessions() > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def _end_running_sessions(self) -> None:
        """Past the drain bound: end the sessions as a client's `end` would, so their speech is finalised."""
        with contextlib.suppress(SpawnRefused):
            for child in await SupervisorHandle(await self._child(SESSIONS_ID)).which_children():
                if child.ref is not None:
                    with contextlib.suppress(ActorDead):
                        await child.ref.tell(End())
        await self._wait_for_no_sessions(10.0)

    async def wait_failed(self) -> ExitReason:
        """Wait until the node fails: its root supervisor exits on its own, or its id is taken (never, if healthy)."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def _root_exited(self, _ref: ActorRef, reason: ExitReason) -> None:
        if self._root is None:
            return  # stopped on purpose by `stop`
        self._log.error("node.root_supervisor_exited", reason=str(reason),
                        action="refusing sessions, leaving the registry, exiting non-zero")
        self._fail(reason)

    def _fail(self, reason: ExitReason) -> None:
        self.failure, self.status = reason, WorkerStatus.STOPPED
        self._failed.set()
        self._track(asyncio.get_running_loop().create_task(self._leave_registry()))

    async def _leave_registry(self) -> None:
        await self._stop_heartbeat()
        if self._registered:
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.deregister(self.worker_id)

    async def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            # The flag, not only the cancel: redis-py can swallow a CancelledError that lands mid-command
            # (redis/redis-py#2028), and the loop must end all the same.
            self._stopping.set()
            await cancel_and_wait(self._heartbeat)
            self._heartbeat = None

    async def stop(self) -> None:
        """Stop at once: sessions still running end with the tree (their clients are told by the link)."""
        await self._stop_heartbeat()
        if self._root is not None:
            root, self._root = self._root, None
            await root.stop()
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        with contextlib.suppress(RegistryUnavailable):
            if self._registered:
                await self.registry.deregister(self.worker_id)
        self._registered = False
        self.status = WorkerStatus.STOPPED
        self._log.info("node.stopped")

    async def _register(self) -> None:
        """(Re)register, bringing the sessions that still run here (after a reap or a Redis restart)."""
        info = WorkerInfo(self.worker_id, self.endpoint, self.capacity, self.models, self.instance)
        await self.registry.register(info, self.config.node.liveness_ttl_s, self._live_sessions)
        if self.status is WorkerStatus.DRAINING:
            await self.registry.set_status(self.worker_id, WorkerStatus.DRAINING)
        else:
            self.status = WorkerStatus.READY

    def _track(self, task: asyncio.Task[None]) -> None:
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _heartbeat_forever(self) -> None:
        """Renew liveness and the leases of the sessions running here (the registry reconciles the rest)."""
        interval, ttl_s = self.config.node.heartbeat_interval_s, self.config.node.liveness_ttl_s
        while not await _set_within(self._stopping, interval):
            try:
                if not await self.registry.heartbeat(self.worker_id, ttl_s, self._live_sessions, self.instance):
                    self._log.warning("node.reregistering", reason="the registry forgot this worker",
                                      live_sessions=len(self._live_sessions))
                    await self._register()
            except RegistryUnavailable as error:
                self._log.warning("node.registry_unavailable", error=str(error))
            except WorkerIdTaken as error:  # another process registered under this id while we were away
                self._log.error("node.worker_id_taken", error=str(error), action="exiting non-zero")
                self._registered = False  # the record is the other process's now
                self._fail(ExitReason("error", str(error)))
                return

    # -- sessions -----------------------------------------------------------------------------------------

    async def start_session(
        self, session_id: str, params: StreamParams, sink: EventSink, client_ip: str = "",
        resume: ResumeRecord | None = None,
    ) -> ActorRef:
        """Spawn a session actor as a temporary child of the sessions supervisor; `SpawnRefused` if not."""
        if self.failure is not None:
            raise SpawnRefused(ErrorCode.NO_CAPACITY,
                               f"worker {self.worker_id} failed: its supervision tree exited ({self.failure})")
        if self.status is not WorkerStatus.READY:
            raise SpawnRefused(ErrorCode.NO_CAPACITY, f"worker {self.worker_id} is {self.status}")
        if params.model not in self.models:
            raise SpawnRefused(ErrorCode.UNSUPPORTED_MODEL, f"model {params.model!r} is not loaded here")
        language = self._model_language(params.model)
        if language is not None and params.language not in ("auto", language):
            raise SpawnRefused(ErrorCode.UNSUPPORTED_MODEL,
                               f"model {params.model!r} only transcribes language {language!r}")
        transcriber = await self._child(f"transcriber:{params.model}")
        spec = self._session_spec(session_id, params, sink, transcriber, language, resume)
        try:
            ref = await SupervisorHandle(await self._child(SESSIONS_ID)).start_child(spec)
        except CapacityReached:
            raise SpawnRefused(ErrorCode.NO_CAPACITY, f"worker {self.worker_id} is full") from None
        except ActorDead:  # the sessions supervisor died while starting it: its parent is restarting it
            raise SpawnRefused(ErrorCode.NO_CAPACITY, f"worker {self.worker_id} is restarting sessions") from None
        self._live_sessions.add(session_id)
        ref.monitor(lambda _ref, _reason: self._release_later(session_id))
        return ref

    def _release_later(self, session_id: str) -> None:
        """Free the session's slot from this side too: a gateway that crashed never releases it.

        Release is idempotent, so the gateway's own release afterwards is harmless; one that fails is made
        good by the next heartbeat, which no longer lists the session.
        """
        self._live_sessions.discard(session_id)
        self._track(asyncio.get_running_loop().create_task(self._release(session_id)))

    async def _release(self, session_id: str) -> None:
        try:
            # Scoped to this worker: a session moved to another one (failover, drain) keeps its id there, and
            # that record must not end, even if the move lands while this release is under way.
            await self.registry.release(session_id, worker_id=self.worker_id)
        except RegistryUnavailable as error:
            self._log.warning("node.release_failed", session_id=session_id, error=str(error))

    def _session_spec(self, session_id: str, params: StreamParams, sink: EventSink, transcriber: ActorRef,
                      language: str | None, resume: ResumeRecord | None = None) -> ChildSpec:
        config = self.config

        async def find_transcriber() -> ActorRef | None:
            with contextlib.suppress(SpawnRefused):
                return await self._child(f"transcriber:{params.model}")
            return None

        async def start(restarts: int) -> ActorRef:
            actor = SessionActor(session_id, params, transcriber=transcriber, segmenter=new_segmenter(config.vad),
                                 sink=sink, limits=config.session, model_language=language,
                                 find_transcriber=find_transcriber, resume=resume)
            return await spawn(actor, f"session:{session_id}", mailbox_size=config.session.mailbox_size,
                               restarts=restarts)

        return ChildSpec(session_id, start, Restart.TEMPORARY, shutdown_s=5.0)

    def _model_language(self, alias: str) -> str | None:
        with contextlib.suppress(KeyError):
            return self._catalogue.spec(alias).language
        return None

    async def _child(self, child_id: str) -> ActorRef:
        if self._root is None or not self._root.ref.alive:
            raise SpawnRefused(ErrorCode.NO_CAPACITY, "worker is not running")
        try:
            children = await self._root.which_children()
        except ActorDead:
            raise SpawnRefused(ErrorCode.NO_CAPACITY, "worker is not running") from None
        for child in children:
            if child.id == child_id and child.ref is not None and child.ref.alive:
                return child.ref
        raise SpawnRefused(ErrorCode.INTERNAL_ERROR, f"{child_id} is restarting; try again")

    async def active_sessions(self) -> int:
        if self._root is None:
            return 0
        with contextlib.suppress(SpawnRefused):
            return (await SupervisorHandle(await self._child(SESSIONS_ID)).count_children()).active
        return 0

    # -- inspection ---------------------------------------------------------------------------------------

    async def tree(self) -> TreeNode | None:
        return None if self._root is None else await snapshot(self._root.ref)

    async def statistics(self) -> NodeStatistics:
        return NodeStatistics(self.worker_id, str(self.status), self.capacity, await self.active_sessions(),
                              self.models, dict(self.unavailable), round(time.monotonic() - self._started_at, 1))

    def describe(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "endpoint": self.endpoint, "capacity": self.capacity,
                "models": list(self.models), "status": str(self.status)}
