"""Which Silero runtime scores a stream's windows: `onnx` (onnxruntime, the model shipped with Dalston) or
`torch` (the silero-vad package's TorchScript model, installed with the `torch` extra). Both give the same
events on real speech; ONNX is about three times cheaper per window on CPU (benchmarks/vad_backend_bench.py).
"""

from __future__ import annotations

import importlib.util

from dalston.actors.speech.silero import SileroVad, WindowScorer
from dalston.config import ConfigError

TORCH_HINT = "vad.backend = 'torch' needs torch and silero-vad: pip install 'dalston[torch]'"


def new_vad(backend: str) -> WindowScorer:
    """A fresh per-stream scorer over the process-wide model of `backend`."""
    if backend == "torch":
        from dalston.actors.speech.silero_torch import TorchSileroVad

        return TorchSileroVad()
    return SileroVad()


def preload_vad(backend: str) -> None:
    """Load the backend's shared model now, so a node without it fails at start, not at its first session."""
    if backend == "torch":
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("silero_vad") is None:
            raise ConfigError(TORCH_HINT)
        from dalston.actors.speech.silero_torch import TorchSileroVad

        TorchSileroVad.shared_model()
    else:
        SileroVad.shared_session()
