"""Per-layer quantization with Brevitas, calibrated on recorded states.

Where integer kernels need them, quantizers are placed so that onnxruntime fuses
each integer layer into one kernel (QLinearConv / QGemm): the input of an integer
layer is quantized (a QuantReLU when a ReLU precedes it, else a QuantIdentity, also
right after Flatten, see DESIGN.md), and so is the output of every integer layer
but the action head, which returns float.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from autoquant.compress._plan import INT_ACT_BITS, CompressionPlan

__all__ = ["calibrate", "quantize"]

_COMPUTE = (nn.Conv2d, nn.Linear)


def _quantizers():  # type: ignore[no-untyped-def]
    import brevitas.nn as qnn
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Int32Bias,
        Uint8ActPerTensorFloat,
    )

    return qnn, Int8ActPerTensorFloat, Uint8ActPerTensorFloat, Int8WeightPerChannelFloat, Int32Bias


def quantize(net: nn.Sequential, plan: CompressionPlan, *, input_nonnegative: bool) -> nn.Sequential:
    """A Brevitas copy of ``net`` with the plan's bit widths (not yet calibrated), its
    quantizers where ``_build.placement`` puts them (the graph builder emits the same)."""
    from autoquant.compress._build import placement

    qnn, SignedAct, UnsignedAct, WeightQuant, BiasQuant = _quantizers()
    out: OrderedDict[str, nn.Module] = OrderedDict()
    for step in placement(net, plan, input_nonnegative=input_nonnegative):
        if step.kind == "quant":
            out[step.name] = qnn.QuantIdentity(act_quant=SignedAct if step.signed else UnsignedAct,
                                               bit_width=INT_ACT_BITS, return_quant_tensor=True)
        elif step.kind == "relu" and step.quantized:
            out[step.name] = qnn.QuantReLU(act_quant=UnsignedAct, bit_width=INT_ACT_BITS, return_quant_tensor=True)
        elif step.kind == "layer" and step.spec is not None and step.spec.weight_bits is not None:
            out[step.name] = _quant_layer(qnn, step.module, step.spec.weight_bits, WeightQuant,
                                          BiasQuant if step.spec.act_bits is not None else None)
        else:
            out[step.name] = step.module  # type: ignore[assignment]
    model = nn.Sequential(out)
    model.eval()
    return model


def _quant_layer(qnn, module: nn.Module, bits: int, weight_quant, bias_quant) -> nn.Module:  # type: ignore[no-untyped-def]
    has_bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        layer = qnn.QuantConv2d(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, bias=has_bias, weight_quant=weight_quant,
            weight_bit_width=bits, bias_quant=bias_quant, return_quant_tensor=False,
        )
    else:
        layer = qnn.QuantLinear(
            module.in_features, module.out_features, bias=has_bias, weight_quant=weight_quant,
            weight_bit_width=bits, bias_quant=bias_quant, return_quant_tensor=False,
        )
    with torch.no_grad():
        layer.weight.copy_(module.weight)
        if has_bias:
            layer.bias.copy_(module.bias)
    return layer


def calibrate(model: nn.Module, states: np.ndarray, *, batch_size: int = 256) -> None:
    """Set activation ranges from recorded (prepared) states."""
    from brevitas.graph.calibrate import calibration_mode

    model.eval()
    x = torch.as_tensor(np.asarray(states, dtype=np.float32))
    with torch.no_grad(), calibration_mode(model):
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])


def gptq(model: nn.Module, states: np.ndarray) -> None:
    """GPTQ weight rounding (Brevitas), layer by layer on recorded states.

    Round-to-nearest int8 is not enough for value-based policies whose action gaps
    are tiny next to the values: on the zoo's CartPole DQN (Q ~ 105, median gap
    0.15) it agrees with fp32 on about half the states and plays like a random
    policy; with GPTQ it keeps its 500 reward.
    """
    from brevitas.graph.gptq import gptq_mode

    x = torch.as_tensor(np.asarray(states, dtype=np.float32))
    model.eval()
    with torch.no_grad(), gptq_mode(model, use_quant_activations=True, act_order=True) as g:
        for _ in range(g.num_layers):
            for start in range(0, len(x), 1024):
                g.model(x[start:start + 1024])
            g.update()
