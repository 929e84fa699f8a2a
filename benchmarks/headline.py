"""Headline: the Pong DQN searched on the host and on emulated Arm, its fastest plans
claimed on 30 fresh paired episodes, and timed against onnxruntime's uniform int8.

Stages, each kept in the work folder so that a rerun continues where one stopped:

1. ``autoquant search`` on each target (the default agent, joint space, fine-tuning on,
   a wall-clock budget), as a user runs it.
2. The claim: onnxruntime's uniform int8 and each target's fastest feasible plans, up to
   three, are played on ``--episodes`` fresh seeds paired with fp32 (and a random policy
   for the retention's floor). A plan holds when its retention is at least 0.98 and the
   lower end of its 95 % interval at least 0.95; the fastest plan that holds is the
   target's answer.
3. One window on the host: fp32, uniform int8 and every claimed plan timed interleaved.
   Emulated targets count guest instructions, which are deterministic: no window needed.

Reproduce from the repository root: ``python benchmarks/headline.py`` (``--targets host``
for the host alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_POLICIES, DEFAULT_RESULTS, REPO, Record, header, quiet, rel, time_window  # noqa: E402

POLICY = Path("dqn-PongNoFrameskip-v4") / "dqn_pong.pt"
ENV_ID = "PongNoFrameskip-v4"
MEAN_RULE, LOW_RULE = 0.98, 0.95  # retention, and the lower end of its 95 % interval
GOALS = {"host": ("latency vs onnxruntime int8", 0.5), "arm-a72-emulated": ("instructions vs fp32", 0.25),
         "arm-a76-emulated": ("instructions vs fp32", 0.25)}
CLAIM_SEED = 7  # episode_seeds(7, n): 107000.. (the search plays 100000.., its confirmation 101000..)
CANDIDATES = 3


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def search(target: str, folder: Path, policy: Path, args: argparse.Namespace) -> bool:
    """``autoquant search`` on ``target`` into ``folder`` (continued with --resume); False
    when an earlier invocation finished it."""
    if (folder / "finished.json").is_file():
        log(f"{target}: search finished by an earlier invocation")
        return False
    cmd = [sys.executable, "-m", "autoquant", "search", "--policy", str(policy), "--env", ENV_ID,
           "--target", target, "--time-budget", str(args.budget if target == "host" else args.arm_budget),
           "--min-retention", str(LOW_RULE), "--finetune", str(args.finetune), "--episodes", "10",
           "--confirm-episodes", "6", "--states", "512", "--envs", "6", "--seed", "0", "--quiet",
           "--out", str(folder)]
    if (folder / "run.json").is_file():
        cmd.append("--resume")
    log(f"{target}: {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"search on {target} failed: {proc.stderr.strip().splitlines()[-1:]}")
    (folder / "finished.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    return True


def candidates(run: Any) -> list[dict[str, Any]]:
    """The run's fastest feasible plans faster than fp32, one per plan, fastest first."""
    records = [r for r in run.records() if r.result is not None and r.feasible(run.config.min_retention)
               and r.result.latency_ratio < 1.0 and not r.repeat]
    records.sort(key=lambda r: (r.result.latency_ratio, -(r.result.retention or 0.0)))
    out, seen = [], set()
    for r in records:
        if r.summary in seen:
            continue
        seen.add(r.summary)
        out.append({"trial": r.number, "summary": r.summary, "plan": r.plan, "search_ratio": r.result.latency_ratio,
                    "search_retention": r.result.retention, "fine_tuned": r.result.fine_tuned,
                    "finetune": r.result.finetune, "key": r.key})
    return out[:CANDIDATES]


def claim(run: Any, model: bytes, refs: Mapping[str, Any], seeds: list[int]) -> dict[str, Any]:
    """``model`` on the claim's seeds, paired with fp32: retention and its 95 % interval (the
    paired interval of the reward differences over fp32's gain on random)."""
    from autoquant.evaluate import EpisodeStats, paired_comparison

    episodes = run.problem.play(model, seeds)
    fp32, floor = EpisodeStats.from_json(refs["fp32"]), EpisodeStats.from_json(refs["random"])
    paired = paired_comparison(episodes, fp32, floor)
    retention, half = paired["retention"], paired["mean_diff_ci95"] / (fp32.mean - floor.mean)
    return {"rewards": list(episodes.rewards), "lengths": list(episodes.lengths), "reward": episodes.mean,
            "retention": retention, "low": retention - half, "high": retention + half,
            "holds": retention >= MEAN_RULE and retention - half >= LOW_RULE}


