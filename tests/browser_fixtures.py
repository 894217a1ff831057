"""A real `dalston serve` on loopback and a real headless Chromium whose microphone plays recorded speech.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`); Selenium is told where
both are, so it never tries to download a driver. Chromium's fake capture device plays a WAV file in a loop,
resampling it to the device's rate itself, so a 16 kHz mono file is used as it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from dalston.actors.speech.audio import read_wav

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"

SPEECH_CLIP = Path(__file__).parent / "data" / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.wav"
LEAD_SILENCE_S = 0.5
# The loop's trailing silence is longer than the VAD's min_silence_ms, so each pass ends in a final.
TRAIL_SILENCE_S = 1.5
SERVER_START_TIMEOUT_S = 60.0
_LISTENING = re.compile(rb"dalston: listening on ws://[^:]+:(\d+)/")

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--window-size=1100,800",
)


@dataclass(frozen=True)
class DalstonServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dalston_serve(folder: Path, environ: Mapping[str, str]) -> DalstonServer:
    """`dalston serve --port 0` with only the fast model; returns once it listens (the port it printed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALSTON_")}
    env.update({"DALSTON_NODE_MODELS": "fast", "DALSTON_NODE_CAPACITY": "2", **environ})
    log_path = folder / "dalston-serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "dalston.cli", "serve", "--port", "0"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    server = DalstonServer(0, process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_bytes())
        if found:
            return DalstonServer(int(found.group(1)), process, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"dalston serve did not start:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def dalston_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DalstonServer]:
    server = start_dalston_serve(tmp_path_factory.mktemp("serve"), {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dalston_server_with_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DalstonServer]:
    server = start_dalston_serve(tmp_path_factory.mktemp("serve-keys"), {"DALSTON_SERVER_API_KEYS": '["k1"]'})
    yield server
    server.stop()


@pytest.fixture
def own_dalston_server(tmp_path: Path) -> Iterator[DalstonServer]:
    """A server of the test's own, which the test may stop."""
    server = start_dalston_serve(tmp_path, {})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def microphone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speech clip between two silences, as the fake microphone's looped input."""
    samples, rate = read_wav(SPEECH_CLIP)
    lead = np.zeros(int(LEAD_SILENCE_S * rate), np.int16)
    trail = np.zeros(int(TRAIL_SILENCE_S * rate), np.int16)
    path = tmp_path_factory.mktemp("microphone") / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.concatenate([lead, samples, trail]).astype("<i2").tobytes())
    return path


@pytest.fixture
def browser(microphone_wav: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, a fresh profile, the microphone allowed and fed from `microphone_wav`."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail(f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}; install them with: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--use-file-for-fake-audio-capture={microphone_wav}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="dalston-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()
