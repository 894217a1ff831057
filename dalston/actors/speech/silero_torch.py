"""Silero VAD on torch (`vad.backend = "torch"`): the TorchScript model of the silero-vad package, on CPU.

Installed with the `torch` extra (`pip install 'dalston[torch]'`, torch pinned). `TorchSileroVad` offers what
`SileroVad` (ONNX) offers: the loaded module is shared by every stream of the process, and each stream keeps its
own recurrent state (2x1x128) and 64-sample context. The package's top-level module keeps one hidden state of its
own, so it is not called; its stateless 16 kHz submodule is, with the stream's state passed in and out.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dalston.actors.speech.silero import CONTEXT_SAMPLES, WINDOW_SAMPLES, silero_package_data

if TYPE_CHECKING:
    import torch


def load_torch_silero() -> Any:
    """The 16 kHz TorchScript module, single-threaded (a 512-sample window is far too small to parallelise)."""
    import torch  # imported here: the ONNX backend must not need torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():  # torch calls TorchScript deprecated; silero-vad ships nothing else for torch
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(silero_package_data() / "silero_vad.jit"), map_location="cpu")
    model.eval()
    return model._model


class TorchSileroVad:
    """Speech probability of consecutive 512-sample windows of one stream (16 kHz float32), on torch."""

    _shared_model: ClassVar[Any] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: Any = None) -> None:
        import torch

        self._torch = torch
        self._model = model or self.shared_model()
        self._input = torch.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=torch.float32)
        self._state: torch.Tensor = torch.zeros((2, 1, 128), dtype=torch.float32)
        self.windows = 0

    @classmethod
    def shared_model(cls) -> Any:
        with cls._shared_lock:
            if cls._shared_model is None:
                cls._shared_model = load_torch_silero()
            return cls._shared_model

    def probability(self, window: np.ndarray) -> float:
        """Score the next window (exactly 512 samples); advances this stream's recurrent state."""
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"Silero needs windows of {WINDOW_SAMPLES} samples, got shape {window.shape}")
        self._input[0, CONTEXT_SAMPLES:] = self._torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
        with self._torch.inference_mode():
            output, self._state = self._model(self._input, self._state)
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:].clone()
        self.windows += 1
        return float(output.reshape(-1)[0])

    def reset(self) -> None:
        self._input.zero_()
        self._state = self._torch.zeros((2, 1, 128), dtype=self._torch.float32)
