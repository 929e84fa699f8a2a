"""compress(): plan + fp32 policy + recorded states -> pruned, quantized, exported network."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from autoquant._version import __version__
from autoquant.compress._build import ActivationCache, QuantizedLayer, build_graph, pruned_net, slice_net, supported
from autoquant.compress._to_onnx import export_onnx
from autoquant.compress._finetune import FinetuneResult, dagger
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
    activation_scales: dict[str, float] = field(default_factory=dict)  # quantizer name -> scale

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
    if supported(bundle.net) is None:
        return build_graph(bundle.net, bundle.input_shape, CompressionPlan(), np.zeros((1, *bundle.input_shape),
                           dtype=np.float32), metadata=_onnx_metadata(bundle, None)).onnx
    return export_onnx(bundle.net, bundle.input_shape, quantized=False, metadata=_metadata(bundle, None))


def compress(
    bundle: PolicyBundle,
    plan: CompressionPlan,
    states: np.ndarray,
    *,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-3,
    finetune_rounds: int = 0,
    visit: Callable[[bytes], np.ndarray] | None = None,
    finetune_deadline: float | None = None,
    rounding: str = "auto",
    verify_kernels: bool = True,
    seed: int = 0,
    cache: ActivationCache | None = None,
    bias_correction: bool = False,
    finetune_gap_weighted: bool = False,
) -> CompressedPolicy:
    """Prune, quantize (calibrated on ``states``, prepared observations), optionally
    fine-tune by distillation, and emit the ONNX graph.

    The graph builder (``_build``) makes the graph from the plan and the fp32 weights in
    numpy. Brevitas models only what needs a model: GPTQ rounding and fine-tuning through
    the quantizers; the builder then serialises the integers and scales it found. A
    network the builder cannot emit (see ``_build.supported``) goes through Brevitas'
    exporter as a whole.

    ``rounding``: "gptq" (Brevitas GPTQ: needed by value networks whose action gaps
    are tiny next to the values), "nearest", or "auto": GPTQ for networks of at most
    ``GPTQ_AUTO_MAX_PARAMS`` parameters (MLP policies, about a second), nearest for
    larger ones (a Nature CNN takes 6-90 s under GPTQ here, too slow per trial). The
    choice is the network's, not the plan's: every plan of a search rounds alike.

    ``finetune_rounds``: DAgger rounds after the first distillation, each adding the
    states ``visit(onnx)`` returns for the student's graph as it then is (the caller plays
    it; this module knows no environment). Calibration keeps ``states``.
    ``finetune_deadline``: a ``time.perf_counter()`` value past which no epoch or round of
    fine-tuning starts (the best epoch so far is kept): a search's wall-clock budget.
    ``finetune_gap_weighted``: distillation weighs each state by how close fp32's top two
    actions are there (``_finetune.gap_weights``).

    ``cache``: an ActivationCache of ``bundle.net`` and these ``states`` (the same array),
    which a search keeps so that calibration reuses the activations of earlier plans.

    ``bias_correction``: empirical bias correction (``_build.correct_bias``) on ``states``
    where the builder rounds the weights itself (round to nearest, no fine-tuning). GPTQ
    and fine-tuning choose weights against the data already and keep their own biases.

    With ``verify_kernels`` the graph runs once under onnxruntime's profiler; a layer
    the plan makes integer that runs a float kernel raises KernelMismatchError.
    """
    if rounding not in ("auto", "gptq", "nearest"):
        raise ValueError(f"rounding must be 'auto', 'gptq' or 'nearest', got {rounding!r}")
    full = analyse(bundle)
    plan.validate(full)
    states = np.asarray(states, dtype=np.float32)
    tune = _Tune(bundle, states, finetune_epochs, finetune_lr, seed, finetune_rounds, visit, finetune_deadline,
                 finetune_gap_weighted)
    if supported(bundle.net) is not None:
        compressed = _compress_brevitas(bundle, plan, states, tune, rounding=_resolve(rounding, full, plan))
    else:
        rounding = _resolve(rounding, full, plan)
        metadata = _onnx_metadata(bundle, plan)
        result = None
        if finetune_epochs == 0 and (rounding == "nearest" or not plan.quantized):
            # round to nearest: straight from the fp32 weights, sliced once by the builder
            built = build_graph(bundle.net, bundle.input_shape, plan, states, metadata=metadata, cache=cache,
                                bias_correction=bias_correction)
            kept = built.kept
            net = pruned_net(bundle.net, built.sliced, built.layers)
        else:  # a model to fit first (GPTQ, fine-tuning), on the network cut to the kept channels
            sliced, kept = slice_net(bundle.net, plan)
            pruned = pruned_net(bundle.net, sliced)

            def graph(weights: Any, scales: Any) -> Any:
                # ``pruned`` holds the kept channels already: the plan's bit widths without its pruning
                return build_graph(pruned, bundle.input_shape, plan.without_pruning(), states, metadata=metadata,
                                   weights=weights, scales=scales)

            if plan.quantized:
                model = quantize(pruned, plan, input_nonnegative=bool(states.min() >= 0))
                calibrate(model, states)
                if rounding == "gptq":
                    gptq(model, states)
                if finetune_epochs > 0:
                    result = tune(model, lambda: graph(*_brevitas_values(model, plan)).onnx)
                weights, scales = _brevitas_values(model, plan)
            else:
                weights = scales = None
                result = tune(pruned, lambda: graph(None, None).onnx)  # distill switches gradients on and off
            built = graph(weights, scales)
            net = pruned_net(pruned, built.sliced, built.layers)
        table = analyse_module(net, bundle.input_shape, bundle.layer_sources)
        compressed = CompressedPolicy(bundle=bundle, plan=plan, net=net, kept=kept, table=table,
                                      onnx=built.onnx, finetune=result, activation_scales=built.scales)
    if verify_kernels:
        _verify_kernels(compressed, plan, states)
    return compressed


def _resolve(rounding: str, table: LayerTable, plan: CompressionPlan) -> str:
    """``table``: the unpruned network's (so that "auto" decides per network)."""
    if rounding != "auto":
        return rounding
    return "gptq" if plan.quantized and table.total_params <= GPTQ_AUTO_MAX_PARAMS else "nearest"


