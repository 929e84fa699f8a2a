"""Compression plans, the graph builder (plan + fp32 weights -> QDQ ONNX), pruning, Brevitas
quantization (GPTQ, fine-tuning), ONNX export, and the numpy recipes that rebuild a
compressed graph's initializers from fp32 weights."""

from __future__ import annotations

from autoquant.compress._build import (ActivationCache, BuiltGraph, QuantizedLayer, build_graph, correct_bias,
                                       percentile_scale, pruned_net, slice_net)
from autoquant.compress._compress import CompressedPolicy, compress, export_reference, weight_bytes
from autoquant.compress._to_onnx import export_onnx, onnx_metadata
from autoquant.compress._finetune import FinetuneResult, distill
from autoquant.compress._plan import ACT_BITS, FLOAT, INT_ACT_BITS, WEIGHT_BITS, CompressionPlan, LayerSpec
from autoquant.compress._prune import kept_count, prune
from autoquant.compress._recipe import (
    EXTERNAL_LOCATION,
    LayerRecipe,
    RecipeGraph,
    SlotSpec,
    as_array,
    encode_layer,
    recipe_graph,
)

__all__ = [
    "ACT_BITS",
    "ActivationCache",
    "BuiltGraph",
    "QuantizedLayer",
    "build_graph",
    "EXTERNAL_LOCATION",
    "FLOAT",
    "INT_ACT_BITS",
    "WEIGHT_BITS",
    "CompressedPolicy",
    "CompressionPlan",
    "FinetuneResult",
    "LayerRecipe",
    "LayerSpec",
    "RecipeGraph",
    "SlotSpec",
    "as_array",
    "compress",
    "correct_bias",
    "distill",
    "encode_layer",
    "export_onnx",
    "export_reference",
    "kept_count",
    "onnx_metadata",
    "percentile_scale",
    "prune",
    "pruned_net",
    "recipe_graph",
    "slice_net",
    "weight_bytes",
]
