"""fleet: one Pong search for three targets (host, emulated Cortex-A72, emulated Cortex-A76)
against three separate searches, at the same trials per target and the same settings.

Both ways run ``autoquant search`` as a user would, one process each, one after the other on
this machine (nothing else running), and are timed end to end: set-up (states, fp32 and random
episodes, the uniform-int8 reference points), the agents' set-up (latency models, sensitivities),
the trials and the confirmation. The latency models come from the cache folder in both ways
(measured once per target and runtime by earlier runs; the script counts the models either way
had to measure, and says so). The per-target best plans of both ways are put side by side, with
the trial at which each was found.

    python benchmarks/fleet.py                       # 10 trials per target, both --fleet-proposals
    python benchmarks/fleet.py --trials 6 --render   # only the .md again from the .json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, header, rel, result_arguments, run_or_render  # noqa: E402

POLICY = Path("dqn-PongNoFrameskip-v4") / "dqn_pong.pt"
ENV_ID = "PongNoFrameskip-v4"
TARGETS = ("host", "arm-a72-emulated", "arm-a76-emulated")
MODES = ("turns", "each")  # --fleet-proposals
GOAL = 0.5  # issue 25: the fleet takes at most half the time of the separate searches


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def cached_models() -> set[str]:
    """The latency models in the cache folder (``AUTOQUANT_CACHE``, else ~/.cache/autoquant)."""
    root = os.environ.get("AUTOQUANT_CACHE")
    folder = (Path(root) if root else Path.home() / ".cache" / "autoquant") / "latency"
    return {p.name for p in folder.glob("*.json")} if folder.is_dir() else set()


def search(targets: str, folder: Path, policy: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """``autoquant search`` into ``folder``, timed; kept in ``folder``/finished.json so that a
    second invocation reuses it."""
    done = folder / "finished.json"
    if done.is_file():
        log(f"{targets}: finished by an earlier invocation")
        return dict(json.loads(done.read_text()))
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run: timed again from the start
    cmd = [sys.executable, "-m", "autoquant", "search", "--policy", str(policy), "--env", ENV_ID,
           "--target", targets, "--trials", str(args.trials), "--min-retention", "0.98", "--episodes", "10",
           "--states", "512", "--envs", "6", "--seed", "0", "--quiet", "--json", "--out", str(folder), *extra]
    log(f"{targets}: {' '.join(cmd[2:])}")
    before = cached_models()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"search on {targets} failed: {proc.stderr.strip().splitlines()[-1:]}")
    from common import code_state

    found = {"wall_s": wall, "latency_models_measured": sorted(cached_models() - before),
             "commit": code_state().get("commit")}
    done.write_text(json.dumps(found))
    log(f"{targets}: {wall / 60:.1f} min")
    return found


def target_figures(run: Any) -> dict[str, Any]:
    """One target's run: its trials, what it played and the confirmed best plan."""
    records = [r for r in run.records() if r.result is not None and not r.repeat]
    played = [r for r in records if r.result.played]
    seconds: dict[str, float] = {}
    for r in records:
        for k, v in (r.result.seconds or {}).items():
            seconds[k] = seconds.get(k, 0.0) + float(v)
    found = run.confirmation()
    best = found.best if found is not None else None
    counted = [r.number for r in run.records() if r.counted and r.result is not None]
    refs = run.references()
    int8 = {k: v["latency_ratio"] for k, v in refs.items() if k.endswith(" int8") and v.get("latency_ratio")}
    out: dict[str, Any] = {
        "trials": len(records), "played": len(played),
        "episodes_played": sum(r.result.episodes for r in played if r.result.shared_from is None),
        "episodes_shared": sum(r.result.episodes for r in played if r.result.shared_from is not None),
        "seconds": {k: round(v, 1) for k, v in seconds.items()}, "int8": int8,
        "proposed_here": sum(1 for r in records if not (r.proposed_as or "").startswith("fleet:")),
        "best": None,
    }
    if best is not None:
        c = best.confirm
        out["best"] = {"trial": best.trial, "rank": counted.index(best.trial) + 1 if best.trial in counted else None,
                       "summary": best.summary, "latency_ratio": best.search.latency_ratio,
                       "retention": c.retention, "exact": c.exact, "low": c.retention_low, "high": c.retention_high,
                       "distinct_pairs": c.distinct_pairs, "episodes": c.episodes,
                       "proposed_as": next((r.proposed_as for r in records if r.number == best.trial), None)}
    return out


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from autoquant.search import load_fleet, load_run

    policy = (args.policies / POLICY).resolve()
    meta = json.loads((policy.parent / "meta.json").read_text())
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    ways: dict[str, Any] = {"separate": {}, **{f"fleet-{m}": {} for m in MODES}}
    for mode in MODES:
        ways[f"fleet-{mode}"]["process"] = search(",".join(TARGETS), work / f"fleet-{mode}", policy, args,
                                                  "--fleet-proposals", mode)
    for target in TARGETS:
        ways["separate"].setdefault("process", {})[target] = search(target, work / "separate" / target, policy, args)
    for mode in MODES:
        fleet = load_fleet(work / f"fleet-{mode}")
        ways[f"fleet-{mode}"]["targets"] = {name: target_figures(run) for name, run in fleet.members.items()}
        ways[f"fleet-{mode}"]["commit"] = json.loads((work / f"fleet-{mode}" / "finished.json").read_text()).get(
            "commit")
    ways["separate"]["targets"] = {t: target_figures(load_run(work / "separate" / t)) for t in TARGETS}
    ways["separate"]["commit"] = {t: json.loads((work / "separate" / t / "finished.json").read_text()).get("commit")
                                  for t in TARGETS}
    first = fleet.first
    fp32 = first.problem.fp32_episodes
    return {"policy": rel(policy), "policy_meta": {k: meta.get(k) for k in ("trained_env_steps", "mean_reward",
                                                                            "n_eval_episodes")},
            "trials": args.trials, "targets": list(TARGETS), "protocol": fp32.protocol.name,
            "fp32_episodes": len(fp32.seeds), "fp32_distinct_games": fp32.distinct_games,
            "fleet_wall_s": {m: ways[f"fleet-{m}"]["process"]["wall_s"] for m in MODES},
            "separate_wall_s": sum(p["wall_s"] for p in ways["separate"]["process"].values()),
            "ways": ways}


