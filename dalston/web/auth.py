"""API keys on the gateway (DESIGN §11): from a header, or the query string / subprotocol for browsers.

With no keys configured every client is let in (and `dalston serve` then listens on loopback only), and
concurrency is bounded per client IP instead: a key a client makes up is not a bucket of its own. Counts live in
the gateway process (with several gateways the bound is per gateway) and entries at zero are dropped, so the
table is as large as the number of clients connected now.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from dalston.web.credentials import same_secret

ANONYMOUS = "-"
SUBPROTOCOL_PREFIX = "dalston.key."


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], max_sessions_per_key: int,
                 max_sessions_per_client_ip: int | None = None) -> None:
        self._keys = tuple(keys)
        self._max = max_sessions_per_key if keys else (max_sessions_per_client_ip or max_sessions_per_key)
        self._active: Counter[str] = Counter()

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

    def acquire(self, holder: str) -> bool:
        if self._active[holder] >= self._max:
            return False
        self._active[holder] += 1
        return True

    def release(self, holder: str) -> None:
        if self._active[holder] > 1:
            self._active[holder] -= 1
        else:
            self._active.pop(holder, None)

    def holders(self) -> int:
        """How many keys (or client IPs) hold sessions now."""
        return len(self._active)