def references(run: Any, seeds: list[int], work: Path) -> dict[str, Any]:
    """fp32 and a random policy on the claim's seeds (played once, kept)."""
    path = work / "claim_references.json"
    if path.is_file():
        return json.loads(path.read_text())
    from autoquant.evaluate import play_episodes, random_actor

    log(f"fp32 and random on {len(seeds)} claim seeds")
    fp32 = run.problem.play(run.problem.reference_onnx, seeds)
    floor = play_episodes(random_actor(run.bundle.action_space, CLAIM_SEED), ENV_ID, seeds, n_envs=6)
    data = {"seeds": seeds, "fp32": fp32.to_json(), "random": floor.to_json()}
    path.write_text(json.dumps(data))
    return data


def target_stage(target: str, run: Any, refs: Mapping[str, Any], int8: bytes, work: Path) -> dict[str, Any]:
    """The claims of one target's fastest plans (fastest first, until one holds)."""
    path = work / f"claims-{target}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    from autoquant.compress import CompressionPlan

    out: dict[str, Any] = {"target": target, "claims": []}
    from autoquant.search import SEARCH_SECONDS

    out["search_s"] = float(run.study().user_attrs.get(SEARCH_SECONDS, 0.0))  # what its wall-clock budget counted
    out["trials"] = sum(1 for r in run.records() if r.result is not None and not r.repeat)
    out["played"] = sum(1 for r in run.records() if r.result is not None and r.result.played and not r.repeat)
    out["fine_tuned"] = [{"trial": r.number, "summary": r.summary, **(r.result.finetune or {})}
                         for r in run.records() if r.result is not None and r.result.finetune and not r.repeat]  # tried
    if target != "host":
        fp32_cost = run.problem.target.instructions(run.problem.reference_onnx, run.held_out[:1])
        out["fp32_instructions"] = fp32_cost
        out["int8_instructions"] = run.problem.target.instructions(int8, run.held_out[:1])
        out["int8_ratio"] = out["int8_instructions"] / fp32_cost
    for cand in candidates(run):
        key = cand["summary"]
        if key not in done:
            plan = CompressionPlan.from_json(cand["plan"])
            model = run.fine_tuned(plan) or run.compress(plan).onnx
            log(f"{target}: claim #{cand['trial']} {key} ({len(refs['seeds'])} episodes)")
            done[key] = {**cand, **claim(run, model, refs, refs["seeds"])}
            if target != "host":
                done[key]["instructions"] = run.problem.target.instructions(model, run.held_out[:1])
                done[key]["ratio"] = done[key]["instructions"] / out["fp32_instructions"]
            path.write_text(json.dumps(done))
        out["claims"].append(done[key])
        if done[key]["holds"]:
            break
    held = [c for c in out["claims"] if c["holds"]]
    out["answer"] = held[0]["summary"] if held else None
    return out


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from autoquant.compress import CompressionPlan, onnxruntime_uniform_int8
    from autoquant.evaluate import episode_seeds
    from autoquant.search import load_run

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    policy = args.policies / POLICY
    meta = json.loads((policy.parent / "meta.json").read_text())
    runs = {}
    reused = []
    for target in args.targets:
        if not search(target, work / target, policy, args):
            reused.append(f"search on {target}")
        runs[target] = load_run(work / target)
    host = runs.get("host") or next(iter(runs.values()))
    seeds = episode_seeds(CLAIM_SEED, args.episodes)
    refs = references(host, seeds, work)
    int8 = onnxruntime_uniform_int8(host.problem.reference_onnx, host.states.states)
    int8_path = work / "claim-int8.json"
    if not int8_path.is_file():
        log(f"onnxruntime int8 on {len(seeds)} claim seeds")
        int8_path.write_text(json.dumps(claim(host, int8, refs, seeds)))
    int8_claim = json.loads(int8_path.read_text())
    stages = {target: target_stage(target, run, refs, int8, work) for target, run in runs.items()}
    models = [("fp32", host.problem.reference_onnx), ("onnxruntime int8", int8)]
    for target, stage in stages.items():
        for c in stage["claims"]:
            plan = CompressionPlan.from_json(c["plan"])
            run = runs[target]
            models.append((f"{target} #{c['trial']}: {c['summary']}"
                           + (" (fine-tuned)" if c["fine_tuned"] else ""),
                           run.fine_tuned(plan) or run.compress(plan).onnx))
    unique: dict[bytes, str] = {}
    for label, onnx in models:
        unique.setdefault(onnx, label)
    log(f"one window: {len(unique)} models, {args.calls} calls each")
    timed = time_window([(label, onnx) for onnx, label in unique.items()], host.held_out[:1], calls=args.calls)
    return {"policy": rel(policy), "policy_meta": {k: meta.get(k) for k in ("trained_env_steps", "mean_reward",
                                                                                 "ci95", "eval_episodes", "status")},
            "settings": {"budget_s": args.budget, "arm_budget_s": args.arm_budget, "finetune_epochs": args.finetune,
                         "episodes": args.episodes, "calls": args.calls, "rule": {"mean": MEAN_RULE, "low": LOW_RULE},
                         "search_floor": LOW_RULE},
            "references": {"seeds": seeds, "fp32": refs["fp32"], "random": refs["random"]},
            "int8": int8_claim, "targets": stages, "window": timed, "reused": reused,
            "facts": host.info["target"]["facts"]}


