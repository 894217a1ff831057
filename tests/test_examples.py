"""The examples run as documented: imported and awaited, and as a script with the project's Python."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
EMBED = ROOT / "examples" / "embed_supervisor.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples.{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def project_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


async def test_the_embedding_example_restarts_the_crashed_worker_and_stops_cleanly() -> None:
    result = await load(EMBED).main()
    assert result["squares"] == [0, 1, 4, 9, 16]
    assert result["parsed"] == [12, 34]  # the bad message was lost with the crash, nothing else
    assert result["parser_replaced"] and result["stopped"]
    tree = result["tree"]
    assert tree["kind"] == "supervisor" and [c["id"] for c in tree["children"]] == ["calculator", "parser"]
    assert [c["restarts"] for c in tree["children"]] == [0, 1]


def test_the_embedding_example_runs_as_a_script() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [project_python(), str(EMBED)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "parser [worker Parser] running restarts=1" in done.stdout
    assert "squares=[0, 1, 4, 9, 16] parsed=[12, 34] parser restarts=1" in done.stdout
    assert "supervisor.child_restarted" in done.stderr
