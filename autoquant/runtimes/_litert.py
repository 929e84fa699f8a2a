"""LiteRT (TensorFlow Lite's runtime) with its default XNNPACK delegate, on this CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from autoquant.runtimes._base import register_runtime
from autoquant.runtimes._tflite import TFLITE_INPUT_LAYOUT, onnx_to_tflite

__all__ = ["LiteRTRuntime", "LiteRTSession"]

INSTALL = "pip install 'autoquant[litert]' (the ai-edge-litert wheel)"


def _nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x)


class LiteRTSession:
    """A LiteRT interpreter on one model. It takes the policy's NCHW observations and moves
    them to the model's NHWC layout before feeding them (outside the timed call); a 4-d
    output comes back NCHW."""

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        self._x = self.interpreter.get_input_details()[0]["index"]
        self._y = self.interpreter.get_output_details()[0]["index"]
        self._batch = 1
        self.interpreter.allocate_tensors()

    def _resize(self, x: np.ndarray) -> None:
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self._x, x.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = _nhwc(x)
        self._resize(x)
        self.interpreter.set_tensor(self._x, x)
        self.interpreter.invoke()
        y = np.array(self.interpreter.get_tensor(self._y), dtype=np.float32)
        return np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2))) if y.ndim == 4 else y

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        one = _nhwc(x[:1])
        self._resize(one)
        interpreter, xi, yi = self.interpreter, self._x, self._y

        def call() -> object:
            interpreter.set_tensor(xi, one)
            interpreter.invoke()
            return interpreter.get_tensor(yi)

        return call


@register_runtime("litert")
class LiteRTRuntime:
    name = "litert"
    suffix = ".tflite"

    def missing(self) -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return INSTALL
        return None

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version("ai-edge-litert")

    def compile(self, onnx: bytes) -> bytes:
        return onnx_to_tflite(onnx)

    def session(self, model: bytes, *, threads: int = 1) -> LiteRTSession:
        return LiteRTSession(model, threads=threads)

    def session_options(self, threads: int) -> dict[str, Any]:
        return {"num_threads": threads, "delegate": "XNNPACK (LiteRT's default)", "input_layout": TFLITE_INPUT_LAYOUT}
