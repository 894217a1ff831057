"""API keys on the gateway (DESIGN §11): from a header, or the query string / subprotocol for browsers.

With no keys configured every client is let in (and `dalston serve` then listens on loopback only).
Per-key concurrency is counted here, in the gateway process; with several gateways the bound is per gateway.
"""

from __future__ import annotations

import hmac
from collections import Counter

from aiohttp import web

ANONYMOUS = "-"
SUBPROTOCOL_PREFIX = "dalston.key."


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], max_sessions_per_key: int) -> None:
        self._keys = tuple(keys)
        self._max = max_sessions_per_key
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
        for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if protocol.strip().startswith(SUBPROTOCOL_PREFIX):
                return protocol.strip()[len(SUBPROTOCOL_PREFIX):]
        return None if self.required else ANONYMOUS

    def authorized(self, key: str | None) -> bool:
        if not self.required:
            return True
        return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in self._keys)

    def acquire(self, key: str | None) -> bool:
        name = key or ANONYMOUS
        if self._active[name] >= self._max:
            return False
        self._active[name] += 1
        return True

    def release(self, key: str | None) -> None:
        name = key or ANONYMOUS
        if self._active[name] > 0:
            self._active[name] -= 1
