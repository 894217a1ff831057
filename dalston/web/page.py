"""The browser page (live captions from the microphone): `/` and its files under `/static/`.

The page is plain files with no build step and nothing fetched from elsewhere, so it works on a machine
without internet. It needs a secure context for the microphone: https, or http on localhost/127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"


def add_page_routes(app: web.Application) -> None:
    """Serve the page at `/` and its scripts and styles at `/static/`."""
    app.router.add_get("/", _index_handler)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)


async def _index_handler(request: web.Request) -> web.FileResponse:
    # no-cache: a browser keeps no stale page across upgrades of the server (it still revalidates by ETag)
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
