"""API keys on the gateway (DESIGN §11): from a header, or the query string / subprotocol for browsers.

With no keys configured every client is let in (and `dalston serve` then listens on loopback only), and
concurrency is bounded per client IP instead: a key a client makes up is not a bucket of its own. Sessions are
counted in the registry (`NodeRegistry.hold`), so a bound holds across every gateway; each hold lapses after a
TTL unless renewed, which this gateway does for its running sessions, so a dead gateway's holds come back.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from dalston.actors.cancellation import cancel_and_wait
from dalston.supervisor.cluster.registry import NodeRegistry, RegistryUnavailable
from dalston.web.credentials import same_secret

log = structlog.get_logger(__name__)

ANONYMOUS = "-"
SUBPROTOCOL_PREFIX = "dalston.key."


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], max_sessions_per_key: int, registry: NodeRegistry,
                 max_sessions_per_client_ip: int | None = None, hold_ttl_s: float = 10.0) -> None:
        self._keys = tuple(keys)
        self._max = max_sessions_per_key if keys else (max_sessions_per_client_ip or max_sessions_per_key)
        self._registry = registry
        self._hold_ttl_s = hold_ttl_s
        self._held: dict[str, str] = {}  # session id -> holder, for the sessions of this gateway
        self._renewing: asyncio.Task[None] | None = None

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def key_of(self, request: web.Request) -> str | None:
        """The key the client presented: `Authorization: Bearer`, `X-API-Key`, `?api_key=`, or a subprotocol."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):]
        for candidate in (request.headers.get("X-API-Key"), request.query.get("api_key")):
            if candidate:
                return candidate
        offered = self.subprotocol(request)
        if offered is not None:
            return offered[len(SUBPROTOCOL_PREFIX):]
        return None if self.required else ANONYMOUS

    def authorized(self, key: str | None) -> bool:
        if not self.required:
            return True
        return any(same_secret(key, expected) for expected in self._keys)

    def subprotocol(self, request: web.Request) -> str | None:
        """The `dalston.key.*` subprotocol the client offered, which the handshake must echo (browsers insist)."""
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if protocol.strip().startswith(SUBPROTOCOL_PREFIX):
                return protocol.strip()
        return None

    def holder(self, key: str | None, client_ip: str) -> str:
        """What a session is counted against: its (authorized) key, or with no keys configured its client IP."""
        return (key or ANONYMOUS) if self.required else f"ip:{client_ip}"

    async def acquire(self, holder: str, session_id: str) -> bool:
        """Count the session against its holder, cluster-wide; False at the bound (`RegistryUnavailable`)."""
        if not await self._registry.hold(holder, session_id, self._max, self._hold_ttl_s):
            return False
        self._held[session_id] = holder
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_while_held())
        return True

    async def release(self, holder: str, session_id: str) -> None:
        """Give the hold back; if the registry is unreachable now, it lapses within its TTL."""
        self._held.pop(session_id, None)
        try:
            await self._registry.unhold(holder, session_id)
        except RegistryUnavailable as error:
            log.warning("auth.unhold_failed", error=str(error), lapses_in_s=self._hold_ttl_s)

    async def _renew_while_held(self) -> None:
        """Hold this gateway's sessions again before they lapse; ends when it has none (no idle task)."""
        while self._held:
            await asyncio.sleep(self._hold_ttl_s / 3)
            for session_id, holder in list(self._held.items()):
                try:
                    await self._registry.hold(holder, session_id, self._max, self._hold_ttl_s)
                except RegistryUnavailable as error:
                    log.warning("auth.renew_failed", error=str(error))
                    break

    async def close(self) -> None:
        if self._renewing is not None:
            await cancel_and_wait(self._renewing)

    def holders(self) -> int:
        """How many sessions of this gateway are counted against a holder now."""
        return len(self._held)
