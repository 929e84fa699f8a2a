"""ActorQ, asynchronous: wall-clock to a score with int8 against fp32 actors, a scale-out, and central inference.

Three parts, each measured on this machine with ``autoquant actorq run``'s own code:

1. **Time to threshold.** The IMPALA learner (fp32, from scratch) with 2 Ray actors that
   act on their own schedule; the learner corrects their samples with V-trace. int8 actors
   run the bundle's plan with the monitor on (re-calibration, KL(mu || pi), precision
   levels); fp32 actors run the same network in fp32. Every run stops at the first greedy
   evaluation of the learner whose mean reaches the threshold; its time is the loop's
   wall-clock to that evaluation less the evaluations themselves. Seeds 0..n-1, the two
   kinds alternating which goes first. On CartPole the synchronous PPO of issue 11 (int8
   actors, truncated IS) runs the same seeds for comparison.
2. **Scale-out.** N = 1, 2, 4, 8 actors against one learner on LunarLander, a fixed
   budget, no evaluations: env steps per second, and the bound the measured split
   (actor CPU per env step, of it the policy's share, and the learner's serial CPU per
   env step) implies for more actors and cores (Amdahl).
3. **Central inference.** SEED RL's layout (env-only actors, one batched inference
   server) against local actors, int8 and fp32, for several actor counts and envs per
   actor: env steps per CPU-second of all the processes taking part.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, result_arguments, run_or_render  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "cartpole": {"env_id": "CartPole-v1", "threshold": 475.0, "budget": 200_000, "eval_every": 10_240,
                 "envs": 4, "ppo": True},
    "lunarlander": {"env_id": "LunarLander-v3", "threshold": 100.0, "budget": 1_000_000, "eval_every": 102_400,
                    "envs": 4, "ppo": False},
}
VARIANTS = (("int8", "int8 actors, V-trace, monitor"), ("fp32", "fp32 actors, V-trace"))
SCALE_N = (1, 2, 4, 8)
SCALE_STEPS = 120_000
CENTRAL = ((1, 1), (2, 1), (4, 1), (1, 16), (2, 16), (4, 16))  # (actors, envs per actor)
CENTRAL_STEPS = 4096  # env steps per actor


def _record(report: dict[str, Any]) -> dict[str, Any]:
    """What a run's report gives this page."""
    learner, threshold = report["learner"], report["threshold"] or {}
    monitor = report.get("monitor")
    evals = report["curve"]["eval"]
    out = {"reached": bool(threshold.get("reached")),
           "train_wall_s": threshold.get("train_wall_s", report["loop_s"] - report["eval_s"]),
           "env_steps": report["env_steps"], "final": evals[-1]["mean"],
           "curve": [[e["step"], round(e["mean"], 1), round(e.get("wall_s", 0.0), 2)] for e in evals],
           "updates": learner["updates"], "steps_per_cpu_s": report["actor_steps_per_s"]["per_cpu_s"],
           "achieved_steps_per_s": report["actor_steps_per_s"]["achieved"],
           "policy_cpu_ms_per_call": report["policy_cpu_ms_per_call"], "loop_s": report["loop_s"]}
    if learner.get("vtrace"):
        vt = learner["vtrace"]
        out["vtrace"] = {k: vt[k] for k in ("rho_mean", "rho_min", "rho_max", "rho_clipped_share", "c_mean",
                                             "kl_mu_pi_mean", "kl_mu_pi_max", "policy_lag_updates",
                                             "policy_lag_versions_mean")}
    if learner.get("importance_weights"):
        out["importance_weights"] = learner["importance_weights"]
    if monitor:
        actions = [d["action"] for d in monitor["decisions"]]
        out["monitor"] = {"checks": monitor["checks"], "kl": monitor["kl"], "final_level": monitor["final_level"],
                          "checks_per_level": monitor["checks_per_level"], "seconds": monitor["seconds"],
                          "decisions": {a: actions.count(a) for a in sorted(set(actions))},
                          "first_decisions": monitor["decisions"][:6]}
    return out


