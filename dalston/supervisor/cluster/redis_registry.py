"""`RedisRegistry`: the registry shared by many gateways and workers through one Redis.

Each mutation is one Lua script (see `registry_lua` for the keys and the scripts), so two gateways acquiring
at once can never over-fill a worker, and a heartbeat reconciles the session count instead of clobbering it.
Every key sits under one hash tag and every script declares the keys it touches, so it runs on Redis Cluster
too. Deadlines (liveness, leases, suspicion, ended-record expiry) are taken from Redis's own clock; `clock`
only stamps the times shown to operators. Reads (listing workers and sessions) are pipelined plain commands;
they are for operators and may see a moment between two scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from dalston.supervisor.cluster import holds, registry_lua
from dalston.supervisor.cluster.redis_connect import DEFAULT_SOCKET_TIMEOUT_S, RedisConnection, connect
from dalston.supervisor.cluster.registry import (
    DEFAULT_ENDED_SESSION_TTL_S,
    DEFAULT_LEASE_TTL_S,
    DEFAULT_PREFIX,
    Allocation,
    ModelAvailability,
    NodeRegistry,
    RegistryError,
    RegistryUnavailable,
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

# New models met while a script runs: the script is called again with them (rare: a model's first worker).
_MODEL_ROUNDS = 4


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError) as exc:
        # ReadOnlyError: a primary just demoted to replica during a Sentinel failover; retrying later works.
        raise RegistryUnavailable(str(exc)) from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _stamp(now: float) -> str:
    return repr(float(now))


def _list(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else ()  # cjson writes an empty list as {}


def hash_tagged(prefix: str) -> str:
    """The key prefix with one Redis Cluster hash tag: `prefix` in braces, unless it already has a tag."""
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening) > opening + 1:
        return prefix
    return "{" + prefix + "}"


def _worker_record(worker_id: str, raw: str, alive: bool) -> WorkerRecord:
    fields = json.loads(raw)
    return WorkerRecord(
        worker_id=worker_id,
        endpoint=fields["endpoint"],
        status=WorkerStatus(fields["status"]),
        capacity=int(fields["capacity"]),
        active_sessions=int(fields["active"]),
        models=_list(fields["models"]),
        started_at=float(fields["started_at"]),
        last_heartbeat=float(fields["last_heartbeat"]),
        alive=alive,
    )


def _session_record(session_id: str, raw: str) -> SessionRecord:
    fields = json.loads(raw)
    ended_at = fields.get("ended_at", "")
    return SessionRecord(
        session_id=session_id,
        worker_id=fields["worker_id"],
        status=SessionStatus(fields["status"]),
        model=fields.get("model", ""),
        language=fields.get("language", ""),
        client_ip=fields.get("client_ip", ""),
        started_at=float(fields.get("started_at") or 0.0),
        ended_at=float(ended_at) if ended_at else None,
    )


class RedisRegistry(NodeRegistry):
    """A `NodeRegistry` on Redis. `lease_ttl_s`: how long a session's slot is held without its worker's word.

    `check_keys` (tests) runs every script in a variant that fails on any key it was not given in KEYS.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ended_session_ttl_s: float = DEFAULT_ENDED_SESSION_TTL_S,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
        connection: RedisConnection | None = None,
        owns_client: bool = False,
        check_keys: bool = False,
    ) -> None:
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")
        self._redis = client
        self._prefix = prefix
        self._tag = hash_tagged(prefix)
        self._ended_ttl_ms = _ms(ended_session_ttl_s)
        self._lease_ms = _ms(lease_ttl_s)
        self._clock = clock
        self._connection = connection
        self._owns_client = owns_client
        self._fixed_keys = [self._tag + name for name in registry_lua.FIXED_KEYS]
        self._models: set[str] = set()  # the models this client declares to every script (only grows)

        def script(source: str) -> AsyncScript:
            # register_script: EVALSHA, falling back to loading the script (e.g. after a Redis restart).
            return client.register_script(registry_lua.key_checked(source) if check_keys else source)

        self._register = script(registry_lua.REGISTER)
        self._heartbeat = script(registry_lua.HEARTBEAT)
        self._set_status = script(registry_lua.SET_STATUS)
        self._deregister = script(registry_lua.DEREGISTER)
        self._acquire = script(registry_lua.ACQUIRE)
        self._release = script(registry_lua.RELEASE)
        self._reinstate = script(registry_lua.REINSTATE)
        self._mark_suspect = script(registry_lua.MARK_SUSPECT)
        self._reap = script(registry_lua.REAP)
        self._models_script = script(registry_lua.MODELS)
        self._hold = client.register_script(holds.HOLD)
        self._unhold = client.register_script(holds.UNHOLD)

    @classmethod
    def from_url(cls, url: str, *, socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
                 **options: object) -> RedisRegistry:
        """A registry with its own client on `url` (`redis://` or `redis+sentinel://`); `close()` closes it.

        A call Redis does not answer within `socket_timeout_s` raises `RegistryUnavailable`.
        """
        connection = connect(url, socket_timeout_s=socket_timeout_s)
        return cls(connection.client, connection=connection, owns_client=True, **options)  # type: ignore[arg-type]

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, name: str) -> str:
        """The full name of one of the registry's keys (`workers`, `free:fast`, ...: see `registry_lua`)."""
        return self._tag + name

    async def _run(self, script: AsyncScript, *args: object) -> list[object]:
        """Run `script` with every key declared; again with the models it reports missing, if any."""
        for _ in range(_MODEL_ROUNDS):
            models = sorted(self._models)
            keys = [*self._fixed_keys, *(self.key(f"free:{m}") for m in models)]
            with _unavailable_on_connection_errors():
                reply = await script(keys=keys, args=[len(models), *models, *args])
            status, *rest = reply  # type: ignore[misc]
            if _text(status) != "missing":
                return [_text(status), *rest]
            self._models.update(_text(m) for m in rest)
        raise RegistryError("the registry's models kept changing while a script ran")

    async def register(self, worker: WorkerInfo, liveness_ttl_s: float, live_sessions: Collection[str] = ()) -> None:
        self._models.update(worker.models)
        now = _stamp(self._clock())
        status, *_ = await self._run(
            self._register, worker.worker_id, worker.endpoint, worker.capacity, json.dumps(list(worker.models)),
            worker.instance, now, _ms(liveness_ttl_s), self._ended_ttl_ms, self._lease_ms, *sorted(live_sessions),
        )
        if status == "taken":
            raise WorkerIdTaken(worker.worker_id)

    async def heartbeat(self, worker_id: str, liveness_ttl_s: float, live_sessions: Collection[str] = (),
                        instance: str = "") -> bool:
        now = _stamp(self._clock())
        status, *_ = await self._run(
            self._heartbeat, worker_id, now, _ms(liveness_ttl_s), instance, self._lease_ms, self._ended_ttl_ms,
            *sorted(live_sessions),
        )
        return status == "ok"

    async def set_status(self, worker_id: str, status: str) -> bool:
        reply, *_ = await self._run(self._set_status, worker_id, check_status(status).value)
        return reply == "ok"

    async def deregister(self, worker_id: str) -> bool:
        now = _stamp(self._clock())
        status, *_ = await self._run(self._deregister, worker_id, now, self._ended_ttl_ms)
        return status == "ok"

    async def acquire(self, session: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        now = _stamp(self._clock())
        status, *rest = await self._run(
            self._acquire, session.session_id, session.model, session.language, session.client_ip, now,
            self._lease_ms, *sorted(exclude),
        )
        if status == "exists":
            raise SessionExists(session.session_id)
        if status != "ok":
            return None
        worker_id, endpoint = (_text(part) for part in rest)
        return Allocation(session_id=session.session_id, worker_id=worker_id, endpoint=endpoint)

    async def release(self, session_id: str, worker_id: str | None = None) -> bool:
        now = _stamp(self._clock())
        _, ended = await self._run(self._release, session_id, now, self._ended_ttl_ms, worker_id or "")
        return bool(ended)

    async def reinstate(self, session: SessionInfo, worker_id: str) -> bool:
        now = _stamp(self._clock())
        _, done = await self._run(self._reinstate, session.session_id, worker_id, session.model, session.language,
                                  session.client_ip, now, self._lease_ms)
        return bool(done)

    async def mark_suspect(self, worker_id: str, for_s: float) -> None:
        await self._run(self._mark_suspect, worker_id, _ms(for_s))

    async def hold(self, holder: str, session_id: str, limit: int, ttl_s: float) -> bool:
        with _unavailable_on_connection_errors():
            return bool(await self._hold(keys=[holds.holder_key(self._tag, holder)],
                                         args=[session_id, limit, _ms(ttl_s)]))

    async def unhold(self, holder: str, session_id: str) -> None:
        with _unavailable_on_connection_errors():
            await self._unhold(keys=[holds.holder_key(self._tag, holder)], args=[session_id])

    async def models(self) -> ModelAvailability:
        _, known, ready = await self._run(self._models_script)
        return ModelAvailability(frozenset(_list(json.loads(_text(known)))),
                                 frozenset(_list(json.loads(_text(ready)))))

    async def reap(self) -> list[str]:
        now = _stamp(self._clock())
        _, *reaped = await self._run(self._reap, now, self._ended_ttl_ms)
        return sorted(_text(worker_id) for worker_id in reaped)

    async def _now_ms(self) -> int:
        # Redis's clock, as the scripts use; its own round trip (Redis Cluster refuses TIME in a pipeline).
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def list_workers(self) -> list[WorkerRecord]:
        with _unavailable_on_connection_errors():
            now_ms = await self._now_ms()
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self.key("workers")).zrange(self.key("alive"), 0, -1, withscores=True)
            workers, deadlines = await pipe.execute()
        alive = {_text(wid): score > now_ms for wid, score in deadlines}
        return [_worker_record(wid, raw, alive.get(wid, False)) for wid, raw in sorted(_texts(workers).items())]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        with _unavailable_on_connection_errors():
            now_ms = await self._now_ms()
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self.key("sessions"), session_id).zscore(self.key("ended"), session_id)
            raw, expires_ms = await pipe.execute()
        if raw is None or (expires_ms is not None and expires_ms <= now_ms):
            return None  # an ended record past its time, not yet dropped
        return _session_record(session_id, _text(raw))

    async def list_sessions(self, active_only: bool = True) -> list[SessionRecord]:
        if active_only:
            return await self._active_sessions()
        with _unavailable_on_connection_errors():
            now_ms = await self._now_ms()
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self.key("sessions")).zrange(self.key("ended"), 0, -1, withscores=True)
            sessions, ended = await pipe.execute()
        gone = {_text(sid) for sid, expires_ms in ended if expires_ms <= now_ms}
        return [_session_record(sid, raw) for sid, raw in sorted(_texts(sessions).items()) if sid not in gone]

    async def _active_sessions(self) -> list[SessionRecord]:
        # From the leases (active sessions only): the ended records of the last hour are not read.
        with _unavailable_on_connection_errors():
            ids = sorted(_text(sid) for sid in await self._redis.zrange(self.key("leases"), 0, -1))
            raws = await self._redis.hmget(self.key("sessions"), ids) if ids else []
        records = [_session_record(sid, _text(raw)) for sid, raw in zip(ids, raws, strict=True) if raw is not None]
        return [r for r in records if r.status is SessionStatus.ACTIVE]  # one may have ended in between

    async def free_slots(self, model: str) -> dict[str, int]:
        with _unavailable_on_connection_errors():
            entries = await self._redis.zrange(self.key(f"free:{model}"), 0, -1, withscores=True)
        return {_text(worker_id): int(score) for worker_id, score in entries}

    async def close(self) -> None:
        if self._owns_client:
            if self._connection is not None:
                await self._connection.aclose()
            else:
                await self._redis.aclose()


def _texts(mapping: Mapping[object, object]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}