def _best(b: Mapping[str, Any] | None) -> str:
    if b is None:
        return "fp32 (no plan kept the floor and ran faster)"
    where = "exact" if b.get("exact") else f"[{b['low']:.3f}, {b['high']:.3f}]"
    return (f"#{b['trial']} (trial {b['rank']} of the target) `{b['summary']}`: {b['latency_ratio']:.3f}, retention "
            f"{b['retention']:.3f} {where} on {b['episodes']} episodes, {b['distinct_pairs']} distinct pairs")


def markdown(data: dict[str, Any], path: Path) -> None:
    separate = data["ways"]["separate"]
    fleets = {m: data["ways"][f"fleet-{m}"] for m in MODES if f"fleet-{m}" in data["ways"]}
    targets = data["targets"]
    meta = data["policy_meta"]
    n, count = data["trials"], len(targets)
    turns = ", ".join(f"{t} {math.ceil(n * (k + 1) / count) - math.ceil(n * k / count)}" for k, t in enumerate(targets))
    lines = header(data, "One search for three targets against three separate searches (Pong)")
    lines += [f"Policy `{data['policy']}` ({meta.get('trained_env_steps')} env steps; meta.json: mean reward "
              f"{meta.get('mean_reward')}). Targets: {', '.join(targets)}. {data['trials']} trials per target, ILP "
              "agent, joint space, floor 0.98, at most 10 episodes a trial (sequential test, settling on), 512 "
              f"states, no fine-tuning, seed 0. Episodes: {data['protocol']}; fp32 over {data['fp32_episodes']} "
              f"episodes, {data['fp32_distinct_games']} distinct games. Retention in the search is judged on the "
              "search's starts; each target's best plan is confirmed on all 30 starts (exact, deterministic).", "",
              f"Two ways to spend a fleet's budget (`--fleet-proposals`): **turns**, {n} plans in all, the targets' "
              f"agents proposing in turn ({turns}), every plan measured on every target; **each**, every target's "
              f"agent proposing {n} plans of its own, every plan also measured on the other targets.", "",
              "## Wall-clock, end to end (set-up, agents, trials, confirmation)", "",
              "| way | " + " | ".join(targets) + " | total | vs separate |", "|:---|" + "---:|" * (len(targets) + 2)]
    sep = separate["process"]
    lines.append("| three separate searches | " + " | ".join(f"{sep[t]['wall_s'] / 60:.1f} min" for t in targets)
                 + f" | {data['separate_wall_s'] / 60:.1f} min | 1 |")
    for mode, fleet in fleets.items():
        wall = fleet["process"]["wall_s"]
        lines.append(f"| one fleet search, {mode} | " + " | ".join("" for _ in targets)
                     + f" | {wall / 60:.1f} min | **{wall / data['separate_wall_s']:.2f}** |")
    lines += ["", f"Goal (issue 25): the fleet takes at most {GOAL} of the separate searches' time and finds "
              "per-target plans at least as fast.", ""]
    measured = [m for p in [*(f["process"] for f in fleets.values()), *sep.values()]
                for m in p.get("latency_models_measured", [])]
    lines.append(f"Latency models measured during the runs: {len(measured)}"
                 + (" (every way read every model from the cache)" if not measured else
                    f" ({', '.join(measured)}: a way that measured one paid minutes the others did not)") + ".")
    commits = {sep[t].get("commit") for t in targets} | {f["process"].get("commit") for f in fleets.values()}
    if len(commits) > 1:
        lines.append("The ways ran at different commits (the later ones changed only what a fleet shares): "
                     + "; ".join(f"{w}: {str(sep[w].get('commit'))[:7]}" for w in targets) + "; "
                     + "; ".join(f"fleet {m}: {str(f['process'].get('commit'))[:7]}" for m, f in fleets.items())
                     + ".")
    lines += ["", "## Where the time went (seconds summed over each target's trials)", "",
              "| target | way | trials | proposed by its own agent | played | episodes played | episodes taken | "
              "measure | fidelity | proxy | play |", "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        rows = [("separate", separate["targets"][t])] + [(f"fleet, {m}", f["targets"][t]) for m, f in fleets.items()]
        for way, figures in rows:
            s = figures["seconds"]
            lines.append(f"| {t} | {way} | {figures['trials']} | {figures['proposed_here']} | {figures['played']} | "
                         f"{figures['episodes_played']} | {figures['episodes_shared']} | "
                         + " | ".join(f"{s.get(k, 0):.0f}" for k in ("measure", "fidelity", "proxy", "play")) + " |")
    lines += ["", "## Best plan per target", "",
              "| target | best uniform int8 | separate search | " + " | ".join(f"fleet, {m}" for m in fleets) + " |",
              "|:---|---:|:---|" + ":---|" * len(fleets)]
    for t in targets:
        int8 = separate["targets"][t]["int8"]
        low = f"{min(int8.values()):.3f}" if int8 else "n/a"
        lines.append(f"| {t} | {low} | {_best(separate['targets'][t]['best'])} | "
                     + " | ".join(_best(f["targets"][t]["best"]) for f in fleets.values()) + " |")
    lines += ["", "Latency ratios are to fp32 on the target (instructions on the emulated CPUs, p10 time on the "
              "host). 'The kth trial' counts that target's trials, the other targets' plans measured on it "
              "included.", ""]
    path.write_text("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10, help="trials per target (default 10)")
    result_arguments(p, "fleet")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_or_render("benchmarks/fleet.py", argv, parse_args(argv), run_all, markdown)


if __name__ == "__main__":
    sys.exit(main())