def time_to_threshold(args: argparse.Namespace, case: str, bundle: Path) -> dict[str, list[dict[str, Any]]]:
    from autoquant.actorq import ActorRunConfig, run_actorq

    spec = CASES[case]
    variants = list(VARIANTS) + ([("ppo_int8", "int8 actors, synchronous PPO with truncated IS (issue 11)")]
                                 if spec["ppo"] else [])
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in variants}
    for seed in range(args.seeds):
        for key, label in (variants if seed % 2 == 0 else variants[::-1]):
            ppo = key == "ppo_int8"
            config = ActorRunConfig(
                bundle=str(bundle), env_id=spec["env_id"], actors=2, envs_per_actor=spec["envs"],
                steps=spec["budget"], fp32_actors=key == "fp32", eval_every=spec["eval_every"], eval_episodes=10,
                seed=seed, learner_algo="ppo" if ppo else "impala", stop_at=spec["threshold"],
                monitor=key == "int8")
            entry = {"seed": seed, **_record(run_actorq(config))}
            runs[key].append(entry)
            print(f"  {case} seed {seed} {label}: {'reached' if entry['reached'] else 'NOT reached'} "
                  f"{spec['threshold']:g} at {entry['env_steps']} steps, {entry['train_wall_s']:.1f} s", flush=True)
    return runs


def scale_out(bundle: Path) -> list[dict[str, Any]]:
    from autoquant.actorq import ActorRunConfig, run_actorq

    rows = []
    for n in SCALE_N:
        for key, _ in VARIANTS:
            config = ActorRunConfig(bundle=str(bundle), env_id="LunarLander-v3", actors=n, envs_per_actor=4,
                                    steps=SCALE_STEPS, fp32_actors=key == "fp32", eval_episodes=0, seed=0,
                                    learner_algo="impala")
            report = run_actorq(config)
            steps = report["env_steps"]
            actor_cpu = sum(a["cpu_s"] for a in report["per_actor"])
            learner = report["learner"]
            row = {"actors": n, "kind": key, "env_steps": steps, "loop_s": report["loop_s"],
                   "steps_per_s": steps / report["loop_s"], "actor_cpu_per_step_ms": 1e3 * actor_cpu / steps,
                   "policy_cpu_share": report["policy_cpu_share"],
                   "learner_cpu_per_step_ms": 1e3 * (learner["train_s"] + learner["ingest_s"]) / steps,
                   "lag_mean": learner["vtrace"]["policy_lag_updates"]["mean"],
                   "lag_max": learner["vtrace"]["policy_lag_updates"]["max"], "updates": learner["updates"]}
            rows.append(row)
            print(f"  scale-out N={n} {key}: {row['steps_per_s']:.0f} env steps/s, lag {row['lag_mean']:.1f}",
                  flush=True)
    return rows


