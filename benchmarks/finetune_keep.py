"""When should a search keep a fine-tuned graph? Every graph a search kept fine-tuned,
against the same plan as built, on the reward that decides.

The search fine-tunes a plan whose held-out agreement with fp32 is below 0.98 and keeps
the tuned graph where that agreement rose. For every trial of a finished run that kept
one, this plays both graphs, in the plan's runtime's numerics (LiteRT on x86 computes
what it computes on Arm, to 1e-6), on every start of the deterministic game (exact), and
measures what a search could judge them by before any episode:

- held-out agreement: the share of the run's held-out states where the greedy action
  equals fp32's (the search's rule: keep the tuned graph where this rose);
- the proxy: the same on states each graph visits itself (the search's screen);
- output error: mean |Q - Q_fp32| / mean |Q_fp32| on the held-out states.

Printed and written: per trial, both graphs' figures and exact retention, and for each
figure how often "keep the tuned graph where it is better" picks the graph with the
higher retention.

    python benchmarks/finetune_keep.py --run benchmarks/scratch/headline/arm-a76-emulated
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_RESULTS, exact_words, header, protocol_words, rel, run_or_render  # noqa: E402

FIGURES = ("held_out_agreement", "proxy", "output_error")


def figures(run: Any, plan: Any, model: bytes, reference: Any, held_reference: np.ndarray) -> dict[str, float]:
    """``reference``: fp32's session on this host; ``held_reference``: its outputs on the held-out states."""
    from autoquant.evaluate import fidelity
    from autoquant.runtimes import Runner

    problem = run.problem
    runner = Runner(model, runtime=plan.runtime or problem.runtime)
    held = fidelity(held_reference, runner(problem.held_out), run.bundle.action)
    own = problem.visited_states(runner)
    proxy = fidelity(reference(own), runner(own), run.bundle.action)
    return {"held_out_agreement": float(held["action_agreement"]), "proxy": float(proxy["action_agreement"]),
            "output_error": float(held["output_error"])}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from autoquant.compress import CompressionPlan
    from autoquant.evaluate import paired_comparison
    from autoquant.search import load_run

    run = load_run(args.run)
    problem = run.problem
    seeds, fp32, random_play = problem.all_starts()
    from autoquant.runtimes import Runner

    reference = Runner(problem.reference_onnx)  # fp32 on this host, as the graphs below run
    held_reference = reference(problem.held_out)
    rows = []
    for record in run.records():
        result = record.result
        if result is None or record.repeat or not (result.finetune or {}).get("kept"):
            continue
        plan = CompressionPlan.from_json(record.plan)
        graphs = {"built": run.compress(plan).onnx, "tuned": run.fine_tuned(plan)}
        row: dict[str, Any] = {"trial": record.number, "summary": record.summary,
                               "search_retention": result.retention, "latency_ratio": result.latency_ratio,
                               "built_ratio": problem.latency_ratio(plan)}
        for name, model in graphs.items():
            assert model is not None
            played = problem.play(model, seeds, runtime=plan.runtime)
            paired = paired_comparison(played, fp32, random_play)
            row[name] = {**figures(run, plan, model, reference, held_reference), "retention": paired["retention"],
                         "exact": paired["exact"],
                         "distinct_pairs": paired["distinct_pairs"], "mean_reward": played.mean}
            print(f"#{record.number} {name}: {row[name]}", flush=True)
        rows.append(row)
    better = {}
    for fig in FIGURES:
        sign = -1.0 if fig == "output_error" else 1.0
        hits = [(sign * (r["tuned"][fig] - r["built"][fig]) > 0) == (r["tuned"]["retention"] > r["built"]["retention"])
                for r in rows if r["tuned"]["retention"] != r["built"]["retention"]]
        better[fig] = {"right": int(sum(hits)), "of": len(hits)}
    return {"run": rel(args.run), "target": run.config.target, "starts": len(seeds),
            "protocol": fp32.protocol.name, "sticky_actions": fp32.protocol.sticky_actions,
            "fp32_mean": fp32.mean, "fp32_distinct_games": fp32.distinct_games, "rows": rows, "criteria": better,
            "tuned_better": sum(r["tuned"]["retention"] > r["built"]["retention"] for r in rows),
            "built_better": sum(r["tuned"]["retention"] < r["built"]["retention"] for r in rows)}


