"""The live-captions page in a real headless Chromium against a real `dalston serve` (DESIGN §1: a browser
client). The browser's fake microphone plays a LibriVox clip, so the whole path runs: getUserMedia, the
AudioWorklet's 16 kHz PCM, the WebSocket, the real tiny.en model, and the captions on the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

if TYPE_CHECKING:  # a plugin (tests/conftest.py); importing it here first would stop pytest rewriting its asserts
    from browser_fixtures import DalstonServer

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WAIT_S = 60.0
# Words of the clip ("and mister john dashwood had then leisure to consider how much there might be
# prudently in his power to do for them") that a model would not produce by chance.
DISTINCTIVE_WORDS = frozenset({"dashwood", "leisure", "consider", "prudently", "power"})
ENOUGH_WORDS = 3


def words_of(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def caption_text(driver: WebDriver) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "#finals .text"))


def wait_for(driver: WebDriver, server: DalstonServer, what: str, condition: Callable[[WebDriver], object]) -> None:
    """Wait (bounded) until `condition` holds; on a timeout, fail with what the page and the server showed."""
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(condition)
    except TimeoutException:
        page = {name: driver.find_element(By.ID, name).text for name in ("status", "error", "finals", "partial")}
        console = [entry["message"] for entry in driver.get_log("browser")]
        pytest.fail(f"timed out waiting for {what}\npage: {page}\nconsole: {console}\nserver:\n{server.log_tail()}")


# Renders a tone offline through the page's worklet and returns the 16 kHz PCM it posted.
ENCODE_TONE_JS = """
const [rate, frequency, done] = arguments;
(async () => {
  const context = new OfflineAudioContext(1, rate, rate);
  await context.audioWorklet.addModule("/static/pcm-worklet.js");
  const tone = new OscillatorNode(context, {frequency});
  const encoder = new AudioWorkletNode(context, "pcm-encoder",
    {numberOfOutputs: 0, processorOptions: {targetRate: 16000, frameMs: 100}});
  tone.connect(new GainNode(context, {gain: 0.5})).connect(encoder);
  tone.start();
  const samples = [];
  const flushed = new Promise((resolve) => {
    encoder.port.onmessage = (e) => e.data === "flushed" ? resolve() : samples.push(...new Int16Array(e.data));
  });
  await context.startRendering();
  encoder.port.postMessage("flush");
  await flushed;
  done(samples);
})().catch((error) => done(String(error)));
"""


def tone_level_db(driver: WebDriver, rate: int, frequency_hz: float) -> float:
    """The level of one second of a half-scale tone after the worklet, relative to the tone's own level."""
    samples = driver.execute_async_script(ENCODE_TONE_JS, rate, frequency_hz)
    assert isinstance(samples, list), samples
    assert abs(len(samples) - 16000) <= 128  # one second in, one second out (less the kernel's delay)
    steady = np.asarray(samples[1600:-1600], dtype=np.float64) / 32768
    return 20 * np.log10(max(np.sqrt(np.mean(steady**2)), 1e-9) / (0.5 / np.sqrt(2)))


def open_page(driver: WebDriver, server: DalstonServer, query: str = "") -> None:
    driver.get(server.page_url + query)
    assert driver.find_element(By.ID, "start").is_enabled()
    assert not driver.find_element(By.ID, "stop").is_enabled()


# At 16 kHz the browser resamples the microphone; at 44.1 kHz the page's worklet does (a fractional ratio).
@pytest.mark.parametrize("context_rate", ["16000", "44100"])
def test_speech_into_the_microphone_appears_as_captions_and_stop_shows_the_transcript(
    browser: WebDriver, dalston_server: DalstonServer, context_rate: str
) -> None:
    open_page(browser, dalston_server, "" if context_rate == "16000" else f"?context_rate={context_rate}")
    browser.find_element(By.ID, "start").click()
    wait_for(browser, dalston_server, "captions with the clip's words",
             lambda d: len(words_of(caption_text(d)) & DISTINCTIVE_WORDS) >= ENOUGH_WORDS)

    browser.find_element(By.ID, "stop").click()
    wait_for(browser, dalston_server, "the session to end",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ended")
    transcript = browser.find_element(By.ID, "transcript").text
    assert len(words_of(transcript) & DISTINCTIVE_WORDS) >= ENOUGH_WORDS, transcript
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "start").is_enabled()
    assert browser.find_element(By.ID, "status").get_attribute("data-context-rate") == context_rate


def test_a_server_that_requires_a_key_shows_unauthorized_when_the_page_gives_none(
    browser: WebDriver, dalston_server_with_keys: DalstonServer
) -> None:
    open_page(browser, dalston_server_with_keys)
    browser.find_element(By.ID, "start").click()
    wait_for(browser, dalston_server_with_keys, "the error to show",
             lambda d: "unauthorized" in d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "start").is_enabled()


def test_the_key_typed_on_the_page_lets_the_session_in(
    browser: WebDriver, dalston_server_with_keys: DalstonServer
) -> None:
    open_page(browser, dalston_server_with_keys)
    browser.find_element(By.ID, "api-key").send_keys("k1")
    browser.find_element(By.ID, "start").click()
    wait_for(browser, dalston_server_with_keys, "the session to begin",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "listening")
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, dalston_server_with_keys, "the session to end",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ended")
    assert not browser.find_element(By.ID, "error").is_displayed()


@pytest.mark.parametrize("rate", [44100, 48000])
def test_the_worklet_keeps_speech_frequencies_and_removes_those_that_would_alias(
    browser: WebDriver, dalston_server: DalstonServer, rate: int
) -> None:
    open_page(browser, dalston_server)
    browser.set_script_timeout(WAIT_S)
    for frequency_hz in (300, 1000, 4000):
        assert abs(tone_level_db(browser, rate, frequency_hz)) < 0.5
    for frequency_hz in (9000, 12000, 15000):  # 16 kHz sampling would fold these onto 7, 4 and 1 kHz
        assert tone_level_db(browser, rate, frequency_hz) < -60


def test_a_server_that_dies_mid_session_shows_an_error(browser: WebDriver, own_dalston_server: DalstonServer) -> None:
    server = own_dalston_server
    open_page(browser, server)
    browser.find_element(By.ID, "start").click()
    wait_for(browser, server, "the session to begin",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "listening")
    server.process.kill()  # SIGKILL: no drain, the connection just breaks
    server.process.wait()
    wait_for(browser, server, "the error to show", lambda d: d.find_element(By.ID, "error").is_displayed())
    assert browser.find_element(By.ID, "status").get_attribute("data-state") != "ended"
    assert browser.find_element(By.ID, "start").is_enabled()


def test_a_server_told_to_stop_mid_session_ends_the_session_with_its_transcript(
    browser: WebDriver, own_dalston_server: DalstonServer
) -> None:
    server = own_dalston_server
    open_page(browser, server)
    browser.find_element(By.ID, "start").click()
    wait_for(browser, server, "the session to begin",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "listening")
    server.stop()  # SIGTERM: the gateway drains, ending the session as the client's `end` would
    wait_for(browser, server, "the session to end", lambda d: d.find_element(By.ID, "status")
             .get_attribute("data-state") == "ended")
    assert browser.find_element(By.ID, "start").is_enabled()