def central_inference(ray: Any, bundle: Path) -> list[dict[str, Any]]:
    from autoquant.actorq import (ActorQuantizer, Fp32ActorBuilder, collect_central, collect_local, impala_preset,
                                  load_bundle, make_impala_model)

    loaded = load_bundle(bundle)
    model = make_impala_model(loaded, "LunarLander-v3", impala_preset("LunarLander-v3")[1], seed=0)
    state = model.policy.state_dict()
    keys = [k for layer in loaded.manifest["fingerprint"]["layers"] for k in (layer["weight_key"], layer["bias_key"])
            if k is not None]
    weights = {k: state[k].numpy().copy() for k in keys}
    builders = {"int8": ActorQuantizer(loaded), "fp32": Fp32ActorBuilder(loaded)}
    rows = []
    for actors, envs in CENTRAL:
        rounds = CENTRAL_STEPS // envs
        for kind, builder in builders.items():
            for layout in ("local", "central"):
                if layout == "local":
                    r = collect_local(ray, builder, weights, "LunarLander-v3", actors=actors, envs=envs, rounds=rounds)
                else:
                    r = collect_central(ray, builder, weights, "LunarLander-v3", actors=actors, envs=envs,
                                        rounds=rounds)
                r.pop("per_actor")
                rows.append({"kind": kind, "envs": envs, **r})
                print(f"  central inference: {layout} {kind} {actors}x{envs}: {r['steps_per_cpu_s']:.0f} steps per "
                      f"CPU-s, {r['steps_per_s']:.0f}/s", flush=True)
    return rows


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import ray
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from actorq_ppo import make_bundle

    from autoquant.targets import host_facts

    facts = {**host_facts(1), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
             "torch": torch.__version__, "ray": ray.__version__, "loadavg_at_start": os.getloadavg()[0]}
    out: dict[str, Any] = {"format": "autoquant.benchmark.actorq_async", "version": 1, "facts": facts,
                           "settings": {"seeds": args.seeds, "cases": {c: CASES[c] for c in args.cases},
                                        "scale_n": list(SCALE_N), "scale_steps": SCALE_STEPS,
                                        "central": [list(c) for c in CENTRAL], "central_steps": CENTRAL_STEPS}}
    ray.init(address="local", num_cpus=max(SCALE_N) + 2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, object_store_memory=512 * 1024 ** 2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bundles = {case: make_bundle(case, args.policies, Path(tmp) / case / "bundle")
                       for case in ("cartpole", "lunarlander")}
            out["threshold"] = {case: time_to_threshold(args, case, bundles[case]) for case in args.cases}
            if not args.skip_scale:
                out["scale_out"] = scale_out(bundles["lunarlander"])
                out["central"] = central_inference(ray, bundles["lunarlander"])
    finally:
        ray.shutdown()
    facts["loadavg_at_end"] = os.getloadavg()[0]
    return out


# --- the page ------------------------------------------------------------------------------


def _interval(values: list[float]) -> tuple[float, float]:
    from autoquant.evaluate import ci95

    return float(np.mean(values)), float(ci95(values)) if len(values) > 1 else float("nan")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = {r["seed"]: r for r in runs["fp32"]}
    for key, rows in runs.items():
        times = [r["train_wall_s"] for r in rows]
        steps = [r["env_steps"] for r in rows]
        mean, half = _interval(times)
        paired = [r["train_wall_s"] - base[r["seed"]]["train_wall_s"] for r in rows if r["seed"] in base]
        dmean, dhalf = _interval(paired) if key != "fp32" else (None, None)
        rates = [r["achieved_steps_per_s"] for r in rows]
        ratios = [r["achieved_steps_per_s"] / base[r["seed"]]["achieved_steps_per_s"] for r in rows if r["seed"] in base]
        rmean, rhalf = _interval(ratios) if key != "fp32" else (None, None)
        cpu_ratios = [r["steps_per_cpu_s"] / base[r["seed"]]["steps_per_cpu_s"] for r in rows if r["seed"] in base]
        cmean, chalf = _interval(cpu_ratios) if key != "fp32" else (None, None)
        out[key] = {"reached": sum(r["reached"] for r in rows), "seeds": len(rows), "time_mean": mean,
                    "time_ci95": half, "steps_mean": float(np.mean(steps)), "minus_fp32_mean": dmean,
                    "minus_fp32_ci95": dhalf, "times": times, "rate_mean": float(np.mean(rates)),
                    "rate_ratio_mean": rmean, "rate_ratio_ci95": rhalf, "cpu_ratio_mean": cmean,
                    "cpu_ratio_ci95": chalf,
                    "steps_per_cpu_s": float(np.mean([r["steps_per_cpu_s"] for r in rows])),
                    "policy_cpu_ms_per_call": float(np.mean([r["policy_cpu_ms_per_call"] for r in rows]))}
    return out


def _fmt(mean: float | None, half: float | None, unit: str = " s", digits: int = 1) -> str:
    if mean is None:
        return "-"
    if half is None or not np.isfinite(half):
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f}{unit} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def write_markdown(data: dict[str, Any], path: Path) -> None:
    labels = dict(VARIANTS) | {"ppo_int8": "int8 actors, synchronous PPO with truncated IS (issue 11)"}
    lines = header(data, "ActorQ, asynchronous: time to threshold, scale-out and central inference")
    facts = data["facts"]
    lines += [f"Machine: {facts.get('cpu')}, {facts.get('cores')} cores; onnxruntime {facts.get('onnxruntime')}, "
              f"torch {facts.get('torch')}, ray {facts.get('ray')}; load average {facts['loadavg_at_start']:.2f} at "
              f"the start, {facts['loadavg_at_end']:.2f} at the end.", ""]
    lines += ["## 1. Time to threshold", "",
              "`autoquant actorq run --learner impala --stop-at SCORE`, 2 Ray actors x 4 envs, the learner in fp32 "
              "from scratch (IMPALA actor-critic, V-trace with rho_bar = c_bar = 1; hyperparameters: "
              "`autoquant.actorq.IMPALA_PRESETS`). int8 actors run every layer in int8 (the bundles of "
              "`benchmarks/actorq_ppo.py`), with `--monitor` (KL bound 0.02, re-calibration past a range ratio of "
              "1.25). **Time**: wall-clock from the first broadcast to the greedy evaluation (10 episodes, fixed "
              "seeds, deterministic) that reached the score, less the evaluations; a run that never reached it "
              "counts its whole loop. **int8 - fp32**: per seed, mean and 95 % t interval (seeds are paired by "
              "number only: asynchronous runs do not replay each other).", ""]
    for case, runs in data["threshold"].items():
        spec = data["settings"]["cases"][case]
        summary = summarize(runs)
        lines += [f"### {spec['env_id']}: greedy mean >= {spec['threshold']:g}, budget {spec['budget']:,} env steps, "
                  f"evaluated every {spec['eval_every']:,}", "",
                  "| actors | reached | time to threshold, mean [95 % CI] | int8 - fp32 [95 % CI] | env steps, mean "
                  "| per seed (s) | env steps/s over the loop | / fp32 [95 % CI] | env steps per actor CPU-s | "
                  "policy CPU per call |",
                  "|:---|---:|:---|:---|---:|:---|---:|:---|---:|---:|"]
        for key, s in summary.items():
            lines.append(f"| {labels[key]} | {s['reached']} / {s['seeds']} | {_fmt(s['time_mean'], s['time_ci95'])} | "
                         f"{_fmt(s['minus_fp32_mean'], s['minus_fp32_ci95'])} | {s['steps_mean']:,.0f} | "
                         + ", ".join(f"{t:.1f}" for t in s["times"])
                         + f" | {s['rate_mean']:,.0f} | {_fmt(s['rate_ratio_mean'], s['rate_ratio_ci95'], '', 3)} | "
                         f"{s['steps_per_cpu_s']:,.0f} | {s['policy_cpu_ms_per_call']:.4f} ms |")
        lines += [""] + _threshold_findings(spec, runs, summary)
        lines += ["", "V-trace and policy lag (mean over each run's updates; lag in learner updates since the "
                  "weights an unroll was acted with):", "",
                  "| actors | seed | rho mean | rho range | clipped | KL(mu‖pi) mean / max | lag mean / max |",
                  "|:---|---:|---:|:---|---:|:---|:---|"]
        for key in ("int8", "fp32"):
            for r in runs[key]:
                vt = r["vtrace"]
                lag = vt["policy_lag_updates"]
                lines.append(f"| {key} | {r['seed']} | {vt['rho_mean']:.4f} | [{vt['rho_min']:.3f}, "
                             f"{vt['rho_max']:.3f}] | {vt['rho_clipped_share']:.1%} | {vt['kl_mu_pi_mean']:.2e} / "
                             f"{vt['kl_mu_pi_max']:.2e} | {lag['mean']:.2f} / {lag['max']:.0f} |")
        lines += ["", "**clipped**: the share of samples with rho above rho_bar = 1, whose weight V-trace cuts to 1 "
                  "(a behaviour policy equal to the learner's puts about half its samples just above 1).", "",
                  "The monitor (int8 runs). **int8 KL**: KL(mu‖pi) of the int8 network against the learner on the "
                  "actors' latest states, at every check where it was in use or the level below the one in use "
                  "(quantization only); **checks at fp32**: checks after the monitor raised the actors to fp32.",
                  "", "| seed | checks | int8 KL mean / max | int8 over bound | checks at fp32 | decisions | "
                  "final level | its time |",
                  "|---:|---:|:---|---:|---:|:---|:---|---:|"]
        for r in runs["int8"]:
            m = r["monitor"]
            kl = next((v for k, v in (m.get("kl_by_level") or {}).items() if k != "fp32"), None) or m["kl"] or {}
            decisions = ", ".join(f"{n} {a}" for a, n in m["decisions"].items()) or "none"
            lines.append(f"| {r['seed']} | {m['checks']} | {kl.get('mean', 0):.2e} / {kl.get('max', 0):.2e} | "
                         f"{kl.get('over_bound_share', 0):.1%} | {m['checks_per_level'].get('fp32', 0)} | "
                         f"{decisions} | {m['final_level']} | {m['seconds']:.1f} s |")
        lines.append("")
    if data.get("scale_out"):
        lines += ["## 2. Scale-out: N actors against one learner (LunarLander-v3)", "",
                  f"{data['settings']['scale_steps']:,} env steps per run, 4 envs per actor, IMPALA learner, no "
                  "evaluations, one Ray instance on this machine's cores. **Bound, unlimited cores**: "
                  "min(N / actor CPU per step, 1 / learner CPU per step), the learner being the serial part; "
                  "**bound, these cores**: cores / (actor + learner CPU per step).", "",
                  "| N | actors | env steps/s | actor CPU per step | of it policy | learner CPU per step | bound, "
                  "unlimited cores | bound, these cores | lag mean / max |",
                  "|---:|:---|---:|---:|---:|---:|---:|---:|:---|"]
        cores = float(data["facts"].get("cores") or 2)
        for row in data["scale_out"]:
            a, ell = row["actor_cpu_per_step_ms"] / 1e3, row["learner_cpu_per_step_ms"] / 1e3
            lines.append(f"| {row['actors']} | {row['kind']} | {row['steps_per_s']:,.0f} | "
                         f"{row['actor_cpu_per_step_ms']:.4f} ms | {row['policy_cpu_share']:.0%} | "
                         f"{row['learner_cpu_per_step_ms']:.4f} ms | {min(row['actors'] / a, 1 / ell):,.0f} | "
                         f"{cores / (a + ell):,.0f} | {row['lag_mean']:.1f} / {row['lag_max']:.0f} |")
        lines += [""] + _scale_findings(data["scale_out"], cores)
    if data.get("central"):
        lines += ["## 3. Central inference (SEED RL's layout) against local actors (LunarLander-v3)", "",
                  f"{data['settings']['central_steps']:,} env steps per actor after a warm-up step. **local**: "
                  "each actor runs the policy (ActorQ's layout); **central**: env-only actors send every "
                  "observation batch to one inference server (a Ray actor batching requests that arrive within "
                  "1 ms, up to 256 rows). CPU: each taking part process's own CPU time (Ray's threads in it "
                  "included), actors and server.", "",
                  "| actors x envs | policy | layout | env steps per CPU-s | env steps/s | rows per server call |",
                  "|:---|:---|:---|---:|---:|---:|"]
        for row in data["central"]:
            server = row.get("server") or {}
            rows = server.get("rows_per_call")
            lines.append(f"| {row['actors']} x {row['envs']} | {row['kind']} | {row['layout']} | "
                         f"{row['steps_per_cpu_s']:,.0f} | {row['steps_per_s']:,.0f} | "
                         f"{'-' if rows is None else f'{rows:.1f}'} |")
        lines += [""] + _central_findings(data["central"])
    path.write_text("\n".join(lines))


