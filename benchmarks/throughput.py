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
- the episode protocol of the run (deterministic with N no-op starts, sticky actions p, or
  seeded starts), fp32's reference episodes and the distinct games behind them;
- episodes and distinct pairs of games per played trial, and how the sequential test decided;
- Spearman's rank correlation of the proxy with measured retention over the played trials;
- the best plan, confirmed on fresh seeds (its episodes, distinct pairs of games and
  retention interval, or "exact over the N starts"), against fp32 and onnxruntime's uniform int8.

    python benchmarks/throughput.py                    # Pong 200 trials, LunarLander 100
    python benchmarks/throughput.py --networks pong --pong-trials 50
    python benchmarks/throughput.py --render           # only the .md again, from the .json

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
from common import exact_words as _starts, finite as _finite, pairs_words as _pairs  # noqa: E402
from common import protocol_words as _protocol, retention_words as _retention, spread_words as _spread  # noqa: E402

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


def _played_figure(res: Any, key: str) -> Any:
    """``key`` of the sequential test behind a played trial's retention (its paired comparison
    where the test did not record it)."""
    reward = res.reward or {}
    value = (reward.get("test") or {}).get(key)
    return value if value is not None else (reward.get("paired") or {}).get(key)


def _distinct_pairs(res: Any) -> int | None:
    """Distinct pairs of games (fp32's, the plan's) behind a played trial's retention."""
    value = _played_figure(res, "distinct_pairs") if res is not None and res.played else None
    return None if value is None else int(value)


