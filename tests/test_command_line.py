"""The README's main job and `dalston stream`, run as a user would: real processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import ProcessGroup
from redis_server import free_port

from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "dalston" / "data" / "sample.wav"
SAMPLE_TEXT = (REPO / "dalston" / "data" / "sample.txt").read_text()


def run_dalston(*args: str, timeout_s: float = 120.0, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DALSTON_NODE_MODELS": "fast", **env_extra}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_dalston_stream_json_prints_every_event_from_session_begin_to_a_full_transcript(
    dalston_processes: ProcessGroup,
) -> None:
    server = dalston_processes.start_serve()
    asyncio.run(dalston_processes.wait_ready(server))
    done = run_dalston("-m", "dalston.cli", "--log-level", "warning", "stream", str(SAMPLE),
                       "--url", server.stream_url, "--speed", "0", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "session.begin" and kinds[-1] == "session.end"
    assert kinds.count("transcript.final") == 5  # five sentences with pauses between them
    assert word_error_rate(SAMPLE_TEXT, events[-1]["transcript"]) <= 0.15


def test_the_main_job_starts_a_server_streams_the_sample_and_prints_its_transcript(tmp_path: Path) -> None:
    port = free_port()
    done = run_dalston("-m", "dalston.demo", "--speed", "0", "--port", str(port), timeout_s=180.0,
                       DALSTON_DEMO_LOG=str(tmp_path / "serve.log"))
    assert done.returncode == 0, done.stdout + done.stderr
    transcript = done.stdout.split("Transcript (")[-1].split("\n", 1)[1]
    assert word_error_rate(SAMPLE_TEXT, transcript) <= 0.15
