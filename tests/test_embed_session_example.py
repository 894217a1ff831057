"""The embedding example runs as documented: imported and awaited inside a service, and as a script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dalston.actors.speech.protocol import FinalTranscribed
from dalston.wer import word_error_rate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embed_session.py"
SAMPLE_TEXT = (ROOT / "dalston" / "data" / "sample.txt").read_text()
CLIPS = sorted((ROOT / "tests" / "data" / "librivox").glob("*.wav"))


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_session", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_main_awaited_in_a_running_loop_returns_the_transcript_of_the_sample(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load_example()
    transcript = await example.main()
    assert word_error_rate(SAMPLE_TEXT, transcript) <= 0.15, transcript
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(printed) >= 5  # one line per final, five sentences


async def test_a_service_can_share_one_transcriber_between_sessions_of_its_own() -> None:
    example = load_example()
    transcriber = await example.start_transcriber()
    finals: list[FinalTranscribed] = []
    first_clip, second_clip = CLIPS[2], CLIPS[4]
    try:
        first = await example.transcribe_file(transcriber, first_clip, on_final=finals.append)
        second = await example.transcribe_file(transcriber, second_clip, on_final=lambda final: None)
    finally:
        await transcriber.stop()
    assert finals and first == " ".join(final.text for final in finals)
    assert word_error_rate(first_clip.with_suffix(".txt").read_text(), first) <= 0.15
    assert word_error_rate(second_clip.with_suffix(".txt").read_text(), second) <= 0.15


def test_the_example_runs_as_a_script_and_prints_finals_and_the_transcript(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert sum(line.startswith("[") for line in lines) >= 5
    transcript = next(line for line in lines if line.startswith("transcript: ")).removeprefix("transcript: ")
    assert word_error_rate(SAMPLE_TEXT, transcript) <= 0.15