def _exact(res: Any) -> bool | None:
    """Whether a played trial played every start of a finite protocol (its retention exact)."""
    value = _played_figure(res, "exact") if res is not None and res.played else None
    return None if value is None else bool(value)


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
    distinct = [d for d in (_distinct_pairs(res) for res in played) if d is not None]
    return {
        "trials": len(records), "measured": len(measured), "repeats": sum(1 for r in records if r.repeat),
        "failed": sum(1 for r in records if r.state == "FAIL"),
        "unplayed_phases": phases(unplayed), "unplayed_with_proxy_phases": phases(with_proxy),
        "played": len(played), "feasible": sum(1 for res in played if res.feasible(floor)),
        "episodes": {"median": _median([float(e) for e in episodes]), "min": min(episodes, default=None),
                     "max": max(episodes, default=None), "total": int(sum(episodes))},
        "distinct_pairs": {"median": _median([float(d) for d in distinct]), "min": min(distinct, default=None),
                           "max": max(distinct, default=None), "trials": len(distinct)},
        "exact_played": sum(1 for res in played if _exact(res)),
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
    from autoquant.evaluate import describe_episodes
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
    protocol = run.info.protocol or ref.fp32.protocol.to_json()  # every episode of the run is played under it
    search_record = None if confirmed is None else next((r for r in records if r.number == confirmed.trial), None)
    search_result = search_record.result if search_record is not None else None
    data = {
        "network": name, "policy": rel(Path(config.policy)), "env_id": run.bundle.env_id, "trials": n_trials,
        "settings": {k: spec[k] for k in ("episodes", "confirm", "envs", "states", "floor")},
        "protocol": protocol.get("name"), "sticky_actions": protocol.get("sticky_actions"),
        "starts": protocol.get("starts"),
        "fp32_reward": ref.fp32.mean, "fp32_rewards": list(ref.fp32.rewards),
        "fp32_episodes": len(ref.fp32.seeds), "fp32_distinct_games": ref.fp32.distinct_games,
        "fp32_exact": ref.fp32.exact, "fp32_summary": describe_episodes(ref.fp32),
        "random_reward": ref.random.mean, "random_distinct_games": ref.random.distinct_games,
        "ort_int8": {"latency_ratio": ort.get("latency_ratio"), "retention": ort.get("retention"),
                     "retention_low": _finite(ort.get("retention_low")),
                     "retention_high": _finite(ort.get("retention_high")),
                     "exact": ort.get("exact"), "distinct_pairs": ort.get("distinct_pairs")},
        "stopped": runner.stopped,
        "search_wall_s": (max(ends) - min(starts)) if starts and ends else None,
        "this_invocation_search_s": search_s, "confirm_s": confirm_s, "setup_s": setup_s,
        "summary": summarise(records, spec["floor"]),
        "best": None if confirmed is None else {
            "trial": confirmed.trial, "summary": confirmed.summary,
            "latency_ratio": confirmed.search.latency_ratio,
            "search_retention": confirmed.search.retention,
            "search_distinct_pairs": _distinct_pairs(search_result), "search_exact": _exact(search_result),
            "confirm_retention": confirmed.confirm.retention,
            "confirm_retention_low": _finite(confirmed.confirm.retention_low),
            "confirm_retention_high": _finite(confirmed.confirm.retention_high),
            "confirm_exact": confirmed.confirm.exact,
            "confirm_episodes": confirmed.confirm.episodes,
            "confirm_distinct_pairs": confirmed.confirm.distinct_pairs,
            "confirm_distinct_games": confirmed.confirm.distinct_games,
            "confirm_protocol": confirmed.confirm.protocol.get("name"),
            "confirm_sticky_actions": confirmed.confirm.sticky_actions,
            "confirm_starts": confirmed.confirm.protocol.get("starts"),
            "confirm_reward": confirmed.confirm.reward.mean,
            "confirm_fp32_reward": confirmed.confirm.fp32_reward.mean},
        "report": rel(folder / "report.md"),
    }
    log(f"{name}: fp32 {data['fp32_summary']}")
    s = data["summary"]
    log(f"{name}: {s['played']} played trials, distinct pairs of games per played trial "
        f"{_spread(s['distinct_pairs'])}" + (f", {s['exact_played']} exact" if s["exact_played"] else ""))
    if data["best"] is not None:
        best = data["best"]
        log(f"{name}: best plan, trial {best['trial']}: retention {_confirm_retention(best)} on "
            f"{best['confirm_episodes']} fresh seeds ({_pairs(best['confirm_distinct_pairs'])}, "
            f"{best['confirm_protocol']})")
    return data


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# Results written before the protocol and distinct games were recorded lack their keys: "n/a".


def _confirm_retention(best: dict[str, Any]) -> str:
    return _retention(best["confirm_retention"], best.get("confirm_retention_low"),
                      best.get("confirm_retention_high"), best.get("confirm_exact"), best.get("confirm_starts"),
                      recorded="confirm_retention_low" in best)


def _fp32_episodes(net: dict[str, Any]) -> str:
    """fp32's reference episodes: how many, the distinct games behind them, exact where so."""
    games = net.get("fp32_distinct_games")
    text = (f"{net.get('fp32_episodes', len(net['fp32_rewards']))} episodes, "
            f"{games if games is not None else 'n/a'} distinct games")
    return text + (f", {_starts(net.get('starts'))}" if net.get("fp32_exact") else "")


def write_markdown(data: dict[str, Any], out: Path) -> None:
    lines = [*header(data, "Search throughput: joint TPE, phase by phase"), f"Device: {data['device']}.", "",
             "Each search runs as `autoquant search --method joint --agent tpe` does: every trial is built by the "
             "graph builder, timed on the host against the fp32 export in one window, and scored on held-out "
             "states; the proxy (agreement with fp32 on 128 or 512 states the plan visits itself) is measured only "
             "when the trial could still beat the best feasible latency; the screen is learnt from the run's "
             "played trials; played trials stop when the sequential test (95 %) decides.", "",
             "Every reward and retention names the episode protocol it was played under and the distinct games "
             "behind it (README, \"Episodes, protocols and distinct games\"): copies of one game count once, so on "
             "a deterministic game the episodes can be fewer distinct games, and a retention is paired over "
             "distinct pairs of games (fp32's game, the plan's game on the same seed). Where every start of a "
             "deterministic game was played a retention is exact for the protocol and has no interval; elsewhere "
             "the interval is 95 %. \"n/a\": not recorded by the run that wrote these results.", ""]
    lines += ["| network | episode protocol | trials | search wall | unplayed trial, median s (all / with proxy) | "
              "build | measure | fidelity | proxy | played | episodes per played trial (median, range) | "
              "distinct pairs per played trial (median, range) | proxy vs retention (Spearman) |",
              "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for net in data["networks"]:
        s = net["summary"]
        u, w = s["unplayed_phases"], s["unplayed_with_proxy_phases"]
        wall = net["search_wall_s"]
        lines.append(
            f"| {net['network']} | {_protocol(net)} | {s['trials']} | {wall / 60:.1f} min | {_f(u['total'])} / "
            f"{_f(w['total'])} | {_f(u['compress'])} | {_f(u['measure'])} | {_f(u['fidelity'])} | {_f(w['proxy'])} | "
            f"{s['played']} | {_f(s['episodes']['median'], 0)} ({s['episodes']['min']}-{s['episodes']['max']}) | "
            f"{_spread(s.get('distinct_pairs'))} | {_f(s['spearman'], 2)} (n = {s['spearman_n']}) |")
    for net in data["networks"]:
        s = net["summary"]
        best = net["best"]
        ort = net["ort_int8"]
        exact_played = s.get("exact_played")
        lines += ["", f"## {net['network']}", "",
                  f"`{net['policy']}` on {net['env_id']}, {net['trials']} trials, retention floor "
                  f"{net['settings']['floor']}, at most {net['settings']['episodes']} paired episodes a played trial "
                  f"({net['settings']['envs']} envs in lockstep), {net['settings']['states']} calibration states. "
                  f"Episode protocol: {_protocol(net)}. fp32 reward {net['fp32_reward']:.2f} on the run's seeds "
                  f"({', '.join(f'{r:g}' for r in net['fp32_rewards'])}): {_fp32_episodes(net)}; random "
                  f"{net['random_reward']:.2f}.", "",
                  f"- search wall time: {net['search_wall_s']:.0f} s ({net['search_wall_s'] / 60:.1f} min); set-up "
                  f"{_f(net['setup_s'], 0)} s; confirmation and report {net['confirm_s']:.0f} s"
                  + (f"; stopped early: {net['stopped']}" if net["stopped"] else ""),
                  f"- trials measured {s['measured']} (repeats {s['repeats']}, failed {s['failed']}); not played "
                  f"{s['unplayed_phases']['trials']}, of which the proxy was measured for "
                  f"{s['unplayed_with_proxy_phases']['trials']}; skipped by: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["skips"].items())),
                  f"- played {s['played']} (feasible {s['feasible']}): {s['episodes']['total']} episodes in all, "
                  f"{_f(s['play_s']['total'], 0)} s of play; distinct pairs of games behind a played trial's "
                  f"retention: median (range) {_spread(s.get('distinct_pairs'))}"
                  + (f", {exact_played} exact over the starts" if exact_played else "") + "; decisions: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["decisions"].items())),
                  f"- onnxruntime uniform int8: latency ratio {_f(ort['latency_ratio'])}, retention "
                  + _retention(ort.get("retention"), ort.get("retention_low"), ort.get("retention_high"),
                               ort.get("exact"), net.get("starts"), recorded="retention_low" in ort)
                  + f" on the run's seeds ({_pairs(ort.get('distinct_pairs'))})",
                  ("- best plan: none faster than fp32 kept the floor" if best is None else
                   f"- best plan: trial {best['trial']} (`{best['summary']}`), latency ratio "
                   f"{best['latency_ratio']:.3f}; retention {best['search_retention']:.3f} in the search "
                   f"({_pairs(best.get('search_distinct_pairs'))}"
                   + (f", {_starts(net.get('starts'))}" if best.get("search_exact") else "") + "), "
                   f"{_confirm_retention(best)} on {best['confirm_episodes']} fresh seeds "
                   f"({_pairs(best.get('confirm_distinct_pairs'))}; reward {best['confirm_reward']:.2f} vs fp32 "
                   f"{best['confirm_fp32_reward']:.2f})"),
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
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    args = parser.parse_args(argv)
    if args.render:
        write_markdown(json.loads(args.out.read_text()), args.out.with_suffix(".md"))
        return 0
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
