"""Transport options (issue 10): TLS on the gateway and wss:// worker links, and the handshake timeout.

The certificate is made in the test with the `openssl` command (a self-signed one for 127.0.0.1, which both the
gateway and the worker serve, and which the client and the gateway's link trust).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cluster_fixtures import ProcessGroup, load_clip, of_type, stream_to_end

from dalston.config import load_config
from dalston.web.client import StreamClient
from dalston.web.server import start_site

pytestmark = pytest.mark.slow


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=dalston-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


async def wait_ready_https(url: str, tls: ssl.SSLContext, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url, ssl=tls) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"{url} was not ready within {timeout_s} s")


async def test_a_session_runs_over_wss_end_to_end_with_a_wss_link_to_the_worker(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls_env = {"DALSTON_SERVER_TLS_CERT_FILE": str(cert), "DALSTON_SERVER_TLS_KEY_FILE": str(key),
               "DALSTON_NODE_TLS_CERT_FILE": str(cert), "DALSTON_NODE_TLS_KEY_FILE": str(key),
               "DALSTON_SERVER_LINK_CA_FILE": str(cert)}
    group = ProcessGroup(tmp_path)
    serve = group.start_serve(capacity=1, env=tls_env)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        await wait_ready_https(f"https://127.0.0.1:{serve.port}/readyz", trust)
        clip = load_clip("0880")
        async with StreamClient(f"wss://127.0.0.1:{serve.port}/v1/audio/transcriptions/stream", tls=trust) as stream:
            events = await stream_to_end(stream, clip.samples, speed=0)
        assert of_type(events, "transcript.final") and events[-1]["type"] == "session.end", events[-3:]
        assert "wss://127.0.0.1:" in serve.log_path.read_text()  # the worker advertised its wss:// link
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # and nobody is let in untrusted
            async with StreamClient(f"wss://127.0.0.1:{serve.port}/v1/audio/transcriptions/stream"):
                pass
    finally:
        group.stop_all()


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_handshake_timeout_but_a_session_is_not(
) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", echo)
    runner, port = await start_site(app, "127.0.0.1", 0, handshake_timeout_s=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):  # a bound: without the timeout it stays open for ever
            assert await reader.read() == b""  # closed by the server, having said nothing
        writer.close()
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/echo") as ws:
            await asyncio.sleep(1.5)  # three handshake timeouts into a live session
            await ws.send_str("still here")
            assert (await ws.receive(timeout=5)).data == "still here"
    finally:
        await runner.cleanup()


def test_the_default_configuration_has_a_handshake_timeout() -> None:
    assert 0 < load_config(environ={}).server.handshake_timeout_s <= 30
