"""LayerTable: what each compressible layer of a policy network is and costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoquant.policy._bundle import PolicyBundle

__all__ = ["LayerInfo", "LayerTable", "analyse"]


@dataclass(frozen=True)
class LayerInfo:
    """One Conv2d/Linear layer: shapes, cost, and what may be done to it."""

    name: str
    type: str  # "conv" or "linear"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    macs: int
    channels: int  # output channels / units: the unit of structured pruning
    prunable: bool
    quantizable: bool
    action_head: bool
    activation: str | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape), "params": self.params, "macs": self.macs,
            "channels": self.channels, "prunable": self.prunable,
            "quantizable": self.quantizable, "action_head": self.action_head,
            "activation": self.activation, "source": self.source,
        }


@dataclass(frozen=True)
class LayerTable:
    """The compressible layers of a network, in forward order."""

    layers: tuple[LayerInfo, ...]
    input_shape: tuple[int, ...]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "layers": [layer.to_json() for layer in self.layers],
            "total_params": self.total_params,
            "total_macs": self.total_macs,
        }


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_out = (module.in_channels // module.groups) * kh * kw
        return int(out[0].numel() * per_out)
    assert isinstance(module, nn.Linear)
    return int(module.in_features * module.out_features)


def analyse_module(net: nn.Sequential, input_shape: tuple[int, ...],
                   sources: dict[str, str] | None = None) -> LayerTable:
    """Layer table of a named Sequential chain (after compression too)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {}
    hooks = []
    for name, module in net.named_children():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor,
                     name: str = name) -> None:
                shapes[name] = (tuple(inp[0].shape[1:]), tuple(out.shape[1:]), _macs(mod, out))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    children = list(net.named_children())
    compute = [(i, n, m) for i, (n, m) in enumerate(children) if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = []
    for k, (i, name, module) in enumerate(compute):
        nxt = children[i + 1][1] if i + 1 < len(children) else None
        activation = type(nxt).__name__ if nxt is not None and not isinstance(
            nxt, (nn.Conv2d, nn.Linear, nn.Flatten)) else None
        is_head = k == len(compute) - 1
        in_shape, out_shape, macs = shapes[name]
        layers.append(LayerInfo(
            name=name, type="conv" if isinstance(module, nn.Conv2d) else "linear",
            in_shape=in_shape, out_shape=out_shape,
            params=sum(p.numel() for p in module.parameters()), macs=macs,
            channels=int(module.weight.shape[0]), prunable=not is_head, quantizable=True,
            action_head=is_head, activation=activation,
            source=(sources or {}).get(name, name),
        ))
    return LayerTable(layers=tuple(layers), input_shape=tuple(input_shape))


def analyse(bundle: PolicyBundle) -> LayerTable:
    """The LayerTable of a loaded policy."""
    return analyse_module(bundle.net, bundle.input_shape, bundle.layer_sources)
