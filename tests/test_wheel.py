"""Dalston as a user installs it: a wheel built from this checkout, in a fresh virtualenv, runs the main job.

The wheel is built without build isolation (setuptools from this venv) and installed with the machine's pip
configuration (local package indexes), constrained to `requirements.lock`, so no internet is needed. The
installed commands run from a folder outside the repository, so nothing can be read from the checkout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cluster_fixtures import DalstonProcess, ProcessGroup
from redis_server import free_port

from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 600


def _run(args: list[str], cwd: Path, timeout_s: float = INSTALL_TIMEOUT_S, **kwargs: object) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False,
                          **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


def _clean_env() -> dict[str, str]:
    """The environment minus anything that could point Python at the checkout or its venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DALSTON_")}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding only the wheel built from this checkout and its dependencies."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(REPO / "dalston", source / "dalston", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder / "dist"),
          str(source)], cwd=folder)
    (wheel,) = (folder / "dist").glob("dalston-*.whl")
    venv = folder / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=folder, env=_clean_env())
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "requirements.lock"),
          str(wheel)], cwd=folder, env=_clean_env())
    yield venv


def _start_serve(venv: Path, cwd: Path, args: list[str], env: dict[str, str]) -> DalstonProcess:
    log_path = cwd / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(venv / "bin" / "dalston"), "serve", *args], cwd=cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return DalstonProcess("serve", "wheel-serve", int(args[args.index("--port") + 1]), process, log_path)


async def _node_health(serve: DalstonProcess) -> dict[str, object]:
    """Capacity and models of the node that `serve` printed the address of."""
    found = re.search(r"worker node at (http://\S+)", serve.log_path.read_text())
    assert found, serve.log_tail()
    token = {"Authorization": "Bearer dalston-dev-link-token"}  # the worker's details need the link token
    async with aiohttp.ClientSession(headers=token) as http, http.get(found.group(1) + "/healthz") as response:
        health = await response.json()
    return {"capacity": health["capacity"], "models": health["models"]}


def _installed_package(venv: Path, cwd: Path) -> Path:
    code = "import dalston, pathlib; print(pathlib.Path(dalston.__file__).parent)"
    return Path(_run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=_clean_env()).strip())


async def test_a_fresh_venv_with_only_the_wheel_serves_and_streams_the_bundled_sample(
    wheel_venv: Path, tmp_path: Path
) -> None:
    package = _installed_package(wheel_venv, tmp_path)
    assert package.is_relative_to(wheel_venv), f"dalston was imported from {package}, not from the wheel"
    # A user's file and an environment variable still override the shipped defaults.
    user_config = tmp_path / "dalston.toml"
    user_config.write_text("[node]\ncapacity = 2\n\n[transcriber]\ninference_threads = 1\n")
    port = free_port()
    env = {**_clean_env(), "DALSTON_NODE_MODELS": "fast"}
    serve = _start_serve(wheel_venv, tmp_path, ["--port", str(port), "--config", str(user_config)], env)
    group = ProcessGroup(tmp_path, started=[serve])
    try:
        await group.wait_ready(serve)
        assert await _node_health(serve) == {"capacity": 2, "models": ["fast"]}
        output = await asyncio.to_thread(
            _run, [str(wheel_venv / "bin" / "dalston"), "stream", str(package / "data" / "sample.wav"),
                   "--speed", "0", "--json", "--url", serve.stream_url], tmp_path, 120.0, env=env)
        events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        begin = next(e for e in events if e["type"] == "session.begin")
        (end,) = [e for e in events if e["type"] == "session.end"]
        reference = (package / "data" / "sample.txt").read_text()
        assert word_error_rate(reference, end["transcript"]) < 0.15, end["transcript"]
        assert not [e for e in events if e["type"] == "error"]
        assert begin["session_id"] == end["session_id"]
        trees = await asyncio.to_thread(_run, [str(wheel_venv / "bin" / "dalston"), "tree", "--url", serve.http_url,
                                               "--json"], tmp_path, 60.0, env=env)
        [tree] = json.loads(trees)
        assert tree["error"] is None and tree["tree"]["status"] == "running"
        serve.signal(signal.SIGTERM)
        assert await serve.wait_exit() == 0, serve.log_tail()
    finally:
        group.stop_all()


def test_the_torch_backend_without_the_torch_extra_stops_serve_at_once_saying_what_to_install(
    wheel_venv: Path, tmp_path: Path
) -> None:
    env = {**_clean_env(), "DALSTON_NODE_MODELS": "fast", "DALSTON_VAD_BACKEND": "torch"}
    done = subprocess.run([str(wheel_venv / "bin" / "dalston"), "serve", "--port", str(free_port())], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'dalston[torch]'" in done.stderr
