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

from autoquant.compress._plan import CompressionPlan

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
    """A Brevitas copy of ``net`` with the plan's bit widths (not yet calibrated)."""
    qnn, SignedAct, UnsignedAct, WeightQuant, BiasQuant = _quantizers()
    children = list(net.named_children())
    compute = [i for i, (_, m) in enumerate(children) if isinstance(m, _COMPUTE)]
    head = compute[-1]

    def next_integer(i: int) -> bool:
        later = [j for j in compute if j > i]
        return bool(later) and plan.spec(children[later[0]][0]).integer

    out: OrderedDict[str, nn.Module] = OrderedDict()
    nonneg = input_nonnegative  # is the running tensor known to be >= 0?
    quantized_in = False  # does the last emitted module return a quantized tensor?
    pending_out: str | None = None  # an integer layer whose output still needs a quantizer

    def act_quant(name: str, bits: int) -> None:
        nonlocal quantized_in
        out[name] = qnn.QuantIdentity(act_quant=UnsignedAct if nonneg else SignedAct,
                                      bit_width=bits, return_quant_tensor=True)
        quantized_in = True

    for i, (name, module) in enumerate(children):
        if pending_out is not None and not isinstance(module, nn.ReLU):
            act_quant(f"{pending_out}_out_quant", 8)
            pending_out = None
        if isinstance(module, _COMPUTE):
            spec = plan.spec(name)
            if spec.weight_bits is None:
                out[name] = module
            else:
                if spec.act_bits is not None and not quantized_in:
                    act_quant(f"{name}_in_quant", spec.act_bits)
                out[name] = _quant_layer(qnn, module, spec.weight_bits, WeightQuant,
                                         BiasQuant if spec.act_bits is not None else None)
                if spec.integer and i != head:
                    pending_out = name
            quantized_in = False
            nonneg = False
        elif isinstance(module, nn.ReLU):
            if pending_out is not None or next_integer(i):
                out[name] = qnn.QuantReLU(act_quant=UnsignedAct, bit_width=8, return_quant_tensor=True)
                quantized_in = True
            else:
                out[name] = module
                quantized_in = False
            pending_out = None
            nonneg = True
        elif isinstance(module, nn.Flatten):
            out[name] = module
            quantized_in = False  # re-quantize after Flatten (else a float Gemm runs)
        else:
            out[name] = module
            quantized_in = False
            nonneg = isinstance(module, nn.Sigmoid)
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
