"""ActorQ: the actor-learner loop with quantized actors against fp32 actors, side by side.

``autoquant actorq run`` (``autoquant.actorq.run_actorq``) on one machine, one Ray
session: Ray actors step their envs with the bundle's quantized policy (or the fp32
network, the same onnxruntime path with float weights) and feed an fp32 SB3 DQN learner
that starts from scratch; weights are broadcast every ``--broadcast-every`` env steps and
each actor rebuilds its policy from them. Every variant of a network runs with the same
budget and learner hyperparameters, in rounds whose order alternates (round r: seed
SEED + r for every variant), so the variants share the machine's conditions and seeds.

  - CartPole-v1, the project's example DQN (``examples/cartpole_dqn.zip``, 64-64 MLP),
    learner hyperparameters of rl-zoo3: fp32 actors; int8 fc1; int8 everywhere (both
    calibrated on the policy's states plus states spread over CartPole's termination
    bounds); and int8 everywhere calibrated on the policy's states alone, the way a
    bundle exported from a search is calibrated. Reported: actor env-steps/s, policy
    time per call, learner updates/s, rebuild time per broadcast, and the reward curve
    (greedy evaluations of the fp32 learner on fixed seeds; its last point is the final
    reward) with the actors' agreement with the learner's greedy actions.
  - PongNoFrameskip-v4, the Nature-CNN DQN (``dqn-PongNoFrameskip-v4/dqn_pong.pt`` gives the
    bundle's calibration and the network shape; the learner starts from scratch): fp32
    actors, int8, int8 quantized centrally by the learner (actors only open the session),
    and int8 with 50 % of the hidden channels pruned; then fp32, int8 and pruned int8
    actors that step 4 envs each with one batched policy call, next to the Amdahl bound
    that the measured policy share allows. A few thousand steps are far too few for Pong
    to learn anything, so only speeds are reported.

Run from the repository root:

    python benchmarks/actorq.py            # writes benchmarks/results/actorq.{json,md}
    python benchmarks/actorq.py --quick    # small budgets, prints only
    python benchmarks/actorq.py --render benchmarks/results/actorq.json   # rewrite the markdown only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, REPO, rel  # benchmarks/common.py

DEFAULT_OUT = DEFAULT_RESULTS


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    make: Callable[[Any, Any, np.ndarray], Any] | None  # (bundle, table, states) -> CompressionPlan; None: fp32 actors
    wide: bool = False  # calibrate on the policy's states and states over the env's bounds
    envs: int = 1  # envs per actor, stepped in lockstep with one batched policy call
    baseline: str = "fp32"  # the variant the "vs fp32" columns and the Amdahl bound compare with
    central: bool = False  # the learner quantizes and broadcasts int8; actors only open the session


@dataclass(frozen=True)
class Network:
    key: str
    title: str
    path: str  # under the policies folder, or "examples/..." under the repository
    env_id: str
    states: int
    steps: int
    quick_steps: int
    eval_episodes: int
    repeats: int
    learner: dict[str, Any] = field(default_factory=dict)  # DQNConfig overrides of the env's preset
    variants: tuple[Variant, ...] = ()
    note: str = ""


def _uniform(table: Any, prune: float = 0.0) -> Any:
    from autoquant.compress import CompressionPlan

    return CompressionPlan.uniform(table, weight_bits=8, act_bits=8, prune_ratio=prune)


def _fc1(table: Any) -> Any:
    from autoquant.compress import CompressionPlan, LayerSpec

    return CompressionPlan({"fc1": LayerSpec(8, 8)})


CARTPOLE_BOUNDS = ([-2.4, -3.0, -0.21, -3.5], [2.4, 3.0, 0.21, 3.5])  # x, v, theta (termination), omega

NETWORKS = (
    Network("cartpole", "MLP Q-network 64-64 (DQN, CartPole-v1)", "examples/cartpole_dqn.zip", "CartPole-v1",
            states=1024, steps=20_000, quick_steps=4000, eval_episodes=10, repeats=4,
            variants=(
                Variant("fp32", "fp32 actors", None),
                Variant("int8_fc1", "int8 fc1 (wide calibration)", lambda b, t, s: _fc1(t), wide=True),
                Variant("int8", "int8 all layers (wide calibration)", lambda b, t, s: _uniform(t), wide=True),
                Variant("int8_policy_calib", "int8 all layers (calibrated on the policy's states only)",
                        lambda b, t, s: _uniform(t)),
            )),
    Network("pong", "Nature-CNN Q-network (DQN, PongNoFrameskip-v4)", "dqn-PongNoFrameskip-v4/dqn_pong.pt",
            "PongNoFrameskip-v4", states=256, steps=4000, quick_steps=1500, eval_episodes=0, repeats=2,
            learner={"learning_starts": 1000, "buffer_size": 10_000},
            variants=(
                Variant("fp32", "fp32 actors", None),
                Variant("int8", "int8 all layers", lambda b, t, s: _uniform(t)),
                Variant("int8_pruned", "int8, hidden channels pruned 50 %", lambda b, t, s: _uniform(t, 0.5)),
                Variant("int8_central", "int8 all layers, quantized by the learner", lambda b, t, s: _uniform(t),
                        central=True),
                Variant("fp32_x4", "fp32 actors, 4 envs each", None, envs=4, baseline="fp32_x4"),
                Variant("int8_x4", "int8 all layers, 4 envs each", lambda b, t, s: _uniform(t), envs=4,
                        baseline="fp32_x4"),
                Variant("int8_pruned_x4", "int8, pruned 50 %, 4 envs each", lambda b, t, s: _uniform(t, 0.5),
                        envs=4, baseline="fp32_x4"),
            ),
            note=("learning does not progress in this budget (the zoo trains Pong for 10M steps); "
                  "learning_starts lowered to 1000 and the buffer to 10000 so that the learner trains and the "
                  "run fits in memory; speeds only")),
)




def make_bundles(network: Network, policies: Path, folder: Path) -> dict[str, Path]:
    """One ActorQ bundle per quantized variant (fp32 actors use the first one's network)."""
    from autoquant.actorq import write_bundle
    from autoquant.compress import compress
    from autoquant.evaluate import record_states
    from autoquant.policy import analyse, load_policy

    path = REPO / network.path if network.path.startswith("examples/") else policies / network.path
    bundle = load_policy(path, env_id=network.env_id)
    table = analyse(bundle)
    states = record_states(bundle, n=network.states, seed=0, n_envs=2).states
    wide = states
    if network.key == "cartpole":
        spread = np.random.default_rng(0).uniform(*CARTPOLE_BOUNDS, size=(network.states, 4)).astype(np.float32)
        wide = np.concatenate([states, spread])
    out: dict[str, Path] = {}
    for variant in network.variants:
        if variant.make is None:
            continue
        plan = variant.make(bundle, table, states)
        compressed = compress(bundle, plan, wide if variant.wide else states, rounding="nearest")
        write_bundle(compressed, folder / variant.key)
        out[variant.key] = folder / variant.key
    return out


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the results keep of one run's report (the per-episode curve is left out)."""
    evals = report["curve"]["eval"]
    final = report.get("final") or {}
    return {
        "actor_steps_per_s": report["actor_steps_per_s"],
        "policy_ms_per_call": report["policy_ms_per_call"],
        "policy_cpu_ms_per_call": report["policy_cpu_ms_per_call"],
        "policy_cpu_ms_per_step": report["policy_cpu_ms_per_step"],
        "policy_cpu_share": report["policy_cpu_share"],
        "envs_per_actor": report["actors"]["envs_per_actor"],
        "rebuild_paths": report["broadcasts"]["rebuild_paths"],
        "env_ms_per_step": report["env_ms_per_step"],
        "policy_calls": sum(a["policy_calls"] for a in report["per_actor"]),
        "policy_steps": sum(a["policy_steps"] for a in report["per_actor"]),
        "env_steps": report["env_steps"],
        "learner": {k: report["learner"][k] for k in ("updates", "updates_per_s", "updates_per_s_wall", "train_s")},
        "broadcasts": report["broadcasts"],
        "eval": [{k: e[k] for k in ("step", "mean", "ci95", "updates", "actor_agreement")} for e in evals],
        "final_learner_reward": final.get("learner_fp32", {}).get("mean"),
        "final_actor_reward": final.get("actor", {}).get("mean"),
        "random_reward": (final.get("random") or {}).get("mean"),
        "episodes": len(report["curve"]["episodes"]),
        "actor_episode_return_last_20": (float(np.mean([e[1] for e in sorted(report["curve"]["episodes"])[-20:]]))
                                         if report["curve"]["episodes"] else None),
        "loop_s": report["loop_s"], "wall_s": report["wall_s"],
        "loadavg_after": os.getloadavg()[0],
    }


def run_network(network: Network, policies: Path, *, actors: int, steps: int, repeats: int, seed: int,
                broadcast_every: int) -> dict[str, Any]:
    import dataclasses

    from autoquant.actorq import ActorRunConfig, dqn_preset, run_actorq

    print(f"\n{network.title}: {network.path}, {steps} env steps, {actors} actors, {repeats} rounds", flush=True)
    source, preset = dqn_preset(network.env_id)
    learner = dataclasses.replace(preset, **network.learner)
    runs: dict[str, list[dict[str, Any]]] = {v.key: [] for v in network.variants}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = make_bundles(network, policies, Path(tmp))
        first = next(iter(bundles.values()))
        meta: dict[str, Any] = {}
        for r in range(repeats):
            order = list(network.variants) if r % 2 == 0 else list(network.variants)[::-1]
            for variant in order:
                config = ActorRunConfig(
                    bundle=str(bundles.get(variant.key, first)), env_id=network.env_id, actors=actors, steps=steps,
                    fp32_actors=variant.make is None, broadcast_every=broadcast_every, envs_per_actor=variant.envs,
                    central=variant.central,
                    eval_episodes=network.eval_episodes, seed=seed + r, learner=learner)
                report = run_actorq(config)
                summary = {"seed": seed + r, **_summary(report)}
                runs[variant.key].append(summary)
                meta[variant.key] = {"summary": report["bundle"]["summary"] if variant.make else "fp32",
                                     "payload_bytes": report["broadcasts"]["payload_bytes"],
                                     "central_payload_bytes": (report["bundle"]["payload_bytes"]["central"]
                                                               if variant.make else None)}
                final = summary["final_learner_reward"]
                print(f"  round {r + 1} {variant.label}: {summary['actor_steps_per_s']['total']:.0f} actor env-steps/s "
                      f"({summary['actor_steps_per_s']['per_cpu_s']:.0f} per actor CPU-s), policy "
                      f"{summary['policy_ms_per_call']:.4f} ms/call ({summary['policy_cpu_ms_per_call']:.4f} CPU), "
                      f"learner {summary['learner']['updates_per_s']:.0f} updates/s"
                      + (f", final greedy learner {final:.1f}" if final is not None else "")
                      + f" ({summary['wall_s']:.0f} s)", flush=True)
    rows = {}
    for variant in network.variants:
        reps = runs[variant.key]

        def median(get: Callable[[dict[str, Any]], float | None], reps: list[dict[str, Any]] = reps) -> float | None:
            values = [v for v in (get(x) for x in reps) if v is not None]
            return float(statistics.median(values)) if values else None

        rows[variant.key] = {
            "label": variant.label, "plan": meta[variant.key]["summary"], "wide_calibration": variant.wide,
            "envs_per_actor": variant.envs, "baseline": variant.baseline,
            "policy_cpu_ms_per_step": median(lambda x: x["policy_cpu_ms_per_step"]),
            "policy_cpu_share": median(lambda x: x["policy_cpu_share"]),
            "rebuild_paths": sorted({p for x in reps for p in x["rebuild_paths"]}),
            "payload_bytes": meta[variant.key]["payload_bytes"],
            "central_payload_bytes": meta[variant.key]["central_payload_bytes"],
            "actor_steps_per_s": median(lambda x: x["actor_steps_per_s"]["total"]),
            "actor_steps_per_s_per_actor": median(lambda x: float(np.mean(x["actor_steps_per_s"]["per_actor"]))),
            "achieved_steps_per_s": median(lambda x: x["actor_steps_per_s"]["achieved"]),
            "steps_per_cpu_s": median(lambda x: x["actor_steps_per_s"]["per_cpu_s"]),
            "policy_ms_per_call": median(lambda x: x["policy_ms_per_call"]),
            "policy_cpu_ms_per_call": median(lambda x: x["policy_cpu_ms_per_call"]),
            "env_ms_per_step": median(lambda x: x["env_ms_per_step"]),
            "greedy_share": median(lambda x: x["policy_steps"] / x["env_steps"]),
            "learner_updates_per_s": median(lambda x: x["learner"]["updates_per_s"]),
            "learner_updates_per_s_wall": median(lambda x: x["learner"]["updates_per_s_wall"]),
            "rebuild_ms": median(lambda x: (x["broadcasts"]["actor_rebuild_ms"] or {}).get("median")),
            "rebuild_cpu_ms": median(lambda x: (x["broadcasts"].get("actor_rebuild_cpu_ms") or {}).get("median")),
            "rebuild_env_steps": median(_rebuild_env_steps),
            "first_rebuild_ms": median(lambda x: (x["broadcasts"]["actor_first_rebuild_ms"] or {}).get("median")),
            "final_learner_rewards": [x["final_learner_reward"] for x in reps],
            "final_actor_rewards": [x["final_actor_reward"] for x in reps],
            "final_agreement": [x["eval"][-1]["actor_agreement"] if x["eval"] else None for x in reps],
            "random_rewards": [x["random_reward"] for x in reps],
            "runs": reps,
        }
    paired_ratios(rows)
    return {"title": network.title, "policy": network.path, "env_id": network.env_id, "steps": steps,
            "actors": actors, "repeats": repeats, "broadcast_every": broadcast_every,
            "eval_episodes": network.eval_episodes, "learner": learner.to_json(),
            "learner_source": source + (f" with {', '.join(sorted(network.learner))} changed" if network.learner
                                        else ""),
            "note": network.note, "rows": rows}


def _rebuild_env_steps(run: dict[str, Any]) -> float | None:
    """A run's median rebuild CPU time over its env time per step."""
    cpu = (run["broadcasts"].get("actor_rebuild_cpu_ms") or {}).get("median")
    return cpu / run["env_ms_per_step"] if cpu and run["env_ms_per_step"] else None


# Per-run measures that the "vs fp32" columns compare (run summary -> value).
_COMPARED: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "actor_steps_per_s": lambda x: x["actor_steps_per_s"]["total"],
    "steps_per_cpu_s": lambda x: x["actor_steps_per_s"]["per_cpu_s"],
    "policy_ms_per_call": lambda x: x["policy_ms_per_call"],
    "policy_cpu_ms_per_call": lambda x: x["policy_cpu_ms_per_call"],
}