def _threshold_findings(spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
                        summary: dict[str, Any]) -> list[str]:
    """What the table says, in words computed from it."""
    int8, fp32 = summary["int8"], summary["fp32"]
    high = (int8["minus_fp32_mean"] or 0.0) + (int8["minus_fp32_ci95"] or float("nan"))
    met = bool(np.isfinite(high) and high < 0)
    policy_ratio = int8["policy_cpu_ms_per_call"] / fp32["policy_cpu_ms_per_call"]
    kl_learner = {k: float(np.mean([r["vtrace"]["kl_mu_pi_mean"] for r in runs[k]])) for k in ("int8", "fp32")}
    kl_int8 = [next((v["mean"] for name, v in (r["monitor"].get("kl_by_level") or {}).items() if name != "fp32"),
                    (r["monitor"]["kl"] or {}).get("mean", 0.0)) for r in runs["int8"]]
    raised = sum(1 for r in runs["int8"] if r["monitor"]["decisions"].get("raise"))
    lowered = sum(1 for r in runs["int8"] if r["monitor"]["decisions"].get("lower"))
    recal = float(np.mean([r["monitor"]["decisions"].get("recalibrate", 0) for r in runs["int8"]]))
    lag = float(np.mean([r["vtrace"]["policy_lag_updates"]["mean"] for r in runs["int8"] + runs["fp32"]]))
    return [
        f"- **Goal (int8 faster to the threshold, the interval of int8 - fp32 below 0): "
        f"{'met' if met else 'not met'}** on {spec['env_id']}: {_fmt(int8['minus_fp32_mean'], int8['minus_fp32_ci95'])}.",
        f"- The learning, not the actors, sets the time: fp32 runs took {min(fp32['times']):.1f} to "
        f"{max(fp32['times']):.1f} s from seed to seed. The actors' speed, which is what int8 changes: int8 actors "
        f"collected {_fmt(int8['cpu_ratio_mean'], int8['cpu_ratio_ci95'], '', 3)} times the env steps per CPU-second "
        "of fp32 actors (per seed; the loop's env steps per second also depend on how long a run lasts, its start "
        f"weighing more in a short one); the int8 policy costs {policy_ratio:.2f}x the fp32 one per call here "
        f"({int8['policy_cpu_ms_per_call']:.4f} ms against {fp32['policy_cpu_ms_per_call']:.4f} ms of CPU), so it "
        "cannot make the actors faster on this CPU.",
        f"- The learner saw KL(mu‖pi) of {kl_learner['int8']:.2e} from int8 and {kl_learner['fp32']:.2e} from fp32 "
        f"actors (staleness and quantization together, policy lag {lag:.1f} updates on average); the int8 network's "
        f"own share, measured by the monitor, averaged {float(np.mean(kl_int8)):.2e}.",
        f"- The monitor re-calibrated {recal:.1f} times per run on average, raised the actors to fp32 in {raised} of "
        f"{len(runs['int8'])} runs and brought them back down in {lowered}.", ""]


