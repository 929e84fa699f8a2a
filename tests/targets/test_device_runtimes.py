"""What a device accepts per runtime: the job names its runtime and sends that runtime's
model; anything else is a one-line 400 before a session is made."""

from __future__ import annotations

import numpy as np
import pytest

from autoquant.errors import WireError
from autoquant.runtimes import get_runtime
from autoquant.targets._server import DeviceLimits, validate_request
from autoquant.targets._wire import pack


@pytest.fixture(scope="module")
def models(cartpole_dqn):  # type: ignore[no-untyped-def]
    from autoquant.compress import export_reference

    onnx = export_reference(cartpole_dqn)
    return onnx, get_runtime("litert").compile(onnx)


def _body(header: dict, model: bytes, reference: bytes | None = None) -> bytes:  # type: ignore[type-arg]
    blobs = {"model": model, "x": np.zeros((1, 4), np.float32)}
    if reference is not None:
        blobs["reference"] = reference
    return pack({"threads": 1, **header}, blobs)


def test_each_runtime_gets_its_own_model(models) -> None:  # type: ignore[no-untyped-def]
    onnx, tflite = models
    limits = DeviceLimits()
    header, _ = validate_request(_body({"runtime": "litert", "reference_runtime": "onnxruntime"}, tflite, onnx),
                                 "infer", limits)
    assert header["runtime"] == "litert"
    validate_request(_body({}, onnx), "infer", limits)  # no runtime named: onnxruntime, as before


@pytest.mark.parametrize("header, which, needle", [
    ({"runtime": "tvm"}, "onnx", "runtime 'tvm' is not one a device runs"),
    ({"runtime": "litert"}, "onnx", "not a LiteRT model"),
    ({"runtime": "onnxruntime"}, "tflite", "not an ONNX model"),
    ({"runtime": "litert", "reference_runtime": "onnxruntime"}, "both-tflite", "not an ONNX model"),
])
def test_a_model_for_another_runtime_is_a_400(models, header: dict, which: str, needle: str) -> None:  # type: ignore[type-arg, no-untyped-def]
    onnx, tflite = models
    model = onnx if which == "onnx" else tflite
    reference = tflite if which == "both-tflite" else None
    with pytest.raises(WireError, match=needle):
        validate_request(_body(header, model, reference), "infer", DeviceLimits())
