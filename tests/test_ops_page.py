"""The operations page (`/ops`) in a real headless Chromium, fed live by a real gateway and worker node.

The gateway and the node run in this process on a loop of their own (a thread), so the test can start and end a
session as a client would and also kill the node's model actor, as a crash would; the node has the real VAD and
a fake decoder at the model interface. The page must show each change by itself (server-sent events).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from cluster_fixtures import load_clip, next_event
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_metrics import running_worker

from dalston.config import load_config
from dalston.supervisor.cluster.memory_registry import MemoryRegistry
from dalston.supervisor.cluster.node import WorkerNode
from dalston.web.client import StreamClient
from dalston.web.gateway import STREAM_PATH, create_gateway_app
from dalston.web.server import start_site

if TYPE_CHECKING:
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WAIT_S = 30.0
T = TypeVar("T")


class BackgroundCluster:
    """A gateway and one node (worker id `w1`) serving on loopback from a loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ops-cluster", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.node: WorkerNode | None = None
        self.port = 0

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = WAIT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        registry = MemoryRegistry()
        self.node, _ = await self._stack.enter_async_context(running_worker(registry))
        runner, self.port = await start_site(create_gateway_app(load_config(environ={}), registry), "127.0.0.1", 0)
        self._stack.push_async_callback(runner.cleanup)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def kill_model_actor(self) -> None:
        assert self.node is not None
        ref = await self.node._child("transcriber:fast")
        await ref.kill()


@pytest.fixture
def cluster() -> Iterator[BackgroundCluster]:
    cluster = BackgroundCluster()
    cluster.start()
    yield cluster
    cluster.stop()


class LiveSession:
    """A client session that has heard a second of speech and stays open until `end()`."""

    def __init__(self, url: str) -> None:
        self.client = StreamClient(url)
        self.session_id = ""

    async def open(self) -> str:
        await self.client.__aenter__()
        begin = await next_event(self.client)
        assert begin is not None and begin["type"] == "session.begin"
        self.session_id = begin["session_id"]
        await self.client.send_pcm(load_clip("0880").samples[:16000], speed=0, end=False)
        return self.session_id

    async def end(self) -> list[dict[str, Any]]:
        await self.client.end()
        events = [event async for event in self.client.events()]
        await self.client.__aexit__(None, None, None)
        return events


def wait_for(driver: WebDriver, what: str, condition: Any) -> Any:
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition)
    except TimeoutException:
        console = [entry["message"] for entry in driver.get_log("browser")]
        pytest.fail(f"timed out waiting for {what}\npage:\n{driver.find_element(By.TAG_NAME, 'body').text}\n"
                    f"console: {console}")


def elements(driver: WebDriver, css: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, css)


def test_the_ops_page_shows_a_session_while_it_lives_and_a_restarted_actors_count(
    browser: WebDriver, cluster: BackgroundCluster,
) -> None:
    browser.get(f"http://127.0.0.1:{cluster.port}/ops")
    wait_for(browser, "the feed to go live", lambda d: d.find_element(By.ID, "feed").get_attribute("data-state")
             == "live")
    wait_for(browser, "the worker row", lambda d: elements(d, 'tr[data-worker-id="w1"]'))
    assert "ready" in elements(browser, 'tr[data-worker-id="w1"]')[0].text

    session = LiveSession(f"ws://127.0.0.1:{cluster.port}{STREAM_PATH}")
    session_id = cluster.run(session.open())
    row = wait_for(browser, "the session's row", lambda d: elements(d, f'tr[data-session-id="{session_id}"]'))
    assert "w1" in row[0].text and "fast" in row[0].text
    wait_for(browser, "the session's actor in the tree", lambda d: elements(d, f'li[data-actor-id="{session_id}"]'))
    events = cluster.run(session.end())
    assert events[-1]["type"] == "session.end"
    wait_for(browser, "the session's row to go", lambda d: not elements(d, f'tr[data-session-id="{session_id}"]'))
    wait_for(browser, "the session's actor to leave the tree",
             lambda d: not elements(d, f'li[data-actor-id="{session_id}"]'))

    restarts = 'li[data-actor-id="transcriber:fast"] > .restarts'
    assert elements(browser, restarts)[0].get_attribute("data-count") == "0"
    cluster.run(cluster.kill_model_actor())
    wait_for(browser, "the model actor's restart count to rise",
             lambda d: [e.get_attribute("data-count") for e in elements(d, restarts)] == ["1"])
    model_row = elements(browser, 'tr[data-model-actor="w1/transcriber:fast"] .restarts')
    assert model_row and model_row[0].text == "1"
