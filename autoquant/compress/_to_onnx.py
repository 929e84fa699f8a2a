"""ONNX export of (compressed) policy networks: QCDQ through Brevitas' TorchScript
exporter for quantized models, torch's TorchScript exporter for float ones."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoquant._version import __version__
from autoquant.errors import ExportError, first_line

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "onnx_metadata"]

INPUT_NAME = "obs"
OUTPUT_NAME = "out"
OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], *, quantized: bool,
                metadata: dict[str, Any] | None = None) -> bytes:
    """Export ``model`` (batch dimension dynamic) and return the ONNX bytes.

    ``metadata`` is stored as JSON strings in the model's ``metadata_props`` so the
    file says what it is (plan, action mapping, autoquant version).
    """
    import onnx

    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, dynamo=False,
    )
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if quantized:
                    from brevitas.export import export_onnx_qcdq

                    export_onnx_qcdq(model, args=example, export_path=path, **kwargs)
                else:
                    torch.onnx.export(model, (example,), path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one
            raise ExportError(f"ONNX export failed: {first_line(exc)}") from exc
        proto = onnx.load(path)
    meta = {"autoquant_version": __version__, **(metadata or {})}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"autoquant.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    proto.producer_name = "autoquant"
    proto.producer_version = __version__
    return proto.SerializeToString()


def onnx_metadata(model: bytes | str | Path) -> dict[str, Any]:
    """The ``autoquant.*`` metadata of an exported model, JSON values decoded."""
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    out: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith("autoquant."):
            try:
                out[entry.key[len("autoquant."):]] = json.loads(entry.value)
            except json.JSONDecodeError:
                out[entry.key[len("autoquant."):]] = entry.value
    return out
