"""Search throughput: a long joint TPE search, timed phase by phase.

One search per network, as ``autoquant search --method joint --agent tpe`` runs it, with
the engine of the throughput issue: the graph builder (plan + fp32 weights -> QDQ graph
in numpy), the proxy (agreement with fp32 on states the plan visits itself, measured
only when the latency leaves the question open), the screen learnt from the run's played
trials, and played trials stopped by the sequential test. Printed and written:

- the search's wall time (first trial start to last trial end) and the whole
  invocation's (set-up, search, confirmation, report);
- per-phase medians over the trials that were not played: all of them, and those
  whose proxy was measured (build = ``compress``, ``measure`` = latency on the target,
  ``fidelity`` = held-out states, ``proxy`` = the plan's own rollout);
- episodes per played trial, and how the sequential test decided;
- Spearman's rank correlation of the proxy with measured retention over the played trials;
- the best plan, confirmed on fresh seeds, against fp32 and onnxruntime's uniform int8.

    python benchmarks/throughput.py                    # Pong 200 trials, LunarLander 100
    python benchmarks/throughput.py --networks pong --pong-trials 50

Run folders go to ``benchmarks/scratch/throughput/<network>/`` (``--fresh`` to start over;
an interrupted search resumes). Nothing else should run meanwhile: it is timed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_POLICIES,
    DEFAULT_RESULTS,
    REPO,
    Record,
    header,
    quiet,
    rel,
)

DEFAULT_WORK = REPO / "benchmarks" / "scratch" / "throughput"
NETWORKS: dict[str, dict[str, Any]] = {
    "pong": {"path": ("dqn-PongNoFrameskip-v4", "dqn_pong.pt"), "env": "PongNoFrameskip-v4", "trials": 200,
             "episodes": 10, "confirm": 6, "envs": 6, "states": 512, "floor": 0.9},
    "lunarlander": {"path": ("dqn-LunarLander-v2", "LunarLander-v2.zip"), "env": None, "trials": 100,
                    "episodes": 10, "confirm": 20, "envs": 8, "states": 1024, "floor": 0.98},
}
PHASES = ("compress", "measure", "fidelity", "proxy")


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarise(records: list[Any], floor: float) -> dict[str, Any]:
    """Phase medians, episodes, decisions and the proxy's rank correlation, from TrialRecords."""
    from autoquant.report import spearman

    measured = [r for r in records if r.result is not None and not r.cached and r.result.seconds]
    unplayed = [r.result for r in measured if not r.result.played]
    with_proxy = [res for res in unplayed if res.proxy is not None]
    played = [r.result for r in measured if r.result.played]

    def phases(results: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {p: _median([res.seconds.get(p, 0.0) for res in results]) for p in PHASES}
        out["total"] = _median([sum(res.seconds.get(p, 0.0) for p in PHASES) for res in results])
        out["trials"] = len(results)
        return out

    decisions: dict[str, int] = {}
    for res in played:
        decision = ((res.reward or {}).get("test") or {}).get("decision") or "none"
        decisions[decision] = decisions.get(decision, 0) + 1
    pairs = [(res.proxy, res.retention) for res in played if res.proxy is not None and res.retention is not None]
    episodes = [res.episodes for res in played]
    return {
        "trials": len(records), "measured": len(measured), "repeats": sum(1 for r in records if r.repeat),
        "failed": sum(1 for r in records if r.state == "FAIL"),
        "unplayed_phases": phases(unplayed), "unplayed_with_proxy_phases": phases(with_proxy),
        "played": len(played), "feasible": sum(1 for res in played if res.feasible(floor)),
        "episodes": {"median": _median([float(e) for e in episodes]), "min": min(episodes, default=None),
                     "max": max(episodes, default=None), "total": int(sum(episodes))},
        "play_s": {"median": _median([res.seconds.get("play", 0.0) for res in played]),
                   "total": float(sum(res.seconds.get("play", 0.0) for res in played))},
        "decisions": decisions,
        "spearman": spearman([p for p, _ in pairs], [q for _, q in pairs]), "spearman_n": len(pairs),
        "skips": _skips([res.skip_reason or "" for res in unplayed]),
    }


def _skips(reasons: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in reasons:
        kind = ("latency" if reason.startswith("latency") else "proxy fit" if "predicts" in reason
                else "proxy floor" if reason.startswith("proxy") else "other")
        out[kind] = out.get(kind, 0) + 1
    return out


def run_network(name: str, spec: dict[str, Any], policies: Path, work: Path, fresh: bool, trials: int | None,
                log: Any) -> dict[str, Any]:
    from autoquant.search import ProblemSettings, RunConfig, load_run, start_run

    folder = work / name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    n_trials = trials or spec["trials"]
    config = RunConfig(policy=policies.joinpath(*spec["path"]).resolve(), env_id=spec["env"], method="joint",
                       agent="tpe", n_trials=n_trials, confirm_episodes=spec["confirm"], n_states=spec["states"],
                       argv=tuple(sys.argv),
                       settings=ProblemSettings(min_retention=spec["floor"], episodes=spec["episodes"],
                                                n_envs=spec["envs"], seed=0))
    t0 = time.perf_counter()
    if (folder / "run.json").is_file():
        run = load_run(folder, n_trials=n_trials)
        setup_s = json.loads((folder / "setup_s.json").read_text())["setup_s"] \
            if (folder / "setup_s.json").is_file() else None
    else:
        run = start_run(folder, config, log=log)
        setup_s = time.perf_counter() - t0
        (folder / "setup_s.json").write_text(json.dumps({"setup_s": setup_s}) + "\n")

    def progress(outcome: Any, runner: Any) -> None:
        res = outcome.result
        what = (f"played {res.episodes} ep, retention {res.retention:.3f}" if res is not None and res.played
                else (res.skip_reason if res is not None else outcome.error))
        log(f"{name} trial {outcome.number}: " + (f"ratio {res.latency_ratio:.3f}, " if res else "") + str(what))

    t1 = time.perf_counter()
    runner = run.search(progress=progress)
    search_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    confirmed = run.confirm()
    run.write_report()
    confirm_s = time.perf_counter() - t2
    records = run.records()
    starts = [r.started_at for r in records if r.started_at is not None]
    ends = [r.finished_at for r in records if r.finished_at is not None]
    ref = run.info.references
    ort = ref.onnxruntime_int8 or {}
    return {
        "network": name, "policy": rel(Path(config.policy)), "env_id": run.bundle.env_id, "trials": n_trials,
        "settings": {k: spec[k] for k in ("episodes", "confirm", "envs", "states", "floor")},
        "fp32_reward": ref.fp32.mean, "fp32_rewards": list(ref.fp32.rewards),
        "random_reward": ref.random.mean,
        "ort_int8": {k: ort.get(k) for k in ("latency_ratio", "retention")},
        "stopped": runner.stopped,
        "search_wall_s": (max(ends) - min(starts)) if starts and ends else None,
        "this_invocation_search_s": search_s, "confirm_s": confirm_s, "setup_s": setup_s,
        "summary": summarise(records, spec["floor"]),
        "best": None if confirmed is None else {
            "trial": confirmed.trial, "summary": confirmed.summary,
            "latency_ratio": confirmed.search.latency_ratio,
            "search_retention": confirmed.search.retention,
            "confirm_retention": confirmed.confirm.retention,
            "confirm_episodes": confirmed.confirm.episodes,
            "confirm_reward": confirmed.confirm.reward.mean,
            "confirm_fp32_reward": confirmed.confirm.fp32_reward.mean},
        "report": rel(folder / "report.md"),
    }


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_markdown(data: dict[str, Any], out: Path) -> None:
    lines = [*header(data, "Search throughput: joint TPE, phase by phase"), f"Device: {data['device']}.", "",
             "Each search runs as `autoquant search --method joint --agent tpe` does: every trial is built by the "
             "graph builder, timed on the host against the fp32 export in one window, and scored on held-out "
             "states; the proxy (agreement with fp32 on 128 or 512 states the plan visits itself) is measured only "
             "when the trial could still beat the best feasible latency; the screen is learnt from the run's "
             "played trials; played trials stop when the sequential test (95 %) decides.", ""]
    lines += ["| network | trials | search wall | unplayed trial, median s (all / with proxy) | build | measure | "
              "fidelity | proxy | played | episodes per played trial (median, range) | proxy vs retention "
              "(Spearman) |", "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net in data["networks"]:
        s = net["summary"]
        u, w = s["unplayed_phases"], s["unplayed_with_proxy_phases"]
        wall = net["search_wall_s"]
        lines.append(
            f"| {net['network']} | {s['trials']} | {wall / 60:.1f} min | {_f(u['total'])} / {_f(w['total'])} | "
            f"{_f(u['compress'])} | {_f(u['measure'])} | {_f(u['fidelity'])} | {_f(w['proxy'])} | {s['played']} | "
            f"{_f(s['episodes']['median'], 0)} ({s['episodes']['min']}-{s['episodes']['max']}) | "
            f"{_f(s['spearman'], 2)} (n = {s['spearman_n']}) |")
    for net in data["networks"]:
        s = net["summary"]
        best = net["best"]
        lines += ["", f"## {net['network']}", "",
                  f"`{net['policy']}` on {net['env_id']}, {net['trials']} trials, retention floor "
                  f"{net['settings']['floor']}, at most {net['settings']['episodes']} paired episodes a played trial "
                  f"({net['settings']['envs']} envs in lockstep), {net['settings']['states']} calibration states. "
                  f"fp32 reward {net['fp32_reward']:.2f} on the run's seeds "
                  f"({', '.join(f'{r:g}' for r in net['fp32_rewards'])}), random {net['random_reward']:.2f}.", "",
                  f"- search wall time: {net['search_wall_s']:.0f} s ({net['search_wall_s'] / 60:.1f} min); set-up "
                  f"{_f(net['setup_s'], 0)} s; confirmation and report {net['confirm_s']:.0f} s"
                  + (f"; stopped early: {net['stopped']}" if net["stopped"] else ""),
                  f"- trials measured {s['measured']} (repeats {s['repeats']}, failed {s['failed']}); not played "
                  f"{s['unplayed_phases']['trials']}, of which the proxy was measured for "
                  f"{s['unplayed_with_proxy_phases']['trials']}; skipped by: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["skips"].items())),
                  f"- played {s['played']} (feasible {s['feasible']}): {s['episodes']['total']} episodes in all, "
                  f"{_f(s['play_s']['total'], 0)} s of play; decisions: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["decisions"].items())),
                  f"- onnxruntime uniform int8: latency ratio {_f(net['ort_int8']['latency_ratio'])}, retention "
                  f"{_f(net['ort_int8']['retention'])}",
                  ("- best plan: none faster than fp32 kept the floor" if best is None else
                   f"- best plan: trial {best['trial']} (`{best['summary']}`), latency ratio "
                   f"{best['latency_ratio']:.3f}; retention {best['search_retention']:.3f} in the search, "
                   f"{best['confirm_retention']:.3f} on {best['confirm_episodes']} fresh seeds (reward "
                   f"{best['confirm_reward']:.2f} vs fp32 {best['confirm_fp32_reward']:.2f})"),
                  "", "Per-phase medians, seconds:", "", "| trials | n | build | measure | fidelity | proxy | total |",
                  "|:---|---:|---:|---:|---:|---:|---:|"]
        for label, key in (("not played", "unplayed_phases"), ("not played, proxy measured",
                                                                 "unplayed_with_proxy_phases")):
            p = s[key]
            lines.append(f"| {label} | {p['trials']} | {_f(p['compress'])} | {_f(p['measure'])} | "
                         f"{_f(p['fidelity'])} | {_f(p['proxy'])} | {_f(p['total'])} |")
        lines += ["", f"The run's own report: `{net['report']}` (not committed)."]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=["pong", "lunarlander"])
    parser.add_argument("--pong-trials", type=int, default=None)
    parser.add_argument("--lunarlander-trials", type=int, default=None)
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "throughput.json")
    parser.add_argument("--fresh", action="store_true", help="start the searches over")
    args = parser.parse_args(argv)
    quiet()
    from autoquant.targets import host_facts

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    record = Record("benchmarks/throughput.py", argv)  # before any work: the library that runs is recorded
    networks = []
    for name in args.networks:
        trials = getattr(args, f"{name}_trials")
        networks.append(run_network(name, NETWORKS[name], args.policies, args.work, args.fresh, trials, log))
    facts = host_facts(1)
    record.save(args.out, write_markdown, networks=networks,
                device=f"{facts.get('cpu')}, {facts.get('cores')} cores, 1 onnxruntime thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