def paired_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """``KEY_vs_fp32``: the median over rounds of a variant's value over its baseline's (fp32
    actors with as many envs each) in the same round (rounds ran back to back, so a round's
    variants shared the machine's load). ``amdahl_bound``: the most a faster policy alone
    can give, 1 / ((1 - p) + p / s), with p the policy's share of the baseline actors' CPU
    time and s the policy's CPU speed-up per env step, both paired by round."""
    for row in rows.values():
        base = rows[row.get("baseline", "fp32")]["runs"]
        for key, get in _COMPARED.items():
            ratios = [a / b for a, b in ((get(x), get(y)) for x, y in zip(row["runs"], base)) if a and b]
            row[f"{key}_vs_fp32"] = float(statistics.median(ratios)) if ratios else None
        bounds = []
        for x, y in zip(row["runs"], base):
            p, mine, theirs = y.get("policy_cpu_share"), x.get("policy_cpu_ms_per_step"), y.get("policy_cpu_ms_per_step")
            if p and mine and theirs:
                bounds.append(1.0 / ((1.0 - p) + p * mine / theirs))
        row["amdahl_bound"] = float(statistics.median(bounds)) if bounds else None
        fp32 = rows["fp32"]["runs"]
        get = _COMPARED["steps_per_cpu_s"]
        ratios = [a / b for a, b in ((get(x), get(y)) for x, y in zip(row["runs"], fp32)) if a and b]
        row["steps_per_cpu_s_vs_fp32_one_env"] = float(statistics.median(ratios)) if ratios else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline(data: dict[str, Any]) -> str:
    """Quantized actors against fp32 actors of the same network, from the CPU-time columns
    (wall-time ratios on a shared machine are in the table)."""
    rows = data["rows"]
    parts = []
    for key, row in rows.items():
        if key == "fp32":
            continue
        base = rows[row.get("baseline", "fp32")]["label"]
        text = (f"{row['label']}: {_fmt(row['steps_per_cpu_s_vs_fp32'], 2)}x the env steps per actor CPU-second "
                f"of {base} (Amdahl bound {_fmt(row.get('amdahl_bound'), 2)}x), policy CPU time per call "
                f"{_fmt(row['policy_cpu_ms_per_call_vs_fp32'], 2)}x")
        if row.get("envs_per_actor", 1) > 1:
            text += f", {_fmt(row.get('steps_per_cpu_s_vs_fp32_one_env'), 2)}x fp32 actors with one env"
        if data["eval_episodes"] > 0:
            above = sum(1 for v, r in zip(row["final_learner_rewards"], row["random_rewards"])
                        if v is not None and r is not None and v > r)
            text += f", learner above random in {above}/{len(row['runs'])} rounds"
        parts.append(text)
    if data["eval_episodes"] > 0:
        fp32 = rows["fp32"]
        above = sum(1 for v, r in zip(fp32["final_learner_rewards"], fp32["random_rewards"])
                    if v is not None and r is not None and v > r)
        parts.append(f"fp32 actors: learner above random in {above}/{len(fp32['runs'])} rounds")
    return "; ".join(parts) + "."