def _scale_findings(rows: list[dict[str, Any]], cores: float) -> list[str]:
    best = max(rows, key=lambda r: r["steps_per_s"])
    learner = float(np.mean([r["learner_cpu_per_step_ms"] for r in rows]))
    by = {(r["actors"], r["kind"]): r for r in rows}
    one = by.get((1, "fp32")), by.get((1, "int8"))
    out = [f"- Env steps per second peaked at N = {best['actors']} ({best['steps_per_s']:,.0f}, {best['kind']}) on "
           f"{cores:.0f} cores; more actors only share the same cores and lengthen the policy lag "
           f"(mean {by.get((max(r['actors'] for r in rows), 'fp32'), best)['lag_mean']:.1f} updates at N = "
           f"{max(r['actors'] for r in rows)}).",
           f"- The learner's {learner:.4f} ms of CPU per env step is serial: whatever N and the cores, this learner "
           f"takes at most {1e3 / learner:,.0f} env steps per second."]
    if all(one):
        fp, q = one
        p = fp["policy_cpu_share"]
        s = q["actor_cpu_per_step_ms"] / fp["actor_cpu_per_step_ms"]
        out.append(f"- Of an fp32 actor's CPU per step the policy takes {p:.0%}: a policy that cost nothing would "
                   f"make an actor at most {1 / (1 - p):.2f}x faster (Amdahl). int8 actors spent {s:.2f}x the "
                   "fp32 actors' CPU per step at N = 1.")
    return out + [""]


