"""Which cheap proxy ranks plans by the reward they keep, and how well can any proxy do?

For each network, plans drawn at random from the joint search space (seeded) are built
with the graph builder, scored by every candidate proxy, and played paired with fp32:

- **primary retention**, under the environment's own protocol, as the search plays it. On
  the deterministic Pong game that is all 30 no-op starts, so it is exact for the protocol;
  elsewhere ``episodes`` seeds.
- **retest**: the same plan played again on two disjoint halves of fresh seeds, under a
  protocol where every seed is a game of its own (sticky actions p = 0.25 on Atari). The
  Spearman correlation of the two halves over the plans is retention's own test-retest
  reliability at that many games (Spearman-Brown gives it at twice as many); a proxy
  cannot rank a noisy measurement better than the measurement ranks itself.

Candidates (all judged against fp32's outputs on the same states):

- ``agreement@held`` / ``value@held`` / ``output@held``: on held-out states fp32 visited:
  share of the same greedy action; ``value_retention`` (1 - fp32's regret for the plan's
  actions relative to acting at random); 1 - relative output error;
- ``agreement@self`` / ``value@self``: on states the plan visits itself in one rollout from
  the run's proxy seed (``evaluate.visited_states``): what the search screens on;
- ``agreement@long``: one rollout four times as long (most of a Pong game);
- ``agreement@self4`` / ``value@self4``: four rollouts as long as the search's, from four
  seeds, under sticky actions on Atari (where the plan's own mistakes lead elsewhere);
- ``decisive@self4``: agreement on the quarter of those states where fp32's two best actions
  are furthest apart (the decisions that cost points when flipped).

    python benchmarks/proxy.py                      # LunarLander and Pong
    python benchmarks/proxy.py --networks lunarlander --plans 40
    python benchmarks/proxy.py --networks pong-near --out benchmarks/results/proxy_near.json

``pong-near`` draws its plans near the retention floor instead (8 bits or float, at most
half of a layer's channels pruned): most uniform draws from the joint space break the CNN,
and a proxy that only tells broken plans from working ones is not yet the one the search
needs.
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
                    "episodes": 10, "retest": 10, "states": 1024, "envs": 8},
    "pong": {"path": ("dqn-PongNoFrameskip-v4", "dqn_pong.pt"), "env": "PongNoFrameskip-v4", "plans": 16,
             "episodes": 30, "retest": 8, "states": 512, "envs": 8},
    # plans near the retention floor, where the search has to tell them apart: 8 bits or float, at most half
    # of a layer's channels pruned (uniform draws from the joint space mostly break the CNN)
    "pong-near": {"path": ("dqn-PongNoFrameskip-v4", "dqn_pong.pt"), "env": "PongNoFrameskip-v4", "plans": 10,
                  "episodes": 30, "retest": 8, "states": 512, "envs": 8, "near": True},
}
NEAR_BITS, NEAR_PRUNE = ("float", "8"), 0.5
PROXIES = ("agreement@held", "value@held", "output@held", "agreement@self", "value@self", "agreement@long",
           "agreement@self4", "value@self4", "decisive@self4")
STICKY = 0.25  # the retest protocol on Atari: sticky actions, every seed a game of its own
RETEST_SEED = 5  # the retest halves play episode_seeds(5, 2 * retest): 105000.., disjoint from the primary's


def spearman(xs: list[float], ys: list[float]) -> float | None:
    from autoquant.report import spearman as rho

    return rho(xs, ys)


def spearman_brown(r: float | None) -> float | None:
    """The reliability of a measurement twice as long, from its split-half correlation."""
    return None if r is None or r <= -1.0 else 2.0 * r / (1.0 + r)


def _scores(fid: dict[str, Any], where: str) -> dict[str, float]:
    out = {f"output@{where}": 1.0 - float(fid["output_error"])}
    if "action_agreement" in fid:
        out[f"agreement@{where}"] = float(fid["action_agreement"])
        out[f"value@{where}"] = float(fid["value_retention"])
    else:
        out[f"agreement@{where}"] = out[f"value@{where}"] = 1.0 - float(fid["action_error"])
    return out


def decisive_agreement(reference: np.ndarray, candidate: np.ndarray, action: Any) -> float:
    """Agreement on the quarter of the states where fp32's two best actions are furthest apart."""
    scores = np.asarray(action.scores(np.asarray(reference, dtype=np.float64)), dtype=np.float64)
    top2 = np.sort(scores, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    chosen = np.argsort(-gap, kind="stable")[: max(1, len(gap) // 4)]
    same = action.actions(np.asarray(reference, np.float32))[chosen] == action.actions(
        np.asarray(candidate, np.float32))[chosen]
    return float(np.mean(same))


def measure(name: str, spec: dict[str, Any], policies: Path, n_plans: int | None, seed: int) -> dict[str, Any]:
    from autoquant.compress import ActivationCache, compress, export_reference
    from autoquant.evaluate import (
        HELD_OUT_SEED_OFFSET,
        PROXY_SEED_OFFSET,
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
    from autoquant.policy import analyse, is_atari, load_policy, make_env, resolve_protocol
    from autoquant.search import load_space
    from autoquant.runtimes import OrtRunner

    path = policies.joinpath(*spec["path"])
    bundle = load_policy(path, env_id=spec["env"])
    table = analyse(bundle)
    space = load_space("joint", table)
    own = resolve_protocol(bundle.env_id)
    retest = resolve_protocol(bundle.env_id, STICKY) if is_atari(bundle.env_id) else own
    states = np.asarray(record_states(bundle, n=spec["states"], seed=seed).states, dtype=np.float32)
    held = record_states(bundle, n=max(256, spec["states"] // 4), seed=seed + HELD_OUT_SEED_OFFSET).states
    reference = export_reference(bundle)
    ref_runner = OrtRunner(reference)
    ref_held = ref_runner(held)
    n_self = proxy_state_count(bundle)
    arms: dict[str, dict[str, Any]] = {
        "primary": {"protocol": own, "seeds": episode_seeds(seed, spec["episodes"], own)},
        "retest_a": {"protocol": retest, "seeds": episode_seeds(RETEST_SEED, 2 * spec["retest"], retest)[::2]},
        "retest_b": {"protocol": retest, "seeds": episode_seeds(RETEST_SEED, 2 * spec["retest"], retest)[1::2]},
    }
    for arm in arms.values():
        arm["fp32"] = play_episodes(onnx_actor(bundle, reference), bundle.env_id, arm["seeds"],
                                    protocol=arm["protocol"], n_envs=spec["envs"])
        arm["random"] = play_episodes(random_actor(bundle.action_space, seed), bundle.env_id, arm["seeds"],
                                      protocol=arm["protocol"], n_envs=spec["envs"])
        print(f"  fp32 {arm['protocol'].name}: {arm['fp32'].mean:.2f} over {len(arm['seeds'])} episodes, "
              f"{arm['fp32'].distinct_games} distinct games; random {arm['random'].mean:.2f}", flush=True)
    cache = ActivationCache(bundle.net, states)
    proxy_env = make_env(bundle.env_id)
    self4_envs = [make_env(bundle.env_id, protocol=retest) for _ in range(4)]
    rng = np.random.default_rng(seed)
    distributions = space.distributions()
    if spec.get("near"):
        distributions = {key: type(dist)(tuple(c for c in dist.choices if (c in NEAR_BITS if key.endswith(".bits")
                                                                         else float(c) <= NEAR_PRUNE)))
                         for key, dist in distributions.items()}
    plans: list[dict[str, Any]] = []
    seen: set[str] = set()
    n_plans = n_plans or spec["plans"]
    try:
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

            def act(obs: np.ndarray) -> np.ndarray:
                return bundle.action.actions(runner(bundle.prepare(obs)))

            visited = visited_states(bundle, act, seed=seed, env=proxy_env)  # as the search's proxy does
            scores.update(_scores(fidelity(ref_runner(visited), runner(visited), bundle.action), "self"))
            t3 = time.perf_counter()
            long = visited_states(bundle, act, seed=seed, n=4 * n_self, env=proxy_env)
            scores["agreement@long"] = _scores(fidelity(ref_runner(long), runner(long), bundle.action),
                                               "long")["agreement@long"]
            t4 = time.perf_counter()
            four = record_states(bundle, n=4 * n_self, seed=seed + PROXY_SEED_OFFSET, epsilon=0.0, act=act,
                                 n_envs=4, envs=self4_envs).states
            ref_four, plan_four = ref_runner(four), runner(four)
            for key, value in _scores(fidelity(ref_four, plan_four, bundle.action), "self4").items():
                if not key.startswith("output"):
                    scores[key] = value
            scores["decisive@self4"] = decisive_agreement(ref_four, plan_four, bundle.action)
            t5 = time.perf_counter()
            retention: dict[str, Any] = {}
            for key, arm in arms.items():
                played = play_episodes(onnx_actor(bundle, compressed.onnx), bundle.env_id, arm["seeds"],
                                       protocol=arm["protocol"], n_envs=spec["envs"])
                paired = paired_comparison(played, arm["fp32"], arm["random"])
                retention[key] = {"retention": paired["retention"], "reward": played.mean,
                                  "distinct_games": played.distinct_games, "distinct_pairs": paired["distinct_pairs"],
                                  "exact": paired["exact"]}
            t6 = time.perf_counter()
            plans.append({"summary": plan.describe(), "plan": plan.to_json(), "retention": retention,
                          "proxies": scores,
                          "seconds": {"build": round(t1 - t0, 3), "held": round(t2 - t1, 3),
                                      "self": round(t3 - t2, 3), "long": round(t4 - t3, 3),
                                      "self4": round(t5 - t4, 3), "play": round(t6 - t5, 3)}})
            print(f"  {name} {len(plans):3d}/{n_plans}: retention "
                  + " ".join(f"{k} {v['retention']:6.3f}" for k, v in retention.items()) + "  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f"  [{plan.describe()}]", flush=True)
    finally:
        proxy_env.close()
        for env in self4_envs:
            env.close()
    primary = [p["retention"]["primary"]["retention"] for p in plans]
    half_a = [p["retention"]["retest_a"]["retention"] for p in plans]
    half_b = [p["retention"]["retest_b"]["retention"] for p in plans]
    pooled = [(a + b) / 2 for a, b in zip(half_a, half_b)]
    split_half = spearman(half_a, half_b)
    reliability = {"split_half": split_half, "spearman_brown": spearman_brown(split_half),
                   "primary_vs_retest": spearman(primary, pooled)}
    correlations = {proxy: spearman([p["proxies"][proxy] for p in plans], primary) for proxy in PROXIES}
    against_retest = {proxy: spearman([p["proxies"][proxy] for p in plans], pooled) for proxy in PROXIES}
    seconds = {phase: float(np.median([p["seconds"][phase] for p in plans])) for phase in plans[0]["seconds"]}
    references = {key: {"protocol": arm["protocol"].name, "sticky_actions": arm["protocol"].sticky_actions,
                        "seeds": arm["seeds"], "fp32": arm["fp32"].mean, "fp32_rewards": list(arm["fp32"].rewards),
                        "fp32_distinct_games": arm["fp32"].distinct_games, "exact": arm["fp32"].exact,
                        "random": arm["random"].mean} for key, arm in arms.items()}
    return {"network": name, "policy": rel(path), "env_id": bundle.env_id, "space": "near" if spec.get("near") else
            "joint", "plans": plans, "references": references,
            "states": spec["states"], "self_states": n_self, "spearman": correlations,
            "spearman_retest": against_retest, "reliability": reliability, "median_seconds": seconds}


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _reference_line(ref: dict[str, Any]) -> str:
    how = "exact over every start" if ref["exact"] else f"{len(ref['seeds'])} seeds {ref['seeds'][0]}.."
    return (f"{ref['protocol']} ({how}): fp32 {ref['fp32']:.2f} ({ref['fp32_distinct_games']} distinct games), "
            f"random {ref['random']:.2f}")


def write_markdown(data: dict[str, Any], out: Path) -> None:
    lines = [*header(data, "Which proxy ranks plans by the reward they keep"),
             "Plans drawn uniformly at random (seed 0) from the joint search space (`pong-near`: from its part near "
             "the retention floor, 8 bits or float and at most half of a layer's channels pruned), built by the graph "
             "builder "
             "(rounding as the search does: GPTQ for MLPs, nearest for the CNN), scored by each candidate proxy "
             "against fp32, then played paired with fp32 on the same seeds. Retention = (R_plan - R_random) / "
             "(R_fp32 - R_random) over those seeds.", "",
             "- **primary**: the environment's own protocol, as the search plays it (Pong: all 30 no-op starts of "
             "the deterministic game, so it is exact for that protocol);",
             "- **retest**: two disjoint halves of fresh seeds under a protocol where every seed is its own game "
             f"(sticky actions p={STICKY} on Atari). The Spearman correlation of the two halves over the plans is "
             "retention's own test-retest reliability at that many games; Spearman-Brown gives it for both halves "
             "together.", "",
             "Proxies: `agreement` = share of the same greedy action; `value` = 1 - fp32's regret for the plan's "
             "actions / the regret of acting at random; `output` = 1 - relative output error; `@held` on held-out "
             "states fp32 visited; `@self` on states the plan visits in one rollout of its own from the run's proxy "
             "seed (what the search screens on); `@long` one rollout four times as long; `@self4` four rollouts as "
             "long as the search's from four seeds, under sticky actions on Atari; `decisive@self4` = agreement on "
             "the quarter of those states where fp32's two best actions are furthest apart.", ""]
    columns = "| network | plans | against | " + " | ".join(PROXIES) + " |"
    lines += ["Spearman rank correlation of each proxy with measured retention:", "", columns,
              "|:---|---:|:---|" + "---:|" * len(PROXIES)]
    for net in data["networks"]:
        for key, label in (("spearman", "primary"), ("spearman_retest", "retest (both halves)")):
            lines.append(f"| {net['network']} | {len(net['plans'])} | {label} | "
                         + " | ".join(_f(net[key][p]) for p in PROXIES) + " |")
    lines += ["", "How reliable retention itself is (Spearman over the same plans):", "",
              "| network | retest games per half | half vs half | Spearman-Brown (both halves) | "
              "primary vs retest |", "|:---|---:|---:|---:|---:|"]
    for net in data["networks"]:
        r = net["reliability"]
        lines.append(f"| {net['network']} | {len(net['references']['retest_a']['seeds'])} | {_f(r['split_half'])} | "
                     f"{_f(r['spearman_brown'])} | {_f(r['primary_vs_retest'])} |")
    phases = list(data["networks"][0]["median_seconds"])
    lines += ["", "Median seconds per plan (build: graph builder with the activation cache; held, self, long, self4: "
              "the rollouts and proxies of each kind; play: all the paired episodes of the plan, every arm):", "",
              "| network | " + " | ".join(phases) + " |", "|:---|" + "---:|" * len(phases)]
    for net in data["networks"]:
        s = net["median_seconds"]
        lines.append(f"| {net['network']} | " + " | ".join(f"{s[k]:.3f}" for k in phases) + " |")
    for net in data["networks"]:
        refs = net["references"]
        best = max((p for p in PROXIES if net["spearman"][p] is not None), key=lambda p: net["spearman"][p],
                   default=None)
        lines += ["", f"## {net['network']}", "",
                  f"`{net['policy']}` on {net['env_id']}. {net['states']} calibration states, {net['self_states']} "
                  "self-visited states per rollout set.", "",
                  f"- primary, {_reference_line(refs['primary'])};",
                  f"- retest halves, {_reference_line(refs['retest_a'])} and {_reference_line(refs['retest_b'])}.",
                  "", f"Best-ranking proxy against the primary retention: `{best}` ({_f(net['spearman'][best])})."
                  if best else "No proxy ranks the plans.", "",
                  "| primary (games) | retest a | retest b | " + " | ".join(PROXIES) + " | plan |",
                  "|---:|---:|---:|" + "---:|" * len(PROXIES) + ":---|"]
        for p in sorted(net["plans"], key=lambda p: -p["retention"]["primary"]["retention"]):
            r = p["retention"]
            prim = (f"{r['primary']['retention']:.3f}" + (" exact" if r["primary"]["exact"] else "")
                    + f" ({r['primary']['distinct_pairs']})")
            lines.append(f"| {prim} | {r['retest_a']['retention']:.3f} | {r['retest_b']['retention']:.3f} | "
                         + " | ".join(f"{p['proxies'][k]:.3f}" for k in PROXIES) + f" | {p['summary']} |")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=["lunarlander", "pong"])
    parser.add_argument("--plans", type=int, default=None, help="plans per network (default: per network)")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "proxy.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    args = parser.parse_args(argv)
    if args.render:
        import json

        write_markdown(json.loads(args.out.read_text()), args.out.with_suffix(".md"))
        return 0
    quiet()
    record = Record("benchmarks/proxy.py", argv)  # before any work: the library that runs is the one recorded
    networks = []
    for name in args.networks:
        print(f"{name}:", flush=True)
        networks.append(measure(name, NETWORKS[name], args.policies, args.plans, args.seed))
        print(f"  spearman: {networks[-1]['spearman']}\n  reliability: {networks[-1]['reliability']}", flush=True)
    record.save(args.out, write_markdown, networks=networks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