@dataclass(frozen=True)
class _Tune:
    """How ``compress`` fine-tunes: distillation, then DAgger rounds on visited states."""

    bundle: PolicyBundle
    states: np.ndarray
    epochs: int
    lr: float
    seed: int
    rounds: int
    visit: Callable[[bytes], np.ndarray] | None
    deadline: float | None = None  # time.perf_counter() past which no epoch or round starts
    gap_weighted: bool = False  # distillation weighted toward states where fp32's top two actions are close

    def __call__(self, model: nn.Module, emit: Callable[[], bytes]) -> FinetuneResult:
        """Fine-tune ``model`` in place; ``emit()``: its graph as it now is."""
        visit = self.visit
        return dagger(model, self.bundle.net, self.states, rounds=self.rounds,
                      visit=None if visit is None else lambda: visit(emit()), deadline=self.deadline,
                      epochs=self.epochs, lr=self.lr, seed=self.seed, discrete=self.bundle.action.discrete,
                      gap_weighted=self.gap_weighted)


def _brevitas_values(model: nn.Module, plan: CompressionPlan) -> tuple[dict[str, QuantizedLayer], dict[str, float]]:
    """The integers, weight scales and activation scales a calibrated Brevitas model holds."""
    import torch

    weights: dict[str, QuantizedLayer] = {}
    scales: dict[str, float] = {}
    with torch.no_grad():
        for name, module in model.named_children():
            kind = type(module).__name__
            if kind in ("QuantConv2d", "QuantLinear"):
                weights[name] = QuantizedLayer.from_brevitas(module, int(plan.spec(name).weight_bits))
            elif kind in ("QuantIdentity", "QuantReLU"):
                scales[name] = float(module.act_quant.scale())
    return weights, scales


def _onnx_metadata(bundle: PolicyBundle, plan: CompressionPlan | None) -> dict[str, str]:
    meta = {"autoquant_version": __version__, **_metadata(bundle, plan)}
    return {f"autoquant.{key}": value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in meta.items()}


def _verify_kernels(compressed: CompressedPolicy, plan: CompressionPlan, states: np.ndarray) -> None:
    from autoquant.runtimes import kernel_report

    compressed.kernels = kernel_report(compressed.onnx, states[:1], compressed.table.names)
    wanted = [name for name, spec in plan.layers.items() if spec.integer]
    ran_float = [name for name in wanted if compressed.kernels.layers.get(name) != "int8"]
    if ran_float:
        ops = {name: compressed.kernels.ops.get(name, ["?"]) for name in ran_float}
        raise KernelMismatchError(
            f"plan asks for integer kernels on {ran_float} but onnxruntime ran {ops}: "
            "the export is not fused; report this plan as a bug"
        )


def _compress_brevitas(bundle: PolicyBundle, plan: CompressionPlan, states: np.ndarray, tune: _Tune | None = None,
                       *, rounding: str) -> CompressedPolicy:
    """The whole route through torch pruning and Brevitas' exporter, for networks the
    graph builder does not emit. ``rounding``: "gptq" or "nearest" (resolved)."""
    pruned, kept = prune(bundle.net, bundle.input_shape, plan)
    table = analyse_module(pruned, bundle.input_shape, bundle.layer_sources)
    model: nn.Module = pruned
    if plan.quantized:
        model = quantize(pruned, plan, input_nonnegative=bool(states.min() >= 0))
        calibrate(model, states)
        if rounding == "gptq":
            gptq(model, states)

    def emit() -> bytes:
        return export_onnx(model, bundle.input_shape, quantized=plan.quantized, metadata=_metadata(bundle, plan))

    result = tune(model, emit) if tune is not None and tune.epochs > 0 else None
    return CompressedPolicy(bundle=bundle, plan=plan, net=model, kept=kept, table=table, onnx=emit(),
                            finetune=result)