def _central_findings(rows: list[dict[str, Any]]) -> list[str]:
    pairs = []
    for row in rows:
        if row["layout"] != "central":
            continue
        local = next(r for r in rows if r["layout"] == "local" and r["kind"] == row["kind"]
                     and r["actors"] == row["actors"] and r["envs"] == row["envs"])
        pairs.append((row, local["steps_per_cpu_s"] / row["steps_per_cpu_s"]))
    low, high = min(pairs, key=lambda p: p[1]), max(pairs, key=lambda p: p[1])
    wins = [p for p in pairs if p[1] < 1]
    central = {(r["actors"], r["envs"], r["kind"]): r for r, _ in pairs}
    fewest, most = min(r["actors"] for r, _ in pairs), max(r["actors"] for r, _ in pairs)
    changes = [central[(most, e, k)]["steps_per_cpu_s"] / central[(fewest, e, k)]["steps_per_cpu_s"]
               for (n, e, k) in central if n == fewest and (most, e, k) in central]
    envs = sorted({r["envs"] for r, _ in pairs})
    by_envs = {e: float(np.mean([r["steps_per_cpu_s"] for r, _ in pairs if r["envs"] == e])) for e in envs}
    return [f"- Local actors collected {low[1]:.1f}x ({low[0]['actors']} x {low[0]['envs']}, {low[0]['kind']}) to "
            f"{high[1]:.1f}x ({high[0]['actors']} x {high[0]['envs']}, {high[0]['kind']}) the env steps per "
            f"CPU-second of central inference; central inference won in {len(wins)} of {len(pairs)} settings.",
            "- Each request to the server costs more CPU than the policy call it replaces. Sending an actor's envs "
            "in one request narrows the gap (central: "
            + ", ".join(f"{by_envs[e]:,.0f} env steps per CPU-s with {e} env{'s' if e > 1 else ''} per actor"
                        for e in envs)
            + f"); {most} actors sharing the server instead of {fewest}, which fills its batches more, changed that "
            f"by a factor of {min(changes):.2f} to {max(changes):.2f}.",
            "- Central inference can only pay where a round trip to the server costs less than the policy it "
            "saves the actors: a policy far costlier than these MLPs, or one on an accelerator, which this "
            "machine does not have (not measured here).", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    result_arguments(parser, "actorq_async")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["cartpole", "lunarlander"])
    parser.add_argument("--skip-scale", action="store_true", help="time to threshold only")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every part: 1 seed of CartPole, small scale-out and central runs, "
                             "written under benchmarks/scratch")
    args = parser.parse_args(argv)
    if args.quick:
        global SCALE_STEPS, CENTRAL_STEPS, SCALE_N, CENTRAL
        args.seeds, args.cases = 1, ["cartpole"]
        SCALE_STEPS, CENTRAL_STEPS, SCALE_N, CENTRAL = 8_192, 256, (1, 2), ((1, 1), (2, 16))
        args.out = args.work / "actorq_async.json"
    return run_or_render("benchmarks/actorq_async.py", argv, args, run_all, write_markdown)


if __name__ == "__main__":
    sys.exit(main())
