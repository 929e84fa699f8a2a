"""The same plans of the Nature-CNN Q-network on every target: host latency (ms,
ratio to fp32 measured in the same window) and emulated Cortex-A72 / A76 guest
instructions per inference (ratio to fp32). One table, one run.

    python benchmarks/targets.py            (emulation prepared by
                                             autoquant targets --setup-emulation)

Writes benchmarks/results/targets.json and targets.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, quiet  # benchmarks/common.py

RESULTS = DEFAULT_RESULTS


def plans(table: Any) -> dict[str, Any]:
    from autoquant.compress import CompressionPlan, LayerSpec

    return {
        "fp32": None,
        "int8 (all layers)": CompressionPlan.uniform(table),
        "int8 fc1 only": CompressionPlan({"fc1": LayerSpec(8, 8)}),
        "int8 conv1 only": CompressionPlan({"conv1": LayerSpec(8, 8)}),
        "pruned 50 % fp32": CompressionPlan.uniform(table, weight_bits=None, act_bits=None, prune_ratio=0.5),
        "pruned 50 % + int8": CompressionPlan.uniform(table, prune_ratio=0.5),
        "int4 weights (all layers)": CompressionPlan.uniform(table, weight_bits=4),
    }


def main(argv: list[str] | None = None) -> int:
    quiet()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--calls", type=int, default=600, help="host timed calls per model")
    args = parser.parse_args(argv)
    from autoquant import __version__
    from autoquant.compress import compress, export_reference
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy
    from autoquant.targets import HostTarget, MeasureProtocol, get_target, host_facts

    path = args.policies / "dqn-PongNoFrameskip-v4" / "dqn_pong.pt"
    if not path.is_file():
        print(f"error: {path} not found; pass --policies DIR", file=sys.stderr)
        return 2
    bundle = load_policy(path, env_id="PongNoFrameskip-v4")
    table = analyse(bundle)
    states = record_states(bundle, n=256, seed=0, n_envs=2).states
    x = states[:1]
    reference = export_reference(bundle)
    host = HostTarget(protocol=MeasureProtocol(warmup=50, calls=args.calls, block=20))
    emulated = {name: get_target(name) for name in ("arm-a72-emulated", "arm-a76-emulated")}
    rows = []
    for label, plan in plans(table).items():
        compressed = None if plan is None else compress(bundle, plan, states)  # once: timed and counted
        model = reference if compressed is None else compressed.onnx
        row: dict[str, Any] = {"plan": label,
                               "macs": table.total_macs if compressed is None else compressed.table.total_macs}
        lat = host.measure(model, reference, x)
        row["host"] = {"p10_ms": lat.candidate["p10"], "ratio": lat.ratio}
        for name, target in emulated.items():
            res = target.measure(model, reference, x)
            row[name] = {"instructions": res.candidate["instructions"], "ratio": res.ratio}
        rows.append(row)
        print(f"{label:<28} host {row['host']['ratio']:.3f}  "
              + "  ".join(f"{n.split('-')[1]} {row[n]['ratio']:.3f} ({row[n]['instructions'] / 1e6:.2f} M)"
                          for n in emulated), flush=True)
    facts = {"host": host_facts(1), **{n: t.facts() for n, t in emulated.items()}}
    out = {"format": "autoquant.benchmark.targets", "version": 1, "autoquant_version": __version__,
           "network": "Nature-CNN Q-network (dqn-PongNoFrameskip-v4/dqn_pong.pt)", "rows": rows, "facts": facts,
           "command": "python benchmarks/targets.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "targets.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    lines = ["# One plan, three targets: host milliseconds and emulated Arm instructions", "",
             "Nature-CNN Q-network (`dqn-PongNoFrameskip-v4/dqn_pong.pt`), batch 1, 1 thread. Host: p10 of "
             f"{args.calls} calls interleaved with fp32, ratio to fp32 in the same window. Emulated: guest "
             "instructions per inference under qemu (aarch64 onnxruntime), ratio to fp32; a cost model, not time.",
             "", "Reproduce: `python benchmarks/targets.py`", "",
             "| plan | MACs | host ms (p10) | host ratio | A72 instr. | A72 ratio | A76 instr. | A76 ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a72, a76 = r["arm-a72-emulated"], r["arm-a76-emulated"]
        lines.append(f"| {r['plan']} | {r['macs'] / 1e6:.2f} M | {r['host']['p10_ms']:.4f} | {r['host']['ratio']:.3f} "
                     f"| {a72['instructions'] / 1e6:.2f} M | {a72['ratio']:.3f} | {a76['instructions'] / 1e6:.2f} M "
                     f"| {a76['ratio']:.3f} |")
    lines += ["", f"Host: {facts['host']['cpu']}, onnxruntime {facts['host']['onnxruntime']}. Emulated: "
              f"{facts['arm-a72-emulated']['qemu']}, onnxruntime {facts['arm-a72-emulated']['onnxruntime']} (aarch64)."]
    (RESULTS / "targets.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
