"""Structured pruning: output channels / units are removed, and with them the matching
inputs of the next layer (across Flatten), through Torch-Pruning's dependency graph."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoquant.compress._plan import CompressionPlan

__all__ = ["kept_count", "prune"]


def kept_count(channels: int, ratio: float, multiple: int) -> int:
    """Channels kept when pruning ``ratio`` of ``channels``, rounded to ``multiple``."""
    if ratio <= 0.0:
        return channels
    want = channels * (1.0 - ratio)
    if channels <= multiple:
        return max(1, min(channels, round(want)))
    keep = max(multiple, int(round(want / multiple)) * multiple)
    return min(keep, channels)


def prune(net: nn.Sequential, input_shape: tuple[int, ...], plan: CompressionPlan
          ) -> tuple[nn.Sequential, dict[str, list[int]]]:
    """A pruned copy of ``net`` and, per pruned layer, the kept output-channel indices.

    The channels with the smallest L2 weight norm go. The action head and the input
    are never touched (the plan was validated against the layer table).
    """
    import torch_pruning as tp

    net = copy.deepcopy(net)
    for p in net.parameters():
        p.requires_grad_(True)  # the dependency graph is traced through autograd
    kept: dict[str, list[int]] = {}
    targets = [(name, m) for name, m in net.named_children()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and plan.spec(name).prune_ratio > 0]
    if not targets:
        return net, kept
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros((1, *input_shape)))
    for name, module in targets:
        channels = int(module.weight.shape[0])
        keep = kept_count(channels, plan.spec(name).prune_ratio, plan.channel_multiple)
        if keep >= channels:
            continue
        norms = module.weight.detach().flatten(1).norm(dim=1)
        order = torch.argsort(norms, descending=True)
        keep_idx = sorted(int(i) for i in order[:keep])
        drop_idx = sorted(int(i) for i in order[keep:])
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(module, fn, idxs=drop_idx)
        group.prune()
        kept[name] = keep_idx
    for p in net.parameters():
        p.requires_grad_(False)
    return net, kept
