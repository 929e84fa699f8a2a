"""compress(): plan + fp32 policy + recorded states -> pruned, quantized, exported network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from autoquant.compress._to_onnx import export_onnx
from autoquant.compress._finetune import FinetuneResult, distill
from autoquant.compress._plan import CompressionPlan
from autoquant.compress._prune import prune
from autoquant.compress._quant import calibrate, gptq, quantize
from autoquant.errors import KernelMismatchError
from autoquant.policy import PolicyBundle
from autoquant.policy import LayerTable, analyse, analyse_module

__all__ = ["GPTQ_AUTO_MAX_PARAMS", "CompressedPolicy", "compress", "export_reference"]

GPTQ_AUTO_MAX_PARAMS = 500_000


@dataclass(eq=False)
class CompressedPolicy:
    """The result of applying a plan: torch model, ONNX bytes, and what ran."""

    bundle: PolicyBundle
    plan: CompressionPlan
    net: nn.Module
    kept: dict[str, list[int]]
    table: LayerTable
    onnx: bytes
    kernels: Any = None  # KernelReport, when verified
    finetune: FinetuneResult | None = None

    @property
    def size_bytes(self) -> int:
        """Weight storage at the plan's bit widths (biases in 32 bits)."""
        return weight_bytes(self.table, self.plan)


def weight_bytes(table: LayerTable, plan: CompressionPlan) -> int:
    total = 0.0
    for layer in table:
        bits = plan.spec(layer.name).weight_bits or 32
        weights = layer.params - layer.channels  # minus the bias
        total += weights * bits / 8 + layer.channels * 4
    return int(round(total))


def _metadata(bundle: PolicyBundle, plan: CompressionPlan | None) -> dict[str, Any]:
    return {
        "plan": plan.to_json() if plan is not None else None,
        "action": bundle.action.to_json(),
        "obs_scale": bundle.obs_scale,
        "input_shape": list(bundle.input_shape),
        "env_id": bundle.env_id,
        "algo": bundle.algo,
    }


def export_reference(bundle: PolicyBundle) -> bytes:
    """The uncompressed fp32 network as ONNX: the reference every plan is measured against."""
    return export_onnx(bundle.net, bundle.input_shape, quantized=False, metadata=_metadata(bundle, None))


def compress(
    bundle: PolicyBundle,
    plan: CompressionPlan,
    states: np.ndarray,
    *,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-4,
    advantage_weight: float = 10.0,
    rounding: str = "auto",
    verify_kernels: bool = True,
    seed: int = 0,
) -> CompressedPolicy:
    """Prune, quantize (calibrated on ``states``, prepared observations), optionally
    fine-tune by distillation, and export to ONNX.

    ``rounding``: "gptq" (Brevitas GPTQ: needed by value networks whose action gaps
    are tiny next to the values), "nearest", or "auto": GPTQ while the quantized
    weights number at most ``GPTQ_AUTO_MAX_PARAMS`` (MLP policies, about a second),
    nearest beyond (a Nature CNN takes 15-90 s under GPTQ here, too slow per trial).

    With ``verify_kernels`` the export runs once under onnxruntime's profiler; a
    layer the plan makes integer that runs a float kernel raises KernelMismatchError.
    """
    if rounding not in ("auto", "gptq", "nearest"):
        raise ValueError(f"rounding must be 'auto', 'gptq' or 'nearest', got {rounding!r}")
    plan.validate(analyse(bundle))
    pruned, kept = prune(bundle.net, bundle.input_shape, plan)
    table = analyse_module(pruned, bundle.input_shape, bundle.layer_sources)
    states = np.asarray(states, dtype=np.float32)
    model: nn.Module = pruned
    if plan.quantized:
        model = quantize(pruned, plan, input_nonnegative=bool(states.min() >= 0))
        calibrate(model, states)
        if rounding == "auto":
            quantized = sum(layer.params for layer in table if plan.spec(layer.name).weight_bits is not None)
            rounding = "gptq" if quantized <= GPTQ_AUTO_MAX_PARAMS else "nearest"
        if rounding == "gptq":
            gptq(model, states)
    result = None
    if finetune_epochs > 0:
        result = distill(model, bundle.net, states, epochs=finetune_epochs, lr=finetune_lr, seed=seed,
                        advantage_weight=advantage_weight if bundle.action.discrete else 0.0)
    onnx_bytes = export_onnx(model, bundle.input_shape, quantized=plan.quantized,
                             metadata=_metadata(bundle, plan))
    compressed = CompressedPolicy(bundle=bundle, plan=plan, net=model, kept=kept, table=table,
                                  onnx=onnx_bytes, finetune=result)
    if verify_kernels:
        from autoquant.targets import kernel_report

        compressed.kernels = kernel_report(onnx_bytes, states[:1], table.names)
        wanted = [name for name, spec in plan.layers.items() if spec.integer]
        ran_float = [name for name in wanted if compressed.kernels.layers.get(name) != "int8"]
        if ran_float:
            ops = {name: compressed.kernels.ops.get(name, ["?"]) for name in ran_float}
            raise KernelMismatchError(
                f"plan asks for integer kernels on {ran_float} but onnxruntime ran {ops}: "
                "the export is not fused; report this plan as a bug"
            )
    return compressed
