"""A cost model from the layer table alone: estimated size and MACs of a plan, without
compressing. Agents use it for budget-aware clipping and as features."""

from __future__ import annotations

from collections.abc import Sequence

from autoquant.compress import CompressionPlan, kept_count
from autoquant.policy import LayerTable

__all__ = ["layer_costs", "plan_cost"]


def layer_costs(table: LayerTable, bits: Sequence[int | None], ratios: Sequence[float],
                 multiple: int) -> list[tuple[float, float]]:
    """(weight bytes, MACs) per layer after pruning and quantization, estimated."""
    out = []
    in_frac = 1.0
    for layer, b, ratio in zip(table, bits, ratios):
        kept = kept_count(layer.channels, ratio, multiple) if ratio > 0 else layer.channels
        out_frac = kept / layer.channels
        weights = (layer.params - layer.channels) * in_frac * out_frac
        out.append((weights * (b or 32) / 8 + kept * 4, layer.macs * in_frac * out_frac))
        in_frac = out_frac
    return out


def plan_cost(table: LayerTable, plan: CompressionPlan) -> tuple[float, float]:
    """Estimated (size ratio, MACs ratio) of ``plan`` against the fp32 network, without
    compressing: pruning ``p`` of a layer keeps ``kept_count`` of its outputs and the
    same share of the next layer's inputs; weights take the plan's bits, biases 32."""
    specs = [plan.spec(layer.name) for layer in table]
    costs = layer_costs(table, [s.weight_bits for s in specs], [s.prune_ratio for s in specs],
                         plan.channel_multiple)
    return (sum(c[0] for c in costs) / (4.0 * table.total_params),
            sum(c[1] for c in costs) / table.total_macs)