# --- writing -----------------------------------------------------------------------------------


def _interval(c: Mapping[str, Any]) -> str:
    return f"{c['retention']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"


def markdown(data: dict[str, Any], path: Path) -> None:
    refs = data["references"]
    fp32, floor = refs["fp32"], refs["random"]
    n = len(refs["seeds"])
    lines = header(data, "Headline: the Pong DQN against onnxruntime's uniform int8")
    if data.get("reused"):
        lines += [f"This invocation found these stages finished in its work folder and reused them: "
                  f"{', '.join(data['reused'])}, with the claims they had played; it timed the window again. The "
                  "searches' own seconds are given per target below.", ""]
    meta = data["policy_meta"]
    lines += [f"Policy `{data['policy']}` ({meta.get('trained_env_steps')} env steps; its meta.json: mean reward "
              f"{meta.get('mean_reward')} ± {meta.get('ci95')} over {meta.get('eval_episodes')} episodes, "
              f"{meta.get('status')}).", "",
              f"Claim seeds {refs['seeds'][0]}..{refs['seeds'][-1]} ({n} episodes, fresh: the searches played "
              f"other seeds). On them fp32 scored **{fp32['mean']:.2f} ± {fp32['ci95']:.2f}** (95 % interval of the "
              f"mean) and a random policy {floor['mean']:.2f}. Retention = 1 + mean(R_plan - R_fp32) / "
              f"(R_fp32 - R_random), paired by seed; its 95 % interval is the paired t interval of the "
              f"differences over the same gain. A plan holds when retention >= {MEAN_RULE} and the interval's "
              f"lower end >= {LOW_RULE}.", ""]
    i8 = data["int8"]
    lines += [f"onnxruntime uniform int8 (`quantize_static`, QDQ, per channel) on the same seeds: reward "
              f"{i8['reward']:.2f}, retention {_interval(i8)}: "
              + ("holds." if i8["holds"] else "does not hold."), ""]
    lines += ["## One window on the host", "",
              f"Every model timed interleaved ({data['window'][0]['protocol']['calls']} calls each, blocks of 20, "
              "1 thread, batch 1, session options below); ratios to fp32 in this window.", "",
              "| model | p10 ms | median ms | ratio (p10) | ratio (median) | vs int8 (p10) |",
              "|:---|---:|---:|---:|---:|---:|"]
    int8_row = next(w for w in data["window"] if w["label"] == "onnxruntime int8")
    for w in data["window"]:
        lines.append(f"| {w['label']} | {w['p10_ms']:.4f} | {w['median_ms']:.4f} | {w['ratio_p10']:.3f} | "
                     f"{w['ratio_median']:.3f} | {w['p10_ms'] / int8_row['p10_ms']:.3f} |")
    lines += ["", f"Session options: `{json.dumps(data['window'][0]['session'])}`.", ""]
    for target, stage in data["targets"].items():
        what, goal = GOALS.get(target, ("ratio", None))
        lines += [f"## {target}", "",
                  f"Search: {stage['trials']} trials measured ({stage['played']} played) in "
                  f"{stage['search_s'] / 60:.1f} min of search (its latency model and sensitivities included), floor {data['settings']['search_floor']}, fine-tuning "
                  f"{data['settings']['finetune_epochs']} epochs for plans below 0.98 held-out agreement.", ""]
        if target != "host":
            lines += [f"fp32 {stage['fp32_instructions'] / 1e6:.2f} M instructions per inference; onnxruntime int8 "
                      f"{stage['int8_instructions'] / 1e6:.2f} M ({stage['int8_ratio']:.3f} of fp32).", ""]
        if stage["fine_tuned"]:
            lines += ["Fine-tuning tried (held-out agreement before -> after; judged on the tuned graph only where "
                      "it rose): " + "; ".join(
                          f"#{f['trial']} {f['summary']}: {f['fidelity_before']:.3f} -> {f['fidelity_after']:.3f} "
                          f"in {f['seconds']:.0f} s{'' if f.get('kept') else ' (not kept)'}"
                          for f in stage["fine_tuned"]) + ".", ""]
        lines += ["| trial | plan | fine-tuned | search ratio | claim reward | retention [95 %] | holds |"
                  + (" instructions | ratio to fp32 |" if target != "host" else ""),
                  "|---:|:---|:---|---:|---:|---:|:---|" + ("---:|---:|" if target != "host" else "")]
        for c in stage["claims"]:
            lines.append(f"| {c['trial']} | {c['summary']} | {'yes' if c['fine_tuned'] else 'no'} | "
                         f"{c['search_ratio']:.3f} | {c['reward']:.2f} | {_interval(c)} | "
                         f"{'yes' if c['holds'] else 'no'} |"
                         + (f" {c['instructions'] / 1e6:.2f} M | {c['ratio']:.3f} |" if target != "host" else ""))
        if not stage["claims"]:
            lines.append("| - | no feasible plan faster than fp32 | | | | | |")
        lines.append("")
        lines.append(verdict(data, target, stage, what, goal, int8_row))
        lines.append("")
    path.write_text("\n".join(lines))


