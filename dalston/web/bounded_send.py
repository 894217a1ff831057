"""One WebSocket write bounded in time: the gateway's writes to clients and the worker's writes to gateways.

A peer that stops reading fills the kernel's buffers, then aiohttp's, and a write then waits for ever. The
caller decides what a write that did not go out in time means (a slow consumer, a gateway cut off).
"""

from __future__ import annotations

import asyncio

from aiohttp import web


async def send_text_within(ws: web.WebSocketResponse, text: str, timeout_s: float) -> bool:
    """Send `text`; False if it did not go out within `timeout_s`. A closed or reset connection counts as
    sent: its peer is gone, and whoever owns it is already ending."""
    if ws.closed:
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await ws.send_str(text)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True