def markdown(data: dict[str, Any]) -> str:
    fp32_kib = next(iter(data["rows"].values()))["payload_bytes"] / 1024
    settings = (f"`{data['policy']}` on {data['env_id']}: {data['steps']} env steps per run, {data['actors']} actors, "
                f"weights broadcast every {data['broadcast_every']} env steps (fp32, {fp32_kib:.1f} KiB), "
                f"{data['repeats']} rounds (order alternating); learner: {data['learner_source']}.")
    lines = [f"### {data['title']}", "", settings, ""]
    if data["note"]:
        lines += [f"Note: {data['note']}.", ""]
    learning = data["eval_episodes"] > 0
    head = ("| actors | envs each | actor env-steps/s | vs fp32 | per actor CPU-s | vs fp32 | Amdahl bound "
            "| policy ms/call | CPU ms/call | vs fp32 | policy CPU ms/step | policy share "
            "| env ms/step | greedy share | learner updates/s | rebuild ms (first) | rebuild CPU ms | = env steps "
            "| rebuild path | int8 payload |")
    sep = "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|---:|"
    if learning:
        head += " final greedy learner reward | above random | final actor agreement |"
        sep += ":---|---:|:---|"
    lines += [head, sep]
    for row in data["rows"].values():
        line = (f"| {row['label']} | {row.get('envs_per_actor', 1)} | {_fmt(row['actor_steps_per_s'], 0)} | "
                f"{_fmt(row['actor_steps_per_s_vs_fp32'], 2)} | "
                f"{_fmt(row['steps_per_cpu_s'], 0)} | {_fmt(row['steps_per_cpu_s_vs_fp32'], 2)} | "
                f"{_fmt(row.get('amdahl_bound'), 2)} | "
                f"{_fmt(row['policy_ms_per_call'], 4)} | {_fmt(row['policy_cpu_ms_per_call'], 4)} | "
                f"{_fmt(row['policy_cpu_ms_per_call_vs_fp32'], 2)} | {_fmt(row.get('policy_cpu_ms_per_step'), 4)} | "
                f"{_fmt(row.get('policy_cpu_share'), 2)} | {_fmt(row['env_ms_per_step'], 4)} | "
                f"{_fmt(row['greedy_share'], 2)} | {_fmt(row['learner_updates_per_s'], 0)} | "
                f"{_fmt(row['rebuild_ms'], 2)} ({_fmt(row['first_rebuild_ms'], 0)}) | "
                f"{_fmt(row.get('rebuild_cpu_ms'), 2)} | {_fmt(row.get('rebuild_env_steps'), 1)} | "
                f"{', '.join(row.get('rebuild_paths', [])) or '-'} | "
                + (f"{row['central_payload_bytes'] / 1024:.1f} KiB |" if row["central_payload_bytes"] else "- |"))
        if learning:
            rewards = ", ".join(_fmt(v) for v in row["final_learner_rewards"])
            agreement = ", ".join("n/a" if v is None else f"{v:.0%}" for v in row["final_agreement"])
            above = sum(1 for v, r in zip(row["final_learner_rewards"], row["random_rewards"])
                        if v is not None and r is not None and v > r)
            line += f" {rewards} | {above} / {len(row['runs'])} | {agreement} |"
        lines.append(line)
    lines += ["", "**Headline:** " + headline(data), ""]
    if learning:
        first = next(iter(data["rows"].values()))
        randoms = ", ".join(f"seed {run['seed']}: {_fmt(run['random_reward'])}" for run in first["runs"])
        lines += [f"Random policy on each round's evaluation seeds: {randoms}.", "",
                  ("Reward curves (greedy fp32 learner, mean of the evaluation episodes; actor agreement at the "
                   "end):"), ""]
        for row in data["rows"].values():
            for run in row["runs"]:
                points = ", ".join(f"{e['step'] / 1000:g}k {e['mean']:.0f}" for e in run["eval"])
                agreement = run["eval"][-1]["actor_agreement"] if run["eval"] else None
                lines.append(f"- {row['label']}, seed {run['seed']}: {points}"
                             + (f" (agreement {agreement:.0%})" if agreement is not None else ""))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--networks", default="cartpole,pong", help="comma-separated: cartpole, pong")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors per run (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of every variant, round r with seed SEED + r (default: cartpole 4, pong 2; "
                        "--quick 1)")
    parser.add_argument("--broadcast-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small budgets, one round, print only")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="run nothing: write the markdown (and derived columns) of a results JSON again")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)
    warnings.filterwarnings("ignore")
    import logging

    import onnxruntime
    import ray
    import torch

    import autoquant
    from autoquant.targets import host_facts

    keys = [k.strip() for k in args.networks.split(",") if k.strip()]
    unknown = sorted(set(keys) - {n.key for n in NETWORKS})
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {[n.key for n in NETWORKS]}")
    command = "python benchmarks/actorq.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    facts = {**host_facts(1), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
             "torch": torch.__version__, "ray": ray.__version__, "loadavg_at_start": os.getloadavg()[0]}
    results: dict[str, Any] = {"format": "autoquant.benchmark.actorq", "version": 1,
                               "autoquant_version": autoquant.__version__, "command": command.strip(),
                               "facts": facts, "networks": {}}
    t0 = time.perf_counter()
    # One Ray session for every run (run_actorq joins it and leaves it running).
    ray.init(address="local", num_cpus=max(args.actors, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR, object_store_memory=512 * 1024 ** 2)
    try:
        for network in NETWORKS:
            if network.key not in keys:
                continue
            steps = network.quick_steps if args.quick else network.steps
            repeats = 1 if args.quick else (args.repeats or network.repeats)
            data = run_network(network, args.policies, actors=args.actors, steps=steps, repeats=repeats,
                               seed=args.seed, broadcast_every=args.broadcast_every)
            results["networks"][network.key] = data
            print("\n" + markdown(data), flush=True)
    finally:
        ray.shutdown()
    results["wall_s"] = time.perf_counter() - t0
    facts["loadavg_at_end"] = os.getloadavg()[0]
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        write_results(results, out)
    return 0


def _load_note(facts: Mapping[str, Any]) -> str:
    """What the load averages recorded around the run say about wall times."""
    cores = os.cpu_count() or 1
    loads = [float(facts[k]) for k in ("loadavg_at_start", "loadavg_at_end") if facts.get(k) is not None]
    if not loads:
        return "No load average was recorded."
    busy = max(loads) > cores
    return (f"Load average {min(loads):.1f}-{max(loads):.1f} on {cores} cores: "
            + ("more runnable jobs than cores, so wall times include waiting." if busy
               else "no more runnable jobs than cores."))


def document(results: dict[str, Any]) -> str:
    facts_md = "\n".join(f"- {k}: {v}" for k, v in results["facts"].items())
    sections = [markdown(data) for data in results["networks"].values()]
    return (
        "# ActorQ: the actor-learner loop with quantized vs fp32 actors\n\n"
        f"autoquant {results['autoquant_version']}. Reproduce from the repository root "
        f"({results['wall_s'] / 60:.1f} min here):\n\n    {results['command']}\n\n"
        "Protocol: `autoquant actorq run` (`autoquant.actorq.run_actorq`) in one Ray session on this machine; "
        "per network, every variant runs with the same budget and learner hyperparameters, in rounds whose order "
        "alternates; round r runs every variant with seed SEED + r (its actors' env seeds, the learner's seed "
        "and the evaluation seeds). The learner is an SB3 DQN in fp32 that starts from scratch (one torch "
        "thread); actors are Ray actors (one onnxruntime thread each), epsilon-greedy with the learner's "
        "exploration rate, random before `learning_starts`. Quantized actors rebuild the bundle's graph from "
        "each broadcast (`ActorQuantizer.build`); fp32 actors run an onnxruntime session of the bundle's network "
        "in fp32 rebuilt from each broadcast the same way, so only the network differs.\n\n"
        "Columns: **actor env-steps/s**: the sum over actors of each actor's env steps over the time it spent "
        "collecting (policy, exploration and env; not waiting for the learner, not rebuilding), median of the "
        "rounds; **vs fp32**: the median over rounds of the variant's value over the fp32 actors' in the same "
        "round; **per actor CPU-s**: env steps per CPU-second of an actor's collecting thread (what the actors "
        "computed, not the time they waited for a core: the steadier comparison on a shared machine); "
        "**envs each**: envs an actor steps in lockstep, one batched policy call per step for all of them; "
        "**vs fp32** compares with fp32 actors with as many envs each; **Amdahl bound**: the most the policy's "
        "speed-up alone allows, 1 / ((1 - p) + p / s), p the policy's share of the fp32 actors' CPU time and s "
        "the policy's CPU speed-up per env step, paired by round; "
        "**policy ms/call**: one `predict` of a greedy step (a batch of one observation per env), wall time; "
        "**CPU ms/call**: its CPU time (onnxruntime runs one thread, the caller's); **policy CPU ms/step**: "
        "policy CPU time per env step that used the policy; **policy share**: the policy's share of the actor's "
        "CPU time; **greedy share**: the env steps that used the policy (the "
        "rest explored at random); **learner updates/s**: gradient steps over the time spent in `DQN.train`; "
        "**rebuild ms**: an actor's rebuild per broadcast (median; in brackets its first build, which also loads "
        "onnxruntime's kernels), wall time; **rebuild CPU ms**: its CPU time on the actor's thread (the "
        "actors share 2 cores with the learner: wall time includes waiting); **= env steps**: rebuild CPU time "
        "over the env's time per step in the same runs; **rebuild path**: the path the actors chose on their first build (`preoptimized`: "
        "a session on a graph optimized once; `session`: a fresh session); **int8 payload**: what a central broadcast (`ActorQuantizer.quantize`) would "
        "send instead of the fp32 weights, which these runs broadcast (the fp32 size is in the heading); "
        "**final greedy learner reward**: the fp32 learner played greedily on the round's fixed evaluation "
        "seeds at the end of each round; **above random**: rounds whose final reward beats the random policy's "
        "on the same seeds; **final actor agreement**: the share of the latest 1000 replay states on which an "
        "actor built from the final weights takes the learner's greedy action. " + _load_note(results["facts"]) +
        " Compare the CPU columns and the paired ratios.\n\n"
        f"## Device\n\n{facts_md}\n\n## Results\n\n" + "\n".join(sections)
    )


def write_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "actorq.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "actorq.md").write_text(document(results))
    print(f"wrote {rel(out / 'actorq.json')} and {rel(out / 'actorq.md')}")


def render(path: Path, out: Path | None) -> int:
    """Recompute the derived columns of a results JSON and write its JSON and markdown again."""
    results = json.loads(path.read_text())
    for data in results["networks"].values():
        paired_ratios(data["rows"])
    write_results(results, out if out is not None else path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
