"""The runtime as a dimension on emulated Arm: the Pong DQN's plans on onnxruntime and on
LiteRT + XNNPACK, instructions per inference on emulated Cortex-A72 and A76, and the
reward each keeps in that runtime's numerics.

For each runtime: fp32, its uniform int8 (onnxruntime's ``quantize_static``; for LiteRT
the builder's uniform int8 plan written as .tflite: per-channel int8 weights, int8
activations, calibrated on the same recorded states, as LiteRT's own converter makes
it), and the candidate plans below, chosen by hand from what earlier pages measured (the
dead-channel pruning ``conv1 p0.75, conv2 p0.25, fc1 p0.50`` keeps every game; conv1 and
conv2 in int8 lose reward). They are not found by a search here.

- Instructions: guest instructions per batch-1 inference under qemu, deterministic.
- Reward: played in the runtime's numerics on this machine under both protocols
  (deterministic: all 30 no-op starts, exact; sticky actions p=0.25: ``--sticky-episodes``
  seeds), paired with fp32 on onnxruntime; retention rules as the headline's (0.98 exact;
  95 % lower bound 0.9). A model must hold under both, so the sticky games are played only
  for models that hold under the deterministic rule.
- Arm numerics: each model's outputs from the runtime's aarch64 build under emulation on
  ``--arm-states`` held-out states, against the same runtime on this machine: the greedy
  actions that differ, and the largest output difference. Where they agree, the games
  played here are the games the board plays.

Reproduce from the repository root: ``python benchmarks/arm_runtimes.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_POLICIES, DEFAULT_RESULTS, EXACT_RULE, STICKY_LOW_RULE, Record,  # noqa: E402
                    claim_both, claim_references, header, quiet, reference_summary, rel, retention_words)

POLICY = Path("dqn-PongNoFrameskip-v4") / "dqn_pong.pt"
ENV_ID = "PongNoFrameskip-v4"
CPUS = {"arm-a72-emulated": "cortex-a72", "arm-a76-emulated": "cortex-a76"}
RUNTIMES = ("onnxruntime", "litert")
GOAL = 0.7  # issue: <= 0.7x the best uniform int8 across runtimes on that CPU
DEAD = {"conv1": (None, 0.75), "conv2": (None, 0.25), "fc1": (None, 0.5)}
CANDIDATES: dict[str, dict[str, tuple[int | None, float]]] = {
    "dead-channel pruning": DEAD,
    "pruning, fc in int8": {**DEAD, "fc1": (8, 0.5), "fc2": (8, 0.0)},
    "pruning, conv3 + fc in int8": {**DEAD, "conv3": (8, 0.0), "fc1": (8, 0.5), "fc2": (8, 0.0)},
    "pruning, conv2 + conv3 + fc in int8": {**DEAD, "conv2": (8, 0.25), "conv3": (8, 0.0), "fc1": (8, 0.5),
                                           "fc2": (8, 0.0)},
    "pruning, all int8": {"conv1": (8, 0.75), "conv2": (8, 0.25), "conv3": (8, 0.0), "fc1": (8, 0.5),
                          "fc2": (8, 0.0)},
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def plan_of(layers: dict[str, tuple[int | None, float]]) -> Any:
    from autoquant.compress import CompressionPlan, LayerSpec

    return CompressionPlan({name: LayerSpec(bits, bits, ratio) if bits else LayerSpec(None, None, ratio)
                            for name, (bits, ratio) in layers.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    p.add_argument("--sticky-episodes", type=int, default=60)
    p.add_argument("--arm-states", type=int, default=256)
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "arm_runtimes.json")
    args = p.parse_args(argv)
    record = Record("benchmarks/arm_runtimes.py", argv)  # before any work: the library that runs is recorded
    quiet()
    from autoquant.compress import build_graph, export_reference
    from autoquant.evaluate import record_states
    from autoquant.policy import load_policy
    from autoquant.runtimes import Runner, get_runtime, onnxruntime_uniform_int8
    from autoquant.targets import get_target

    policy = args.policies / POLICY
    bundle = load_policy(policy, env_id=ENV_ID)
    states = record_states(bundle, n=512, seed=0, n_envs=6).states
    held = record_states(bundle, n=args.arm_states, seed=7919, n_envs=2).states
    names = [n for n, m in bundle.net.named_children() if hasattr(m, "weight")]
    fp32 = export_reference(bundle)
    builder_int8 = build_graph(bundle.net, bundle.input_shape, plan_of({n: (8, 0.0) for n in names}), states).onnx
    models: list[dict[str, Any]] = []
    for runtime in RUNTIMES:
        models.append({"name": "fp32", "runtime": runtime, "onnx": fp32, "kind": "fp32"})
        models.append({"name": "uniform int8", "runtime": runtime, "kind": "int8",
                       "onnx": onnxruntime_uniform_int8(fp32, states) if runtime == "onnxruntime" else builder_int8,
                       "how": "quantize_static (QDQ, per channel)" if runtime == "onnxruntime"
                       else "the builder's uniform int8 plan as .tflite"})
    for name, layers in CANDIDATES.items():
        graph = build_graph(bundle.net, bundle.input_shape, plan_of(layers), states).onnx
        for runtime in RUNTIMES:
            models.append({"name": name, "runtime": runtime, "onnx": graph, "kind": "plan",
                           "plan": {k: list(v) for k, v in layers.items()}})

    log("instructions on emulated Arm")
    for target_name in CPUS:
        for runtime in RUNTIMES:
            spec = get_target(target_name)
            target = type(spec)(spec.name, spec.cpu, runs=spec.runs, warmup=spec.warmup, runtime=runtime)
            for m in (m for m in models if m["runtime"] == runtime):
                m.setdefault("instructions", {})[target_name] = target.instructions(m["onnx"], states[:1])
                if target_name == "arm-a76-emulated":  # Arm numerics, once per model and runtime
                    arm = target.infer(m["onnx"], held)
                    here = Runner(m["onnx"], runtime=runtime)(held)
                    m["arm_numerics"] = {"states": len(held), "cpu": "cortex-a76",
                                         "actions_differ": int((arm.argmax(1) != here.argmax(1)).sum()),
                                         "max_abs_difference": float(abs(arm - here).max())}
            log(f"{target_name} {runtime}: done")

    refs = claim_references(bundle, fp32, sticky_episodes=args.sticky_episodes, log=log)
    for m in models:
        m.update(claim_both(bundle, m["onnx"], m["runtime"], refs))
        log(f"{m['name']} on {m['runtime']}: " + ", ".join(
            f"{k} {c['retention']:.3f}" for k, c in m["claims"].items()))
    for m in models:
        m["onnx_bytes"] = len(m.pop("onnx"))
    references = reference_summary(refs)
    facts = {"litert": get_runtime("litert").version(), "onnxruntime": get_runtime("onnxruntime").version()}
    record.save(args.out, write_markdown, policy=rel(policy), models=models, references=references, facts=facts,
                sticky_episodes=args.sticky_episodes)
    return 0


def write_markdown(data: dict[str, Any], out: Path) -> None:
    lines = header(data, "The runtime as a search dimension on emulated Arm: Pong on onnxruntime and LiteRT")
    refs = data["references"]
    det, sticky = refs["deterministic"], refs["sticky"]
    lines += [f"Policy `{data['policy']}`. onnxruntime {data['facts']['onnxruntime']}, LiteRT "
              f"{data['facts']['litert']} with its default XNNPACK delegate, 1 thread, batch 1.", "",
              f"- **deterministic** (no sticky actions): all {det['starts']} no-op starts, fp32 {det['fp32']:.2f} "
              f"= {det['fp32_distinct_games']} distinct games; random {det['random']:.2f}. Rule: retention >= "
              f"{EXACT_RULE}.",
              f"- **sticky actions p={sticky['sticky_actions']}**: {sticky['seeds']} seeds, fp32 "
              f"{sticky['fp32']:.2f} ({sticky['fp32_distinct_games']} distinct games); random "
              f"{sticky['random']:.2f}. Rule: 95 % lower bound >= {STICKY_LOW_RULE}.", "",
              "Retention is paired with fp32 on onnxruntime on the same seeds. The candidate plans are chosen by "
              "hand (see the script's docstring), not found by a search.", ""]
    for target in CPUS:
        int8 = {m["runtime"]: m["instructions"][target] for m in data["models"] if m["kind"] == "int8"}
        best_rt = min(int8, key=int8.get)
        bar = GOAL * int8[best_rt]
        lines += [f"## {target}", "",
                  f"Best uniform int8 across runtimes: {best_rt}, {int8[best_rt] / 1e6:.3f} M instructions; the "
                  f"goal is <= {GOAL}x that, {bar / 1e6:.3f} M.", "",
                  "| model | runtime | instructions | vs best int8 | deterministic retention | sticky retention "
                  "[95 %] | holds | Arm numerics (A76): actions differing, max diff |",
                  "|:---|:---|---:|---:|:---|:---|:---|:---|"]
        for m in sorted(data["models"], key=lambda m: m["instructions"][target]):
            c_det, c_st = m["claims"]["deterministic"], m["claims"].get("sticky")
            arm = m.get("arm_numerics", {})
            sticky_words = ("not played (fails the deterministic rule)" if c_st is None else
                            retention_words(c_st["retention"], c_st["low"], c_st["high"], c_st["exact"], None,
                                            recorded=True) + f" ({c_st['distinct_pairs']} pairs)")
            lines.append(
                f"| {m['name']} | {m['runtime']} | {m['instructions'][target] / 1e6:.3f} M | "
                f"{m['instructions'][target] / int8[best_rt]:.3f} | "
                + retention_words(c_det["retention"], c_det["low"], c_det["high"], c_det["exact"], c_det["starts"],
                                  recorded=True) + f" ({c_det['distinct_pairs']} pairs) | "
                + sticky_words + f" | {'yes' if m['holds'] else 'no'} | "
                f"{arm.get('actions_differ')} of {arm.get('states')}, {arm.get('max_abs_difference', 0):.2g} |")
        winners = [m for m in data["models"] if m["holds"] and m["instructions"][target] <= bar]
        if winners:
            w = min(winners, key=lambda m: m["instructions"][target])
            lines += ["", f"**{target}: {w['name']} on {w['runtime']}** holds under both protocols at "
                          f"{w['instructions'][target] / 1e6:.3f} M instructions, "
                          f"{w['instructions'][target] / int8[best_rt]:.3f}x the best uniform int8: meets the goal."]
        else:
            holding = [m for m in data["models"] if m["holds"]]
            w = min(holding, key=lambda m: m["instructions"][target]) if holding else None
            lines += ["", f"**{target}: no model here meets the goal.**" + (
                f" The cheapest that holds is {w['name']} on {w['runtime']} at "
                f"{w['instructions'][target] / int8[best_rt]:.3f}x the best int8." if w else "")]
        lines.append("")
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
