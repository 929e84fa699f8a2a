"""onnxruntime's own uniform int8 static quantization: what a user would otherwise
pick, kept as a reference point for every search and benchmark."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["onnxruntime_uniform_int8"]


def _reader(input_name: str, states: np.ndarray, batch: int = 32) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class StatesReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [np.ascontiguousarray(states[i:i + batch], dtype=np.float32)
                            for i in range(0, len(states), batch)]
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(self.batches):
                return None
            self.index += 1
            return {input_name: self.batches[self.index - 1]}

        def rewind(self) -> None:
            self.index = 0

    return StatesReader()


def onnxruntime_uniform_int8(reference: bytes, states: np.ndarray) -> bytes:
    """``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) of the
    fp32 export, calibrated on the same recorded states autoquant uses."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(reference, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, out = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(fp32, "wb") as f:
            f.write(reference)
        quant_pre_process(fp32, pre)
        quantize_static(pre, out, _reader(name, states), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        with open(out, "rb") as f:
            return f.read()
