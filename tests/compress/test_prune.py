"""Structured pruning removes whole channels, and nothing else changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoquant.compress import CompressionPlan, LayerSpec, kept_count, prune
from autoquant.policy import analyse
from autoquant.policy import analyse_module


@pytest.mark.parametrize(("channels", "ratio", "multiple", "want"),
                         [(64, 0.5, 8, 32), (64, 0.3, 8, 48), (32, 0.95, 8, 8), (512, 0.0, 8, 512), (6, 0.5, 8, 3)])
def test_kept_count(channels: int, ratio: float, multiple: int, want: int) -> None:
    assert kept_count(channels, ratio, multiple) == want


def test_pruned_network_equals_the_masked_original(pong, pong_states) -> None:  # type: ignore[no-untyped-def]
    """Zeroing the dropped channels' weights and biases in the original gives exactly the
    pruned network's outputs: the right inputs were removed downstream, across Flatten."""
    plan = CompressionPlan({"conv1": LayerSpec(prune_ratio=0.5), "conv3": LayerSpec(prune_ratio=0.5),
                            "fc1": LayerSpec(prune_ratio=0.25)})
    pruned, kept = prune(pong.net, pong.input_shape, plan)
    assert {k: len(v) for k, v in kept.items()} == {"conv1": 16, "conv3": 32, "fc1": 384}
    masked = copy.deepcopy(pong.net)
    with torch.no_grad():
        for name, idx in kept.items():
            layer = getattr(masked, name)
            drop = sorted(set(range(layer.weight.shape[0])) - set(idx))
            layer.weight[drop] = 0
            layer.bias[drop] = 0
    x = torch.as_tensor(pong_states.states[:16])
    with torch.no_grad():
        np.testing.assert_allclose(pruned(x).numpy(), masked(x).numpy(), rtol=1e-4, atol=1e-5)
    table = analyse_module(pruned, pong.input_shape)
    assert table["fc1"].in_shape == (32 * 7 * 7,)
    assert table.total_macs < analyse(pong).total_macs
    assert pong.net.conv1.weight.shape[0] == 32  # the original is untouched


def test_smallest_norm_channels_go(cartpole_dqn) -> None:  # type: ignore[no-untyped-def]
    plan = CompressionPlan({"fc2": LayerSpec(prune_ratio=0.5)})
    _, kept = prune(cartpole_dqn.net, cartpole_dqn.input_shape, plan)
    norms = cartpole_dqn.net.fc2.weight.norm(dim=1)
    dropped = sorted(set(range(256)) - set(kept["fc2"]))
    assert norms[kept["fc2"]].min() >= norms[dropped].max()
