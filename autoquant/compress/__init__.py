"""Compression plans, pruning, Brevitas quantization, fine-tuning and ONNX export."""

from __future__ import annotations

from autoquant.compress._compress import CompressedPolicy, compress, export_reference, weight_bytes
from autoquant.compress._export import export_onnx, onnx_metadata
from autoquant.compress._finetune import FinetuneResult, distill
from autoquant.compress._ort_static import onnxruntime_uniform_int8
from autoquant.compress._plan import ACT_BITS, WEIGHT_BITS, CompressionPlan, LayerSpec
from autoquant.compress._prune import kept_count, prune

__all__ = [
    "ACT_BITS",
    "WEIGHT_BITS",
    "CompressedPolicy",
    "CompressionPlan",
    "FinetuneResult",
    "LayerSpec",
    "compress",
    "distill",
    "export_onnx",
    "export_reference",
    "kept_count",
    "onnx_metadata",
    "onnxruntime_uniform_int8",
    "prune",
    "weight_bytes",
]