def verdict(data: Mapping[str, Any], target: str, stage: Mapping[str, Any], what: str, goal: float | None,
            int8_row: Mapping[str, Any]) -> str:
    held = [c for c in stage["claims"] if c["holds"]]
    if not held:
        return f"**No plan holds on {target}**: nothing found there met the retention rule on the claim seeds."
    best = held[0]
    if target == "host":
        row = next((w for w in data["window"] if f"#{best['trial']}:" in w["label"] and w["label"].startswith(target)),
                   None)
        if row is None:
            return "The held plan was not timed in the window."
        ratio = row["p10_ms"] / int8_row["p10_ms"]
        met = "meets" if goal is not None and ratio <= goal else "misses"
        return (f"**Host: {best['summary']}** holds (retention {_interval(best)}, {len(best['rewards'])} episodes) "
                f"at **{ratio:.3f}x onnxruntime int8's latency** in one window ({row['ratio_p10']:.3f} of fp32 "
                f"against int8's {int8_row['ratio_p10']:.3f}): it {met} the goal of <= {goal}x.")
    met = "meets" if goal is not None and best["ratio"] <= goal else "misses"
    return (f"**{target}: {best['summary']}** holds (retention {_interval(best)}) at **{best['ratio']:.3f} of fp32's "
            f"instructions** (int8: {stage['int8_ratio']:.3f}): it {met} the goal of <= {goal}.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=["host", "arm-a76-emulated", "arm-a72-emulated"])
    p.add_argument("--budget", type=float, default=300.0, help="host search wall-clock budget, s (default 300)")
    p.add_argument("--arm-budget", type=float, default=900.0,
                   help="emulated search budget, s, its latency model included (default 900)")
    p.add_argument("--finetune", type=int, default=10, help="search --finetune EPOCHS (default 10)")
    p.add_argument("--episodes", type=int, default=30, help="claim episodes (default 30)")
    p.add_argument("--calls", type=int, default=1000, help="calls per model in the window (default 1000)")
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "scratch" / "headline")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "headline.json")
    p.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        markdown(json.loads(args.out.read_text()), args.out.with_suffix(".md"))
        return 0
    quiet()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    record = Record("benchmarks/headline.py", argv)
    record.save(args.out, markdown, **run_all(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
