"""Which cheap proxy ranks plans by the reward they keep?

For each network, plans drawn at random from the joint search space (seeded) are built
with the graph builder, scored by every candidate proxy, and played on the same seeds as
fp32 (paired). Printed and written: each proxy's Spearman rank correlation with the
measured retention, its cost per plan, and the plans themselves.

Candidates (all against fp32's outputs on the same states):

- ``agreement@held``: share of the same greedy action on held-out states fp32 visited;
- ``value@held``: ``value_retention`` on those states (fp32's regret for the candidate's
  actions, relative to acting at random);
- ``output@held``: 1 - mean |output difference| / mean |output|;
- ``agreement@self`` / ``value@self``: the same on states the compressed policy visits
  itself (``evaluate.visited_states``: one rollout from the run's proxy seed, the same
  for every plan, fp32 answering on each state). ``agreement@self`` is what the search
  screens on.

    python benchmarks/proxy.py                      # LunarLander and Pong
    python benchmarks/proxy.py --networks lunarlander --plans 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, Record, header, quiet, rel  # noqa: E402

NETWORKS: dict[str, dict[str, Any]] = {
    "lunarlander": {"path": ("dqn-LunarLander-v2", "LunarLander-v2.zip"), "env": None, "plans": 48,
                    "episodes": 10, "states": 1024, "envs": 8},
    "pong": {"path": ("dqn-PongNoFrameskip-v4", "dqn_pong.pt"), "env": "PongNoFrameskip-v4", "plans": 24,
             "episodes": 6, "states": 512, "envs": 6},
}
PROXIES = ("agreement@held", "value@held", "output@held", "agreement@self", "value@self")


def spearman(xs: list[float], ys: list[float]) -> float | None:
    from autoquant.report import spearman as rho

    return rho(xs, ys)


def _scores(fid: dict[str, Any], where: str) -> dict[str, float]:
    out = {f"output@{where}": 1.0 - float(fid["output_error"])}
    if "action_agreement" in fid:
        out[f"agreement@{where}"] = float(fid["action_agreement"])
        out[f"value@{where}"] = float(fid["value_retention"])
    else:
        out[f"agreement@{where}"] = out[f"value@{where}"] = 1.0 - float(fid["action_error"])
    return out


def measure(name: str, spec: dict[str, Any], policies: Path, n_plans: int | None, seed: int) -> dict[str, Any]:
    from autoquant.compress import ActivationCache, compress, export_reference
    from autoquant.evaluate import (
        HELD_OUT_SEED_OFFSET,
        episode_seeds,
        fidelity,
        onnx_actor,
        paired_comparison,
        play_episodes,
        random_actor,
        proxy_state_count,
        record_states,
        visited_states,
    )
    from autoquant.policy import analyse, load_policy, make_env
    from autoquant.search import load_space
    from autoquant.targets import OrtRunner

    path = policies.joinpath(*spec["path"])
    bundle = load_policy(path, env_id=spec["env"])
    table = analyse(bundle)
    space = load_space("joint", table)
    states = np.asarray(record_states(bundle, n=spec["states"], seed=seed).states, dtype=np.float32)
    held = record_states(bundle, n=max(256, spec["states"] // 4), seed=seed + HELD_OUT_SEED_OFFSET).states
    reference = export_reference(bundle)
    ref_held = OrtRunner(reference)(held)
    seeds = episode_seeds(seed, spec["episodes"])
    fp32 = play_episodes(onnx_actor(bundle, reference), bundle.env_id, seeds, n_envs=spec["envs"])
    floor = play_episodes(random_actor(bundle.action_space, seed), bundle.env_id, seeds, n_envs=spec["envs"])
    cache = ActivationCache(bundle.net, states)
    proxy_env = make_env(bundle.env_id)
    rng = np.random.default_rng(seed)
    distributions = space.distributions()
    plans: list[dict[str, Any]] = []
    seen: set[str] = set()
    n_plans = n_plans or spec["plans"]
    while len(plans) < n_plans:
        chosen = {key: dist.choices[int(rng.integers(len(dist.choices)))] for key, dist in distributions.items()}
        plan = space.plan(chosen)
        if plan.describe() in seen or plan.is_identity:
            continue
        seen.add(plan.describe())
        t0 = time.perf_counter()
        compressed = compress(bundle, plan, states, verify_kernels=False, cache=cache)  # as the search does
        t1 = time.perf_counter()
        runner = OrtRunner(compressed.onnx)
        scores = _scores(fidelity(ref_held, runner(held), bundle.action), "held")
        t2 = time.perf_counter()
        own = visited_states(bundle, lambda obs: bundle.action.actions(runner(bundle.prepare(obs))), seed=seed,
                             env=proxy_env)  # as the search's proxy does
        ref_own = OrtRunner(reference)(own)
        scores.update(_scores(fidelity(ref_own, runner(own), bundle.action), "self"))
        t3 = time.perf_counter()
        episodes = play_episodes(onnx_actor(bundle, compressed.onnx), bundle.env_id, seeds, n_envs=spec["envs"])
        t4 = time.perf_counter()
        retention = paired_comparison(episodes, fp32, floor)["retention"]
        plans.append({"summary": plan.describe(), "plan": plan.to_json(), "retention": retention,
                      "reward": episodes.mean, "proxies": scores,
                      "seconds": {"build": round(t1 - t0, 3), "held": round(t2 - t1, 3), "self": round(t3 - t2, 3),
                                  "play": round(t4 - t3, 3)}})
        print(f"  {name} {len(plans):3d}/{n_plans}: retention {retention:6.3f}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f"  [{plan.describe()}]", flush=True)
    retention = [p["retention"] for p in plans]
    correlations = {proxy: spearman([p["proxies"][proxy] for p in plans], retention) for proxy in PROXIES}
    seconds = {phase: float(np.median([p["seconds"][phase] for p in plans])) for phase in plans[0]["seconds"]}
    return {"network": name, "policy": rel(path), "env_id": bundle.env_id, "plans": plans, "seeds": seeds,
            "episodes": spec["episodes"], "fp32_reward": fp32.mean, "random_reward": floor.mean,
            "fp32_rewards": list(fp32.rewards), "states": spec["states"], "self_states": proxy_state_count(bundle),
            "spearman": correlations, "median_seconds": seconds}


def write_markdown(data: dict[str, Any], out: Path) -> None:
    lines = [*header(data, "Which proxy ranks plans by the reward they keep"),
             "Plans drawn uniformly at random from the joint search space (seed 0), built by the graph builder "
             "(rounding as the search does: GPTQ for MLPs, nearest for the CNN), scored by each candidate proxy against fp32, then played on the same seeds as "
             "fp32. Retention = (R_plan - R_random) / (R_fp32 - R_random) over those seeds. Proxies: "
             "`agreement` = share of the same greedy action; `value` = 1 - fp32's regret for the plan's actions / "
             "the regret of acting at random (`value_retention`); `output` = 1 - relative output error; `@held` on "
             "held-out states fp32 visited, `@self` on states the compressed policy visits in rollouts of its own.",
             ""]
    columns = "| network | plans | episodes each | " + " | ".join(PROXIES) + " |"
    lines += ["Spearman rank correlation of each proxy with measured retention:", "", columns,
              "|:---|---:|---:|" + "---:|" * len(PROXIES)]
    for net in data["networks"]:
        cells = [f"{net['spearman'][p]:.2f}" if net["spearman"][p] is not None else "n/a" for p in PROXIES]
        lines.append(f"| {net['network']} | {len(net['plans'])} | {net['episodes']} | " + " | ".join(cells) + " |")
    lines += ["", "Median seconds per plan (build: graph builder with the activation cache; held: proxies on "
              "held-out states; self: rollouts of the compressed policy plus proxies on their states; play: the "
              "paired episodes):", "", "| network | build | held | self | play |", "|:---|---:|---:|---:|---:|"]
    for net in data["networks"]:
        s = net["median_seconds"]
        lines.append(f"| {net['network']} | {s['build']:.3f} | {s['held']:.3f} | {s['self']:.3f} | {s['play']:.1f} |")
    for net in data["networks"]:
        best = max((p for p in PROXIES if net["spearman"][p] is not None), key=lambda p: net["spearman"][p],
                   default=None)
        lines += ["", f"## {net['network']}", "",
                  f"`{net['policy']}` on {net['env_id']}: fp32 reward {net['fp32_reward']:.2f} on seeds "
                  f"{net['seeds'][0]}..{net['seeds'][-1]} ({', '.join(f'{r:g}' for r in net['fp32_rewards'])}), "
                  f"random {net['random_reward']:.2f}. {net['states']} calibration states, {net['self_states']} "
                  f"self-visited states per plan.", "",
                  f"Best-ranking proxy here: `{best}`." if best else "No proxy ranks the plans.", "",
                  "| retention | " + " | ".join(PROXIES) + " | plan |", "|---:|" + "---:|" * len(PROXIES) + ":---|"]
        for p in sorted(net["plans"], key=lambda p: -p["retention"]):
            lines.append(f"| {p['retention']:.3f} | " + " | ".join(f"{p['proxies'][k]:.3f}" for k in PROXIES)
                         + f" | {p['summary']} |")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=["lunarlander", "pong"])
    parser.add_argument("--plans", type=int, default=None, help="plans per network (default: per network)")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "proxy.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet()
    record = Record("benchmarks/proxy.py", argv)  # before any work: the library that runs is the one recorded
    networks = []
    for name in args.networks:
        print(f"{name}:", flush=True)
        networks.append(measure(name, NETWORKS[name], args.policies, args.plans, args.seed))
        print(f"  spearman: {networks[-1]['spearman']}", flush=True)
    record.save(args.out, write_markdown, networks=networks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
