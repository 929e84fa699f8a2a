"""Kernel-aware shapes: does the number of kept channels matter beyond how many there are?

Every int8 layer of the Pong Nature-CNN Q-network is pruned alone to each multiple of 4
of its output channels (the rest of the network int8, unpruned) and costed on each
target: host p10 latency (ratio to the unpruned int8 network, interleaved in one window
per point) and emulated Cortex-A72 / A76 guest instructions (deterministic). A straight
line in the kept count is fitted per layer and target; where onnxruntime's int8 kernels
work in blocks of m channels, counts that are not multiples of m cost more than the line
says. The table gives that excess for m = 8, 16 and 32.

    python benchmarks/channels.py [--targets host arm-a72-emulated arm-a76-emulated]

Writes benchmarks/results/channels.json and channels.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, header, rel, run_or_render  # noqa: E402

LAYERS = {"conv1": 4, "conv2": 4, "conv3": 4, "fc1": 32}  # layer -> step of the kept counts
MULTIPLES = (8, 16, 32)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from autoquant.compress import CompressionPlan, LayerSpec, compress
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy
    from autoquant.targets import HostTarget, MeasureProtocol, get_target

    path = args.policies / "dqn-PongNoFrameskip-v4" / "dqn_pong.pt"
    bundle = load_policy(path, env_id="PongNoFrameskip-v4")
    table = analyse(bundle)
    states = record_states(bundle, n=256, seed=0, n_envs=2).states
    x = states[:1]
    base = CompressionPlan.uniform(table)  # every layer int8, nothing pruned
    reference = compress(bundle, base, states, rounding="nearest", verify_kernels=False).onnx
    targets: dict[str, Any] = {}
    for name in args.targets:
        targets[name] = HostTarget(protocol=MeasureProtocol(warmup=50, calls=args.calls, block=20)) \
            if name == "host" else get_target(name)
    points: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in targets}
    for layer, step in LAYERS.items():
        channels = table[layer].channels
        for keep in range(step, channels + 1, step):
            specs = dict(base.layers)
            specs[layer] = LayerSpec(8, 8, 1.0 - keep / channels if keep < channels else 0.0)
            plan = CompressionPlan(specs, channel_multiple=1)
            compressed = compress(bundle, plan, states, rounding="nearest")
            assert len(compressed.kept.get(layer, range(channels))) == keep, (layer, keep)
            for name, target in targets.items():
                if name == "host":
                    result = target.measure(compressed.onnx, reference, x)
                    cost = float(result.ratio)
                else:
                    cost = target.instructions(compressed.onnx, x) / target.instructions(reference, x)
                points[name].setdefault(layer, []).append({"keep": keep, "cost": cost})
            print(f"{layer} keep {keep}: " + ", ".join(f"{n} {points[n][layer][-1]['cost']:.4f}" for n in targets),
                  flush=True)
    return {"policy": rel(path), "points": points,
            "facts": {name: t.facts() for name, t in targets.items()},
            "analysis": {name: analyse_points(p) for name, p in points.items()}}


def analyse_points(points: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per layer: the line cost = a + b * keep, and for each m the mean excess over the line
    of counts that are not multiples of m minus that of counts that are (in % of the
    unpruned cost)."""
    out: dict[str, Any] = {}
    for layer, pts in points.items():
        keep = np.array([p["keep"] for p in pts], dtype=float)
        cost = np.array([p["cost"] for p in pts])
        b, a = np.polyfit(keep, cost, 1)
        residual = cost - (a + b * keep)
        excess = {}
        for m in MULTIPLES:
            on = keep % m == 0
            if on.sum() >= 1 and (~on).sum() >= 1:
                excess[str(m)] = 100.0 * float(residual[~on].mean() - residual[on].mean())
        out[layer] = {"slope_per_channel": float(b), "intercept": float(a), "excess_pct": excess,
                      "max_abs_residual_pct": 100.0 * float(np.abs(residual).max())}
    return out


def markdown(data: dict[str, Any], path: Path) -> None:
    lines = header(data, "Kernel-aware shapes: channel multiples on the host and on emulated Arm")
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), "",
              "Excess = mean distance above the fitted line of kept counts that are not multiples of m, minus that "
              "of counts that are, in % of the unpruned int8 network's cost (positive: multiples of m are cheaper "
              "than their size says).", ""]
    targets = list(data["analysis"])
    lines += ["| layer | " + " | ".join(f"{t} m={m}" for t in targets for m in MULTIPLES) + " |",
              "|:---|" + "---:|" * (len(targets) * len(MULTIPLES))]
    for layer in LAYERS:
        cells = []
        for t in targets:
            excess = data["analysis"][t].get(layer, {}).get("excess_pct", {})
            cells += [f"{excess[str(m)]:+.2f} %" if str(m) in excess else "-" for m in MULTIPLES]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Cost per kept channel (slope of the line, share of the unpruned int8 network per channel) and "
              "the largest distance of any point from it:", "",
              "| layer | " + " | ".join(f"{t} slope | {t} max off" for t in targets) + " |",
              "|:---|" + "---:|---:|" * len(targets)]
    for layer in LAYERS:
        cells = []
        for t in targets:
            a = data["analysis"][t].get(layer, {})
            cells += [f"{a.get('slope_per_channel', float('nan')):.5f}", f"{a.get('max_abs_residual_pct', 0):.2f} %"]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Raw points (kept channels: cost ratio to the unpruned int8 network):", ""]
    for t in targets:
        for layer, pts in data["points"][t].items():
            lines.append(f"- {t} {layer}: " + ", ".join(f"{p['keep']}: {p['cost']:.3f}" for p in pts))
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["host", "arm-a72-emulated", "arm-a76-emulated"])
    parser.add_argument("--calls", type=int, default=600, help="host timed calls per model")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "channels.json")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    return run_or_render("benchmarks/channels.py", argv, parser.parse_args(argv), measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
