"""ActorQ with a PPO learner: does it learn as fast from quantized actors, corrected or not?

Two cases: CartPole-v1 (the default) and LunarLander-v3 (``--env lunarlander``).

``autoquant actorq run`` (``autoquant.actorq.run_actorq``) with the PPO learner (SB3 PPO,
fp32, from scratch, rl-zoo3's hyperparameters for the env) fed by Ray actors that sample
from their own policy and ship each action's log-probability. Three kinds of actors, on
the same seeds, in rounds whose order alternates:

  - fp32 actors (the learner's network in fp32, onnxruntime);
  - int8 actors, the learner correcting with truncated importance sampling
    (``--correction tis``, weights min(pi_learner / pi_actor, 2)). CartPole: the
    reference PPO policy's network (``ppo-CartPole-v1``) with every layer int8,
    calibrated on its states plus states spread over CartPole's termination bounds.
    LunarLander has no reference PPO policy: the bundle is made from SB3 PPO's own
    initial 64-64 network for it (the learner starts from scratch either way; the bundle
    fixes the network and the activation ranges), calibrated on states of random play
    spread 1.5x per dimension;
  - the same int8 actors, uncorrected (``--correction none``).

Reported per run: the greedy fp32 learner's mean over 20 fixed evaluation episodes every
``--eval-every`` env steps, the first evaluation at which it is solved (CartPole: mean >=
475; LunarLander: >= 200), the final mean, and the importance weights the actors'
quantization caused. Parity: the env steps to solve with quantized actors against fp32
actors, over the seeds.

    python benchmarks/actorq_ppo.py            # writes benchmarks/results/actorq_ppo.{json,md}
    python benchmarks/actorq_ppo.py --env lunarlander --seeds 3   # actorq_ppo_lunarlander.{json,md}
    python benchmarks/actorq_ppo.py --quick    # 2 seeds, 30k steps, prints only
    python benchmarks/actorq_ppo.py --render benchmarks/results/actorq_ppo.json   # summary and markdown again
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, rel  # benchmarks/common.py

CARTPOLE_BOUNDS = ([-2.4, -3.0, -0.21, -3.5], [2.4, 3.0, 0.21, 3.5])
# key: (env id, solved at, default budget, default evaluation interval, results name, envs per actor)
CASES = {"cartpole": ("CartPole-v1", 475.0, 100_000, 10_240, "actorq_ppo", 4),
         "lunarlander": ("LunarLander-v3", 200.0, 1_000_000, 65_536, "actorq_ppo_lunarlander", 8)}
VARIANTS = (("fp32", "fp32 actors", None), ("int8_tis", "int8 actors, truncated IS", "tis"),
            ("int8_none", "int8 actors, uncorrected", "none"))


def make_bundle(case: str, policies: Path, folder: Path) -> Path:
    from autoquant.actorq import write_bundle
    from autoquant.compress import CompressionPlan, compress
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy

    rng = np.random.default_rng(0)
    if case == "cartpole":
        policy = load_policy(policies / "ppo-CartPole-v1" / "CartPole-v1.zip", env_id="CartPole-v1")
        states = record_states(policy, n=1024, seed=0).states
        spread = rng.uniform(*CARTPOLE_BOUNDS, size=(1024, 4)).astype(np.float32)
    else:
        from stable_baselines3 import PPO

        from autoquant.policy import make_env

        env = make_env("LunarLander-v3")
        initial = PPO("MlpPolicy", env, seed=0, device="cpu")
        initial.save(folder.parent / "initial.zip")
        policy = load_policy(folder.parent / "initial.zip", env_id="LunarLander-v3")
        states = _random_states(env, 4096)
        low, high = states.min(axis=0), states.max(axis=0)
        centre, half = (low + high) / 2, (high - low) / 2 * 1.5
        spread = rng.uniform(centre - half, centre + half, size=(1024, states.shape[1])).astype(np.float32)
    plan = CompressionPlan.uniform(analyse(policy), weight_bits=8, act_bits=8)
    compressed = compress(policy, plan, np.concatenate([states, spread]), rounding="nearest")
    write_bundle(compressed, folder)
    return folder


def _random_states(env: Any, n: int) -> np.ndarray:
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    out = []
    while len(out) < n:
        out.append(obs)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    return np.asarray(out, dtype=np.float32)


def solved_at(evals: list[dict[str, Any]], solved: float) -> int | None:
    return next((int(e["step"]) for e in evals if e["mean"] >= solved), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from autoquant.actorq import ActorRunConfig, run_actorq

    env_id, solved, _, _, _, _ = CASES[args.env]
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(args.env, args.policies, Path(tmp) / "bundle")
        for r in range(args.seeds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for key, label, correction in order:
                config = ActorRunConfig(bundle=str(bundle), env_id=env_id, actors=args.actors,
                                        envs_per_actor=args.envs_per_actor, steps=args.steps,
                                        fp32_actors=correction is None, correction=correction or "none",
                                        eval_every=args.eval_every, eval_episodes=20, seed=args.seed + r)
                report = run_actorq(config)
                evals = report["curve"]["eval"]
                entry = {"seed": args.seed + r, "solved_at": solved_at(evals, solved),
                         "final": evals[-1]["mean"], "final_ci95": evals[-1]["ci95"],
                         "curve": [[e["step"], e["mean"]] for e in evals],
                         "importance_weights": report["learner"].get("importance_weights"),
                         "final_actor": report["final"]["actor"]["mean"],
                         "random": report["final"]["random"]["mean"],
                         "steps_per_cpu_s": report["actor_steps_per_s"]["per_cpu_s"],
                         "rebuild_paths": report["broadcasts"]["rebuild_paths"],
                         "rebuild_ms": (report["broadcasts"]["actor_rebuild_ms"] or {}).get("median"),
                         "env_steps": report["env_steps"], "wall_s": report["wall_s"]}
                runs[key].append(entry)
                print(f"  seed {args.seed + r} {label}: solved at {entry['solved_at']}, final {entry['final']:.1f} "
                      f"({entry['wall_s']:.0f} s)", flush=True)
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]], budget: int) -> dict[str, Any]:
    """Per variant: seeds solved, env steps to solve (unsolved counted at the budget), paired with fp32;
    intervals are ``autoquant.evaluate.ci95`` (Student t) of the mean."""
    from autoquant.evaluate import ci95

    out: dict[str, Any] = {}
    fp32 = runs["fp32"]
    for key, label, _ in VARIANTS:
        rows = runs[key]
        steps = [r["solved_at"] if r["solved_at"] is not None else budget for r in rows]
        diffs = [a - b for a, b in zip(steps, [r["solved_at"] if r["solved_at"] is not None else budget
                                                for r in fp32])]
        finals = [r["final"] for r in rows]
        mean, half = float(np.mean(steps)), ci95(steps)
        dmean, dhalf = float(np.mean(diffs)), ci95(diffs)
        out[key] = {"label": label, "solved": sum(r["solved_at"] is not None for r in rows), "seeds": len(rows),
                    "steps_to_solve": steps, "steps_mean": mean, "steps_ci95": half,
                    "minus_fp32_mean": dmean, "minus_fp32_ci95": dhalf,
                    "final_mean": float(np.mean(finals)), "finals": finals,
                    "rho_mean": _mean([r["importance_weights"]["rho_mean"] for r in rows if r["importance_weights"]]),
                    "kl_behaviour": _mean([r["importance_weights"]["kl_behaviour"] for r in rows
                                           if r["importance_weights"]]),
                    "truncated_share": _mean([r["importance_weights"]["truncated_share"] for r in rows
                                              if r["importance_weights"]])}
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# ActorQ with a PPO learner on {s['env_id']}: fp32 against int8 actors, corrected and uncorrected",
        "",
        f"autoquant {results['autoquant_version']}. Reproduce from the repository root "
        f"({results['wall_s'] / 60:.1f} min here):",
        "",
        f"    {results['command']}",
        "",
        (f"Protocol: `autoquant actorq run` with the PPO learner (SB3 PPO in fp32 from scratch, "
         f"{s['learner_source']}), {s['actors']} Ray actors x {s['envs_per_actor']} envs, "
         f"{s['steps']} env steps per run, the same seeds for every variant "
         f"(seed {s['seed']} + round), order alternating. The int8 actors run {s['bundle']} with every layer int8 "
         f"(weights per channel; activations calibrated on {s['calibration']}), rebuilt from every broadcast. Every "
         f"{s['eval_every']} env steps the fp32 learner plays 20 fixed evaluation episodes greedily; **solved at**: "
         f"the first evaluation whose mean is >= {s['solved']:g}; a run that never gets there counts at the budget. "
         "**vs fp32**: the per-seed difference in env steps to solve against fp32 actors on the same seed, mean "
         "and 95 % t interval. **pi_learner / pi_actor**: the importance weights of the actors' samples (mean over "
         "iterations), and the mean log-ratio log mu - log pi (the KL of the int8 policy from the learner's)."),
        "",
        "## Device",
        "",
        "\n".join(f"- {k}: {v}" for k, v in results["facts"].items()),
        "",
        "## Results",
        "",
        ("| actors | solved | env steps to solve, mean [95 % CI] | vs fp32, mean [95 % CI] | per seed | final "
         "mean (20 episodes each) | pi_learner / pi_actor | KL | above truncation |"),
        "|:---|---:|:---|:---|:---|---:|---:|---:|---:|",
    ]
    for key, row in results["summary"].items():
        per_seed = ", ".join("not solved" if r["solved_at"] is None else f"{r['solved_at'] / 1000:.0f}k"
                             for r in results["runs"][key])
        vs = ("-" if row["label"].startswith("fp32") else
              f"{row['minus_fp32_mean']:+.0f} [{row['minus_fp32_mean'] - row['minus_fp32_ci95']:+.0f}, "
              f"{row['minus_fp32_mean'] + row['minus_fp32_ci95']:+.0f}]")
        rho = "-" if row["rho_mean"] is None else f"{row['rho_mean']:.4f}"
        kl = "-" if row["kl_behaviour"] is None else f"{row['kl_behaviour']:.2e}"
        above = "-" if row["truncated_share"] is None else f"{row['truncated_share']:.2%}"
        lines.append(
            f"| {row['label']} | {row['solved']} / {row['seeds']} | {row['steps_mean']:.0f} "
            f"[{row['steps_mean'] - row['steps_ci95']:.0f}, {row['steps_mean'] + row['steps_ci95']:.0f}] | {vs} | "
            f"{per_seed} | {row['final_mean']:.1f} | {rho} | {kl} | {above} |")
    lines += ["", "Learning curves (greedy fp32 learner, mean of 20 episodes):", ""]
    for key, label, _ in VARIANTS:
        for run in results["runs"][key]:
            points = ", ".join(f"{step / 1000:.0f}k {mean:.0f}" for step, mean in run["curve"])
            lines.append(f"- {label}, seed {run['seed']}: {points}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--env", choices=sorted(CASES), default="cartpole")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: the zoo's budget)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--envs-per-actor", type=int, default=None, help="default: the zoo's envs over 2 actors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 30k steps, print only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="run nothing: recompute the summary of a results JSON and write it and its markdown again")
    args = parser.parse_args(argv)
    if args.render is not None:
        results = json.loads(args.render.read_text())
        results["summary"] = summarize(results["runs"], results["settings"]["steps"])
        args.render.write_text(json.dumps(results, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(markdown(results))
        print(f"wrote {rel(args.render)} and {rel(args.render.with_suffix('.md'))}")
        return 0
    env_id, solved, budget, eval_every, name, envs = CASES[args.env]
    args.steps = args.steps or budget
    args.eval_every = args.eval_every or eval_every
    args.envs_per_actor = args.envs_per_actor or envs
    if args.quick:
        args.seeds, args.steps = 2, min(args.steps, 30_000)
    warnings.filterwarnings("ignore")
    import onnxruntime
    import ray
    import torch

    import autoquant
    from autoquant.actorq import ppo_preset
    from autoquant.targets import host_facts

    command = "python benchmarks/actorq_ppo.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    facts = {**host_facts(1), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
             "torch": torch.__version__, "ray": ray.__version__, "loadavg_at_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(args.actors, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR, object_store_memory=512 * 1024 ** 2)
    try:
        runs = run(args)
    finally:
        ray.shutdown()
    facts["loadavg_at_end"] = os.getloadavg()[0]
    source, _ = ppo_preset(env_id)
    bundle_text, calibration = (
        ("the reference CartPole PPO's network (`ppo-CartPole-v1`)", "the policy's states plus states over "
         "CartPole's termination bounds") if args.env == "cartpole" else
        ("SB3 PPO's initial 64-64 Tanh network for LunarLander (no reference PPO policy exists for it; the learner "
         "starts from scratch either way)", "states of random play plus states spread 1.5x over their range"))
    results = {"format": "autoquant.benchmark.actorq_ppo", "version": 1,
               "autoquant_version": autoquant.__version__, "command": command.strip(), "facts": facts,
               "settings": {"steps": args.steps, "seeds": args.seeds, "seed": args.seed, "actors": args.actors,
                            "envs_per_actor": args.envs_per_actor, "eval_every": args.eval_every,
                            "learner_source": source, "solved": solved, "env_id": env_id, "bundle": bundle_text,
                            "calibration": calibration},
               "runs": runs, "summary": summarize(runs, args.steps), "wall_s": time.perf_counter() - t0}
    text = markdown(results)
    print("\n" + text)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / f"{name}.md").write_text(text)
        print(f"wrote {rel(out / f'{name}.json')} and {rel(out / f'{name}.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
