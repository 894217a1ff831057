"""`RedisRegistry`: the registry shared by many gateways and workers through one Redis.

Each mutation is one Lua script (see `registry_lua`), so two gateways acquiring at once can never over-fill a
worker, and a heartbeat can never clobber the session count. Reads (listing workers and sessions) are
pipelined plain commands; they are for operators and may see a moment between two scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from dalston.supervisor import registry_lua
from dalston.supervisor.registry import (
    DEFAULT_ENDED_SESSION_TTL_S,
    DEFAULT_PREFIX,
    Allocation,
    NodeRegistry,
    RegistryUnavailable,
    SessionExists,
    SessionInfo,
    SessionRecord,
    SessionStatus,
    WorkerInfo,
    WorkerRecord,
    WorkerStatus,
    check_status,
)

_ACQUIRE_SESSION_EXISTS = -1


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RegistryUnavailable(str(exc)) from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(mapping: Mapping[object, object]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _stamp(now: float) -> str:
    return repr(float(now))


def _worker_record(worker_id: str, fields: dict[str, str], alive: bool) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        endpoint=fields.get("endpoint", ""),
        status=WorkerStatus(fields.get("status", WorkerStatus.STOPPED)),
        capacity=int(fields.get("capacity", 0)),
        active_sessions=int(fields.get("active_sessions", 0)),
        models=tuple(json.loads(fields.get("models_loaded", "[]"))),
        started_at=float(fields.get("started_at", 0.0)),
        last_heartbeat=float(fields.get("last_heartbeat", 0.0)),
        alive=alive,
    )


def _session_record(session_id: str, fields: dict[str, str]) -> SessionRecord:
    ended_at = fields.get("ended_at", "")
    return SessionRecord(
        session_id=session_id,
        worker_id=fields["worker_id"],
        status=SessionStatus(fields["status"]),
        model=fields.get("model", ""),
        language=fields.get("language", ""),
        client_ip=fields.get("client_ip", ""),
        started_at=float(fields.get("started_at", 0.0)),
        ended_at=float(ended_at) if ended_at else None,
    )


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisRegistry(NodeRegistry):
    """A `NodeRegistry` on Redis. `clock` stamps the times stored in hashes; liveness uses Redis TTLs."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ended_session_ttl_s: float = DEFAULT_ENDED_SESSION_TTL_S,
        clock: Callable[[], float] = time.time,
        owns_client: bool = False,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._ended_ttl_ms = _ms(ended_session_ttl_s)
        self._clock = clock
        self._owns_client = owns_client
        # register_script: EVALSHA, falling back to loading the script (e.g. after a Redis restart).
        self._register = client.register_script(registry_lua.REGISTER)
        self._heartbeat = client.register_script(registry_lua.HEARTBEAT)
        self._set_status = client.register_script(registry_lua.SET_STATUS)
        self._deregister = client.register_script(registry_lua.DEREGISTER)
        self._acquire = client.register_script(registry_lua.ACQUIRE)
        self._release = client.register_script(registry_lua.RELEASE)
        self._reap = client.register_script(registry_lua.REAP)

    @classmethod
    def from_url(cls, url: str, **options: object) -> RedisRegistry:
        """A registry with its own client on `url`; `close()` closes that client."""
        client = aioredis.Redis.from_url(url, decode_responses=True)
        return cls(client, owns_client=True, **options)  # type: ignore[arg-type]

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _run(self, script: AsyncScript, *args: object) -> object:
        with _unavailable_on_connection_errors():
            return await script(keys=[], args=[self._prefix, *args])

    async def register(self, worker: WorkerInfo, liveness_ttl_s: float) -> None:
        now = _stamp(self._clock())
        models = json.dumps(list(worker.models))
        await self._run(
            self._register,
            worker.worker_id,
            worker.endpoint,
            worker.capacity,
            models,
            now,
            _ms(liveness_ttl_s),
            self._ended_ttl_ms,
        )

    async def heartbeat(self, worker_id: str, liveness_ttl_s: float) -> bool:
        now = _stamp(self._clock())
        return bool(await self._run(self._heartbeat, worker_id, now, _ms(liveness_ttl_s)))

    async def set_status(self, worker_id: str, status: str) -> bool:
        return bool(await self._run(self._set_status, worker_id, check_status(status).value))

    async def deregister(self, worker_id: str) -> bool:
        now = _stamp(self._clock())
        return bool(await self._run(self._deregister, worker_id, now, self._ended_ttl_ms))

    async def acquire(self, session: SessionInfo, exclude: frozenset[str] = frozenset()) -> Allocation | None:
        now = _stamp(self._clock())
        result = await self._run(
            self._acquire,
            session.session_id,
            session.model,
            session.language,
            session.client_ip,
            now,
            *sorted(exclude),
        )
        if result is None:
            return None
        if result == _ACQUIRE_SESSION_EXISTS:
            raise SessionExists(session.session_id)
        worker_id, endpoint = (_text(part) for part in result)  # type: ignore[union-attr]
        return Allocation(session_id=session.session_id, worker_id=worker_id, endpoint=endpoint)

    async def release(self, session_id: str) -> bool:
        now = _stamp(self._clock())
        return bool(await self._run(self._release, session_id, now, self._ended_ttl_ms))

    async def reap(self) -> list[str]:
        now = _stamp(self._clock())
        reaped = await self._run(self._reap, now, self._ended_ttl_ms)
        return [_text(worker_id) for worker_id in reaped]  # type: ignore[union-attr]

    async def list_workers(self) -> list[WorkerRecord]:
        with _unavailable_on_connection_errors():
            ids = sorted(_text(i) for i in await self._redis.smembers(self._key("workers")))
            pipe = self._redis.pipeline(transaction=False)
            for worker_id in ids:
                pipe.hgetall(self._key("worker", worker_id))
                pipe.exists(self._key("worker", worker_id, "alive"))
            replies = await pipe.execute()
        records = []
        for worker_id, fields, alive in zip(ids, replies[::2], replies[1::2], strict=True):
            if fields:  # the worker may have been removed between the two round trips
                records.append(_worker_record(worker_id, _texts(fields), bool(alive)))
        return records

    async def get_session(self, session_id: str) -> SessionRecord | None:
        with _unavailable_on_connection_errors():
            fields = await self._redis.hgetall(self._key("session", session_id))
        return _session_record(session_id, _texts(fields)) if fields else None

    async def list_sessions(self, active_only: bool = True) -> list[SessionRecord]:
        with _unavailable_on_connection_errors():
            ids = await (self._active_session_ids() if active_only else self._all_session_ids())
            pipe = self._redis.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(self._key("session", session_id))
            replies = await pipe.execute()
        records = [_session_record(sid, _texts(f)) for sid, f in zip(ids, replies, strict=True) if f]
        if active_only:
            records = [r for r in records if r.status is SessionStatus.ACTIVE]
        return records

    async def _active_session_ids(self) -> list[str]:
        worker_ids = [_text(i) for i in await self._redis.smembers(self._key("workers"))]
        pipe = self._redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.smembers(self._key("worker", worker_id, "sessions"))
        return sorted(_text(sid) for members in await pipe.execute() for sid in members)

    async def _all_session_ids(self) -> list[str]:
        pattern = _glob_escape(self._key("session", "")) + "*"
        start = len(self._key("session", ""))
        return sorted([_text(key)[start:] async for key in self._redis.scan_iter(match=pattern, count=500)])

    async def free_slots(self, model: str) -> dict[str, int]:
        with _unavailable_on_connection_errors():
            entries = await self._redis.zrange(self._key("free", model), 0, -1, withscores=True)
        return {_text(worker_id): int(score) for worker_id, score in entries}

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
