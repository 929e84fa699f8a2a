"""Do per-layer sensitivities add up? The question an additive bound (the ILP, the
meta-RL agent's surrogate) rests on.

For each network, every layer choice of the joint space is measured alone (the rest
fp32), then random joint plans (seeded) are measured whole. For each candidate
sensitivity, printed and written: Spearman's rank correlation between the sum of the
plan's single-layer values and the plan's own value, the Pearson correlation, and the
median ratio whole / sum (1: exactly additive).

Candidates, all against fp32 on the same states:

- ``output_mse``: mean squared output difference / mean squared output, held-out states
  (what the search's sensitivities use);
- ``output_l1``: mean |output difference| / mean |output|, held-out states;
- ``disagree@held`` / ``disagree@self``: 1 - action agreement on held-out states, or on
  states the plan visits itself (the proxy's states);
- ``value_loss@self``: 1 - value retention on the plan's own states.

    python benchmarks/additivity.py                   # Pong and LunarLander, about 3 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, Record, header, quiet  # noqa: E402

NETWORKS: dict[str, dict[str, Any]] = {
    "pong": {"path": ("dqn-PongNoFrameskip-v4", "dqn_pong.pt"), "env": "PongNoFrameskip-v4", "states": 512,
             "plans": 40},
    "lunarlander": {"path": ("dqn-LunarLander-v2", "LunarLander-v2.zip"), "env": None, "states": 1024,
                    "plans": 40},
}
METRICS = ("output_mse", "output_l1", "disagree@held", "disagree@self", "value_loss@self")


def measure(name: str, spec: dict[str, Any], policies: Path, n_plans: int | None, seed: int) -> dict[str, Any]:
    from autoquant.compress import ActivationCache, CompressionPlan, compress, export_reference
    from autoquant.evaluate import HELD_OUT_SEED_OFFSET, fidelity, record_states, visited_states
    from autoquant.policy import analyse, load_policy, make_env
    from autoquant.report import spearman
    from autoquant.agents import layer_choices
    from autoquant.search import load_space
    from autoquant.runtimes import OrtRunner

    bundle = load_policy(policies.joinpath(*spec["path"]), env_id=spec["env"])
    table = analyse(bundle)
    space = load_space("joint", table)
    states = np.asarray(record_states(bundle, n=spec["states"], seed=seed).states, dtype=np.float32)
    held = record_states(bundle, n=256, seed=seed + HELD_OUT_SEED_OFFSET).states
    reference = OrtRunner(export_reference(bundle))
    ref_held = reference(held)
    cache = ActivationCache(bundle.net, states)
    env = make_env(bundle.env_id)

    def metrics(plan: Any) -> dict[str, float]:
        runner = OrtRunner(compress(bundle, plan, states, seed=seed, cache=cache, verify_kernels=False).onnx)
        on_held = fidelity(ref_held, runner(held), bundle.action)
        own = visited_states(bundle, lambda o: bundle.action.actions(runner(bundle.prepare(o))), seed=seed, env=env)
        on_own = fidelity(reference(own), runner(own), bundle.action)
        return {"output_mse": on_held["output_mse"], "output_l1": on_held["output_error"],
                "disagree@held": 1.0 - on_held["action_agreement"], "disagree@self": 1.0 - on_own["action_agreement"],
                "value_loss@self": 1.0 - on_own["value_retention"]}

    start = time.perf_counter()
    choices = layer_choices(space)
    singles = []
    for layer, options in zip(space.layers, choices):
        found = {}
        for choice in options:
            found[choice] = dict.fromkeys(METRICS, 0.0) if choice.identity else metrics(
                CompressionPlan({layer.name: choice.spec()}, channel_multiple=space.channel_multiple))
        singles.append(found)
    singles_s = time.perf_counter() - start
    rng = np.random.default_rng(seed + 1)
    rows, seen = [], set()
    while len(rows) < (n_plans or spec["plans"]):
        picks = [layer[int(rng.integers(len(layer)))] for layer in choices]
        plan = CompressionPlan({layer.name: c.spec() for layer, c in zip(space.layers, picks)},
                               channel_multiple=space.channel_multiple)
        if plan.is_identity or plan.describe() in seen:
            continue
        seen.add(plan.describe())
        whole = metrics(plan)
        summed = {m: float(sum(singles[i][c][m] for i, c in enumerate(picks))) for m in METRICS}
        rows.append({"plan": plan.describe(), "whole": whole, "summed": summed})
    result = {}
    for m in METRICS:
        whole = [r["whole"][m] for r in rows]
        summed = [r["summed"][m] for r in rows]
        ratios = [w / s for w, s in zip(whole, summed) if s > 0]
        result[m] = {"spearman": spearman(summed, whole), "pearson": float(np.corrcoef(summed, whole)[0, 1]),
                     "median_ratio": float(np.median(ratios)) if ratios else None}
    print(f"  {name}: " + ", ".join(f"{m} {v['spearman']:.2f}" for m, v in result.items()), flush=True)
    return {"network": name, "singles": sum(len(s) for s in singles), "singles_s": singles_s, "plans": rows,
            "metrics": result}


def write_markdown(data: dict[str, Any], path: Path) -> None:
    lines = [
        *header(data, "Do sensitivities add up?"),
        "Each layer choice of the joint space measured alone, then random joint plans measured whole. Per "
        "candidate: Spearman and Pearson correlation between the sum of a plan's single-layer values and its "
        "whole value, and the median whole / sum (1 = exactly additive). `output_mse` is what the search's "
        "sensitivities (the ILP, the meta-RL agent's surrogate) sum.",
        "",
        "| network | plans | singles | metric | Spearman | Pearson | median whole / sum |",
        "|:---|---:|---:|:---|---:|---:|---:|",
    ]
    for n in data["networks"]:
        for m, v in n["metrics"].items():
            ratio = "n/a" if v["median_ratio"] is None else f"{v['median_ratio']:.2f}"
            lines.append(f"| {n['network']} | {len(n['plans'])} | {n['singles']} | {m} | {v['spearman']:.2f} | "
                         f"{v['pearson']:.2f} | {ratio} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=["pong", "lunarlander"])
    parser.add_argument("--plans", type=int, default=None, help="random joint plans per network (default 40)")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "additivity.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet()
    record = Record("benchmarks/additivity.py", argv)
    networks = [measure(name, NETWORKS[name], args.policies, args.plans, args.seed) for name in args.networks]
    record.save(args.out, write_markdown, networks=networks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