def markdown(data: dict[str, Any], path: Path) -> None:
    # Pages made before the protocol was recorded: the script plays every start of a finite
    # protocol, which is the deterministic game's (sticky actions have no finite starts).
    protocol = {"protocol": data.get("protocol") or f"deterministic, {data['starts']} no-op starts",
                "starts": data["starts"], "sticky_actions": data.get("sticky_actions", 0.0)}
    games = data.get("fp32_distinct_games")
    lines = header(data, "Keep the fine-tuned graph? Each one a search kept, against the plan as built")
    lines += [f"Run `{data['run']}` ({data['target']}): every trial that kept a fine-tuned graph. Protocol: "
              f"{protocol_words(protocol)}. fp32 and both graphs of each plan played every one of the "
              f"{data['starts']} starts, so each mean and retention is {exact_words(data['starts'])} (no "
              f"interval): fp32 {data['fp32_mean']:.2f}"
              + (f" ({games} distinct games)" if games is not None else "")
              + ". The starts replay a few distinct games; the distinct pairs of games (fp32's, the graph's) "
              "behind each retention are given beside it. Runs in the plan's runtime's numerics. Agreement and "
              "output error on the run's held-out states; the proxy on states each graph visits itself.", "",
              "| trial | plan | latency ratio built, tuned | held-out agreement built -> tuned | proxy built -> tuned "
              "| output error built -> tuned | retention built -> tuned (exact) | distinct pairs built, tuned |",
              "|---:|:---|:---|:---|:---|:---|:---|:---|"]
    for r in data["rows"]:
        b, t = r["built"], r["tuned"]
        lines.append(f"| {r['trial']} | {r['summary']} | {r['built_ratio']:.3f}, {r['latency_ratio']:.3f} "
                     f"| {b['held_out_agreement']:.3f} -> {t['held_out_agreement']:.3f} "
                     f"| {b['proxy']:.3f} -> {t['proxy']:.3f} | {b['output_error']:.3f} -> {t['output_error']:.3f} "
                     f"| {b['retention']:.3f} -> **{t['retention']:.3f}** "
                     f"| {b['distinct_pairs']}, {t['distinct_pairs']} |")
    lines += ["", f"Fine-tuning raised the exact retention on {data['tuned_better']} of {len(data['rows'])} plans and "
              f"lowered it on {data['built_better']}.", "",
              "How often keeping the tuned graph where a figure is better picks the graph that keeps more reward "
              "(plans whose two graphs tie on reward left out):", ""]
    for fig, c in data["criteria"].items():
        lines.append(f"- {fig.replace('_', ' ')}: {c['right']} of {c['of']}")
    same: dict[tuple[float, ...], list[int]] = {}
    for r in data["rows"]:  # plans whose built graphs compute one function (the pruned channels were dead)
        b = r["built"]
        same.setdefault((b["held_out_agreement"], b["proxy"], b["output_error"], b["retention"]), []).append(r["trial"])
    groups = [g for g in same.values() if len(g) > 1]
    if groups:
        lines += ["", "Built graphs that play and score alike, to the last state (their extra pruning removes dead "
                  "channels): " + "; ".join(", ".join(f"#{t}" for t in g) for g in groups)
                  + ". Their tuned graphs differ: fine-tuning starts from other trainable weights."]
    floor = 0.98
    keep = [(r["built_ratio"], r["trial"], "built") for r in data["rows"] if r["built"]["retention"] >= floor]
    keep += [(r["latency_ratio"], r["trial"], "tuned") for r in data["rows"] if r["tuned"]["retention"] >= floor]
    if keep:
        ratio, trial, which = min(keep)
        lines += ["", f"The fastest graph here at or above {floor} exact is #{trial} {which}, latency ratio "
                  f"{ratio:.3f}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="a finished run folder whose search fine-tuned plans")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "finetune_keep.json")
    p.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    args = p.parse_args(argv)
    if args.run is None and not args.render:
        p.error("--run is required (a finished run folder), unless --render")
    return run_or_render("benchmarks/finetune_keep.py", argv, args, run_all, markdown)


if __name__ == "__main__":
    sys.exit(main())
