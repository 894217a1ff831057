"""One access log line per HTTP request, and per WebSocket session when it closes (the upgrade request lasts
as long as the session).

Only the method, the path (never the query string, which may carry `api_key`), the status, the duration, the
client address and, for a WebSocket, its close code are written: no header, so neither an API key nor the link
token reaches a log. Probes, scrapes and the operations page's own polling are logged at debug level, so a
load balancer checking every second does not drown the sessions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("dalston.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
POLLER_HEADER = "X-Dalston-Poller"  # set by the gateway's operations feed on what it fetches from workers
CLOSE_SENT = web.ResponseKey("close_code_sent", int)


async def close_websocket(ws: web.WebSocketResponse, code: int, message: bytes = b"") -> None:
    """Close with `code` and remember it for the access line (afterwards `ws.close_code` is the client's echo)."""
    ws.setdefault(CLOSE_SENT, int(code))
    await ws.close(code=code, message=message)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status, close_code = 500, None
    try:
        response = await handler(request)
        status = response.status
        if isinstance(response, web.WebSocketResponse):
            close_code = response.get(CLOSE_SENT, response.close_code)
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        quiet = request.path in QUIET_PATHS or POLLER_HEADER in request.headers
        fields = {"method": request.method, "path": request.path, "status": status,
                  "duration_ms": round(1000 * (time.monotonic() - started), 1), "remote": request.remote}
        if close_code is not None:
            fields["close_code"] = close_code
        event = "websocket.closed" if status == 101 else "http.request"
        (log.debug if quiet else log.info)(event, **fields)
        # Ids a handler bound (session, worker) belong to its request, not to the next one on this connection.
        structlog.contextvars.clear_contextvars()
