"""Search agents and search spaces compared at equal budgets, against onnxruntime's int8.

For two policy networks, the Nature-CNN Q-network of a DQN on Pong
(``dqn-PongNoFrameskip-v4/dqn_pong.pt``, the headline) and the DQN MLP on
LunarLander (``dqn-LunarLander-v2/LunarLander-v2.zip``, played on LunarLander-v3),
six searches run with the same wall-clock budget (and trial cap), seed, recorded
states, reference episodes and retention floor (``autoquant.search._compare.compare``):

  joint/ddpg    the meta-RL agent (DDPG), trained on the surrogate between real trials
  joint/ilp     the integer program over the latency model and summed sensitivities
  joint/tpe     Optuna's TPE on the joint space
  joint/random  seeded random search on the joint space
  prune/tpe     TPE on pruning ratios only (fp32 weights)
  quant/tpe     TPE on bit widths only (nothing pruned)

so agents are compared on one space (the first four rows) and spaces with one
agent (joint/tpe, prune/tpe, quant/tpe). Every trial is measured like
``autoquant search`` does it: the graph builder, onnxruntime latency against the
fp32 export in the same window (latency ratio, lower is faster), the proxy screen,
and episodes played only when the trial can still beat the best feasible plan,
stopped by the sequential test once retention is clearly above or below the floor.
Each search's best plans are confirmed on fresh seeds. ``benchmarks/throughput.py``
runs the long (200-trial) joint TPE search and times it phase by phase.

For each network it writes the episode protocol every search played under (deterministic
with N no-op starts, sticky actions p, or seeded starts), fp32's reference episodes and the
distinct games behind them, the comparison table (best latency ratio at the
retention floor and its retention with its distinct pairs of games, distinct pairs per played
trial, hypervolume of (latency ratio, retention),
trials to reach 95 % of the best speed-up, wall time), the confirmed plan of each
search, onnxruntime's own uniform static int8 as a reference point (measured once
per network at set-up, like a trial) and the headline: the fastest autoquant plan
at the floor against onnxruntime int8 (speed-up factor = int8 latency ratio /
plan latency ratio).

Retention floors: LunarLander 0.98. Pong 0.9: one episode of a policy that rallies
lasts up to 27,000 agent steps, and per-episode rewards differ by more than 10 points
between seeds while the fp32-minus-random gap is about 30, so retention measured
on a few paired episodes moves by 0.2 or more with no change in the policy's
quality. A floor of 0.98 would mostly test that noise; 0.9 allows it a margin.
A Pong trial plays at most ``--pong-episodes`` (10), fewer when the sequential
test decides, and the confirmation on 6 fresh seeds guards against plans that
passed by luck.
The Pong checkpoint is partially trained and may be replaced: its reward is read
from the run, never assumed.

The budget is wall-clock (``--pong-seconds``, ``--lunarlander-seconds``), the agents'
set-up included (sensitivities, which each model-based agent measures in its own run
folder); the target's latency model is measured once per network at set-up and reused
by ddpg and ilp, as a user's later runs on the same target reuse it (its cost is
reported). A search ends at its wall-clock budget or at its trial cap, never mid-trial.

Run from the repository root (about 45 minutes on 2 cores; resumable: run the
same command again after an interruption, finished trials are kept):

    python benchmarks/search.py                       # full run, writes benchmarks/results/
    python benchmarks/search.py --quick               # tiny budgets, prints only
    python benchmarks/search.py --networks lunarlander --lunarlander-trials 60
    python benchmarks/search.py --render              # only search.md again, from search.json

Run folders go to ``benchmarks/scratch/search/<network>/<method>-<agent>/`` (git
ignored; ``--out DIR`` for another place, ``--fresh`` to start over). Policies are
read from ``../shared/policies`` relative to the repository root (``--policies DIR``).
Latency ratios are only comparable within one network's run: absolute timings
drift with the machine's load, so nothing else should run during the benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DEFAULT_POLICIES, DEFAULT_RESULTS, REPO, quiet, rel, time_window  # benchmarks/common.py
from common import exact_words as _starts, finite as _finite, pairs_words as _pairs  # noqa: E402
from common import protocol_words as _protocol_text, retention_words, spread_words as _spread_text  # noqa: E402

DEFAULT_WORK = REPO / "benchmarks" / "scratch" / "search"

COMBOS: tuple[tuple[str, str], ...] = (
    ("joint", "ddpg"), ("joint", "ilp"), ("joint", "tpe"), ("joint", "random"), ("prune", "tpe"), ("quant", "tpe"),
)
# compare() runs the product methods x agents; the six combos are two products.
GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("joint",), ("ddpg", "ilp", "tpe", "random")),
    (("prune", "quant"), ("tpe",)),
)
SETTINGS = ("trials", "seconds", "episodes", "confirm_episodes", "envs", "states", "min_retention")


@dataclass(frozen=True)
class Budget:
    """What one search of a network may spend, and its retention floor."""

    trials: int  # the cap
    seconds: float  # the wall-clock budget
    episodes: int
    confirm_episodes: int
    envs: int
    states: int
    min_retention: float


@dataclass(frozen=True)
class Network:
    key: str
    title: str
    path: str  # relative to the policies directory
    env_id: str | None  # None: implied by the file
    full: Budget
    quick: Budget


NETWORKS = (
    Network("pong", "Nature-CNN Q-network (DQN, PongNoFrameskip-v4)", "dqn-PongNoFrameskip-v4/dqn_pong.pt",
            "PongNoFrameskip-v4",
            full=Budget(trials=200, seconds=200.0, episodes=10, confirm_episodes=6, envs=6, states=512,
                        min_retention=0.9),
            quick=Budget(trials=2, seconds=60.0, episodes=1, confirm_episodes=1, envs=1, states=64,
                         min_retention=0.9)),
    Network("lunarlander", "MLP Q-network (DQN, LunarLander-v3)", "dqn-LunarLander-v2/LunarLander-v2.zip", None,
            full=Budget(trials=200, seconds=60.0, episodes=10, confirm_episodes=20, envs=8, states=1024,
                        min_retention=0.98),
            quick=Budget(trials=3, seconds=60.0, episodes=2, confirm_episodes=2, envs=2, states=128,
                         min_retention=0.98)),
)




def _isa_flags() -> str:
    """The CPU's vector extensions that decide which int8 kernels onnxruntime picks."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in wanted if flag in have) or "none of " + ", ".join(wanted)
    except OSError:
        pass
    return "unknown"




LIBRARY_PATHS = ("autoquant", "search_spaces", "hw_targets")


def code_state() -> dict[str, Any]:
    """The library's git commit, and which of its files differ from it (None outside git)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", *LIBRARY_PATHS)
    return {"commit": commit,
            "uncommitted": [line[3:] for line in status.splitlines()] if status else []}


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return None
    return float(ordered[n // 2]) if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


def _spread(values: Sequence[int]) -> dict[str, Any]:
    """Median, range and count of a per-trial figure."""
    return {"median": _median([float(v) for v in values]), "min": min(values, default=None),
            "max": max(values, default=None), "trials": len(values)}


# --- running one network ---------------------------------------------------------------------


def base_config(network: Network, policies: Path, budget: Budget, seed: int, argv: list[str]) -> Any:
    from autoquant.search import ProblemSettings, RunConfig

    return RunConfig(
        policy=(policies / network.path).resolve(), env_id=network.env_id, method="joint", agent="ddpg",
        n_trials=budget.trials, time_budget_s=budget.seconds, confirm_episodes=budget.confirm_episodes,
        n_states=budget.states, argv=tuple(argv),
        settings=ProblemSettings(min_retention=budget.min_retention, episodes=budget.episodes, n_envs=budget.envs,
                                 seed=seed),
    )


def _checked(config: Any) -> dict[str, Any]:
    """What a run folder's results depend on, budget aside."""
    s = config.settings
    return {"policy": config.policy, "target": config.target, "mode": s.mode, "min_retention": s.min_retention,
            "episodes": s.episodes, "confirm_episodes": config.confirm_episodes, "fidelity_floor": s.fidelity_floor,
            "n_states": config.n_states, "n_envs": s.n_envs, "seed": s.seed, "method": config.method,
            "agent": config.agent}


def check_existing(folder: Path, config: Any, method: str, agent: str) -> None:
    """A run folder left by an earlier invocation must have been asked the same (budget aside)."""
    from autoquant.errors import UsageError
    from autoquant.search import read_run_info

    if not (folder / "run.json").is_file():
        return
    stored = read_run_info(folder).config
    if config.env_id is not None and stored.env_id not in (config.env_id, None):
        raise UsageError(f"{rel(folder)} was run on {stored.env_id}, not {config.env_id}; "
                         "pass --fresh or another --out")
    old, new = _checked(stored), _checked(dataclasses.replace(config, method=method, agent=agent))
    differs = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    if differs:
        text = ", ".join(f"{k}={old!r} there, {new!r} asked" for k, (old, new) in differs.items())
        raise UsageError(f"{rel(folder)} was made with other settings ({text}); "
                         "pass --fresh to start over, or another --out")


def prepare(out: Path, base: Any, log: Callable[[str], None]) -> float | None:
    """Create the five run folders up front, all sharing the first one's recorded states
    and reference episodes (compare() shares only within one methods x agents product).
    Returns the seconds the set-up took (when this script did it, in any invocation)."""
    from autoquant.search import load_run, start_run

    first_method, first_agent = COMBOS[0]
    first_folder = out / f"{first_method}-{first_agent}"
    for method, agent in COMBOS:
        check_existing(out / f"{method}-{agent}", base, method, agent)
    t0 = time.perf_counter()
    if (first_folder / "run.json").is_file():
        first = load_run(first_folder)
    else:
        log(f"setting up {rel(first_folder)}: recording states, playing fp32, random and onnxruntime int8")
        first = start_run(first_folder, dataclasses.replace(base, method=first_method, agent=first_agent), log=log)
        (out / SETUP).write_text(json.dumps({"setup_s": time.perf_counter() - t0}) + "\n")
    for method, agent in COMBOS[1:]:
        folder = out / f"{method}-{agent}"
        if not (folder / "run.json").is_file():
            start_run(folder, dataclasses.replace(base, method=method, agent=agent, study_name=None),
                      share_from=first)
    model_path = out / LATENCY_MODEL
    if not model_path.is_file():  # the target's latency model, measured once for ddpg and ilp
        from autoquant.agents import latency_model

        log("measuring the target's latency model (every layer option alone and every adjacent pair)")
        t1 = time.perf_counter()
        model = latency_model(first.problem, first.space)
        model_path.write_text(json.dumps({"seconds": time.perf_counter() - t1, "probes": model.probes}) + "\n")
    setup = out / SETUP
    return float(json.loads(setup.read_text())["setup_s"]) if setup.is_file() else None


class Progress:
    """One line per trial; and when each combo started, to time search + confirmation."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.order: list[str] = []

    def log(self, text: str) -> None:
        print(f"  [{_clock()}] {text}", flush=True)

    def combo(self, label: str, total: int) -> Callable[[Any, Any], None]:
        self.started[label] = time.perf_counter()
        self.order.append(label)
        start = self.started[label]

        def report(outcome: Any, runner: Any) -> None:
            result = outcome.result
            if outcome.error:
                what = f"FAILED {outcome.error}"
            elif result is None:
                what = "no result"
            else:
                played = (f"retention {result.retention:.3f}" if result.played and result.retention is not None
                          else f"not played ({result.skip_reason})")
                what = (f"{result.summary or 'fp32'}: latency ratio {result.latency_ratio:.3f}, {played}"
                        + (" [cached]" if outcome.cached else ""))
            best = runner.best_latency
            print(f"    {label} #{outcome.number} ({time.perf_counter() - start:.0f} s) {what}; best "
                  f"{_fmt(best)}", flush=True)

        return report

    def totals(self, end: float) -> dict[str, float]:
        """Seconds from each combo's start to the next one's (its search, confirmation and report)."""
        out = {}
        for i, label in enumerate(self.order):
            nxt = self.started[self.order[i + 1]] if i + 1 < len(self.order) else end
            out[label] = nxt - self.started[label]
        return out


FINISHED = "benchmark_finished.json"
SETUP = "benchmark_setup.json"


LATENCY_MODEL = "latency_model.json"


def _finished(folder: Path, trials: int) -> dict[str, Any] | None:
    """The marker this script leaves in a run folder once its search and confirmation are
    done, if it was for ``trials`` trials (compare() would confirm a finished run again)."""
    path = folder / FINISHED
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("n_trials") == trials else None


def _write_finished(folder: Path, trials: int, total_s: float | None, code: Mapping[str, Any]) -> None:
    (folder / FINISHED).write_text(json.dumps({"n_trials": trials, "total_s": total_s, "code": code}) + "\n")


def _counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        "complete": sum(1 for r in records if r.get("state") == "COMPLETE"),
        "failed": sum(1 for r in records if r.get("state") == "FAIL"),
        "played": sum(1 for r in records if r.get("played") and not r.get("cached")),  # repeats played nothing
        "feasible": sum(1 for r in records if r.get("feasible") and not r.get("cached")),
        "cached": sum(1 for r in records if r.get("cached")),
    }


def _confirmed(run: Any) -> dict[str, Any] | None:
    found = run.confirmation()
    if found is None:
        return None
    attempts = [{"trial": a.trial, "summary": a.summary, "retention": a.retention, "episodes": len(a.reward.seeds),
                 "distinct_pairs": a.paired.get("distinct_pairs"), "exact": a.paired.get("exact")}
                for a in found.attempts]
    protocol = found.protocol or {}
    best = found.best
    if best is None:
        return {"confirmed": False, "attempts": attempts, "protocol": protocol.get("name"),
                "sticky_actions": protocol.get("sticky_actions"), "starts": protocol.get("starts")}
    c = best.confirm
    return {"confirmed": True, "trial": best.trial, "summary": best.summary,
            "latency_ratio": best.search.latency_ratio, "search_retention": best.search.retention,
            "retention": c.retention, "retention_low": _finite(c.retention_low),
            "retention_high": _finite(c.retention_high), "exact": c.exact, "episodes": c.episodes,
            "distinct_pairs": c.distinct_pairs, "distinct_games": c.distinct_games,
            "protocol": c.protocol.get("name"), "sticky_actions": c.sticky_actions, "starts": c.protocol.get("starts"),
            "reward": c.reward.mean, "fp32_reward": c.fp32_reward.mean,
            "random_reward": c.random_reward.mean, "attempts": attempts}


def _played(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Episodes and distinct pairs of games behind each played trial's retention (repeats
    played nothing and are left out)."""
    played = [r for r in records if r.get("played") and not r.get("cached")]
    return {"episodes": _spread([int(r["episodes"]) for r in played if r.get("episodes") is not None]),
            "distinct_pairs": _spread([int(r["distinct_pairs"]) for r in played
                                       if r.get("distinct_pairs") is not None]),
            "exact": sum(1 for r in played if r.get("exact"))}


def _agent_first(folder: Path, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The meta-RL agent's first proposal: how it was made (zero-shot from pretrained weights,
    or after training from scratch) and what its trial measured."""
    path = folder / "ddpg_surrogate.json"
    first = next((r for r in sorted(records, key=lambda r: r["number"]) if r.get("counted", True)), None)
    if not path.is_file() or first is None:
        return None
    info = json.loads(path.read_text())
    proposals = info.get("proposals") or []
    weights = info.get("pretrained") or {}
    return {"how": proposals[0] if proposals else "unknown", "trial": first["number"], "summary": first.get("summary"),
            "latency_ratio": first.get("latency_ratio"), "retention": first.get("retention"),
            "skip_reason": first.get("skip_reason"),
            "weights": (weights.get("sha256") or "")[:12] if weights.get("used") else None}


def run_network(network: Network, policies: Path, out: Path, budget: Budget, seed: int,
                argv: list[str], calls: int, code: Mapping[str, Any]) -> dict[str, Any]:
    """The six searches on one network, their combined comparison, and the headline."""
    from autoquant.evaluate import describe_episodes
    from autoquant.report import write_compare
    from autoquant.search import compare
    from autoquant.search import load_run
    from autoquant.search import SEARCH_SECONDS

    out.mkdir(parents=True, exist_ok=True)
    os.environ["AUTOQUANT_CACHE"] = str(out / "cache")  # latency models: this network's run only
    base = base_config(network, policies, budget, seed, argv)
    progress = Progress()
    t0 = time.perf_counter()
    setup_s = prepare(out, base, progress.log)
    combo_totals: dict[str, float | None] = {}
    combo_code: dict[str, Any] = {}
    for methods, agents in GROUPS:
        folders = {f"{m}/{a}": out / f"{m}-{a}" for m in methods for a in agents}
        done = {label: _finished(folder, budget.trials) for label, folder in folders.items()}
        if all(d is not None for d in done.values()):
            progress.log(f"{', '.join(folders)}: finished with {budget.trials} trials by an earlier invocation")
            combo_totals.update({label: d.get("total_s") for label, d in done.items() if d is not None})
            combo_code.update({label: d.get("code") for label, d in done.items() if d is not None})
            continue
        compare(out, base, methods=methods, agents=agents, log=progress.log, progress=progress.combo)
        totals = progress.totals(time.perf_counter())
        for label, folder in folders.items():
            combo_totals[label] = totals.get(label)
            combo_code[label] = code
            _write_finished(folder, budget.trials, totals.get(label), code)
    runs = {f"{m}/{a}": load_run(out / f"{m}-{a}") for m, a in COMBOS}
    results = {}
    for label, run in runs.items():
        records = run.report_records()
        times = [r["wall_s"] for r in records if r.get("wall_s") is not None]
        results[label] = {"records": records, "wall_s": max(times) if times else None}
    first = runs[f"{COMBOS[0][0]}/{COMBOS[0][1]}"]
    ref = first.info.references
    ort = ref.onnxruntime_int8 or {}
    protocol = first.info.protocol or ref.fp32.protocol.to_json()
    progress.log(f"episodes: fp32 {describe_episodes(ref.fp32)}")
    references: dict[str, Any] = {"fp32": {"latency_ratio": 1.0, "retention": 1.0, "size_ratio": 1.0}}
    if "latency_ratio" in ort:
        references["onnxruntime int8"] = {k: ort.get(k) for k in ("latency_ratio", "retention", "size_ratio")}
    rows = write_compare(out, results, floor=budget.min_retention, references=references)
    for row in rows:
        label = row["combo"]
        records = results[label]["records"]
        best = next((r for r in records if r["number"] == row["best_trial"]), None)
        row["best_plan"] = best["summary"] if best else None
        row["best_distinct_pairs"] = best.get("distinct_pairs") if best else None  # behind its retention
        row["best_exact"] = best.get("exact") if best else None
        row["played_trials"] = _played(records)
        row_protocol = runs[label].info.protocol or {}  # every episode of this search is played under it
        row["protocol"] = row_protocol.get("name")
        row["sticky_actions"] = row_protocol.get("sticky_actions")
        row["starts"] = row_protocol.get("starts")
        row["counts"] = _counts(records)
        row["confirm"] = _confirmed(runs[label])
        row["total_s"] = combo_totals.get(label)
        row["search_s"] = runs[label].study().user_attrs.get(SEARCH_SECONDS)
        row["code"] = combo_code.get(label)
    head = headline(rows, ort, budget.min_retention, starts=protocol.get("starts"))
    progress.log("timing fp32, onnxruntime int8 and the best plans in one window")
    t_window = time.perf_counter()
    window = window_check(runs, rows, head, calls=calls)
    head["one_window"] = window_headline(window)
    window_s = time.perf_counter() - t_window
    known = [v for v in (setup_s, window_s, *combo_totals.values()) if v is not None]
    return {
        "title": network.title,
        "policy": rel(policies / network.path),
        "env_id": first.problem.bundle.env_id,
        "settings": {**dataclasses.asdict(budget), "seed": seed, "fidelity_floor": base.settings.fidelity_floor,
                     "target": base.target},
        "reference": {
            "seeds": list(ref.seeds),
            "protocol": protocol.get("name"), "sticky_actions": protocol.get("sticky_actions"),
            "starts": protocol.get("starts"),
            "fp32_reward": ref.fp32.mean, "fp32_rewards": list(ref.fp32.rewards),
            "fp32_lengths": list(ref.fp32.lengths),
            "fp32_episodes": len(ref.fp32.seeds), "fp32_distinct_games": ref.fp32.distinct_games,
            "fp32_exact": ref.fp32.exact, "fp32_summary": describe_episodes(ref.fp32),
            "random_reward": ref.random.mean, "random_distinct_games": ref.random.distinct_games,
            "onnxruntime_int8": {k: v for k, v in ort.items() if k != "reward"}
            | ({"reward": ort["reward"]["mean"], "rewards": ort["reward"]["rewards"]} if "reward" in ort else {}),
        },
        "target_facts": first.info.target.facts,
        "rows": rows,
        "headline": head,
        "one_window": window,
        "setup_s": setup_s,
        "latency_model": json.loads((out / LATENCY_MODEL).read_text()) if (out / LATENCY_MODEL).is_file() else None,
        "agent_first": _agent_first(out / "joint-ddpg", results["joint/ddpg"]["records"]),
        "wall_s": sum(known),
        "wall_s_complete": len(known) == 2 + len(combo_totals),
        "this_invocation_s": time.perf_counter() - t0,
    }


def headline(rows: Sequence[Mapping[str, Any]], ort: Mapping[str, Any], floor: float, *,
             starts: int | None = None) -> dict[str, Any]:
    """The fastest plan at the floor (search-time and confirmed) against onnxruntime int8
    (``starts``: the protocol's number of starts where finite, for "exact over the N starts")."""
    out: dict[str, Any] = {"floor": floor, "starts": starts,
                           "onnxruntime_int8_latency_ratio": ort.get("latency_ratio"),
                           "onnxruntime_int8_retention": ort.get("retention"),
                           "onnxruntime_int8_retention_low": _finite(ort.get("retention_low")),
                           "onnxruntime_int8_retention_high": _finite(ort.get("retention_high")),
                           "onnxruntime_int8_exact": ort.get("exact"),
                           "onnxruntime_int8_distinct_pairs": ort.get("distinct_pairs"),
                           "onnxruntime_int8_meets_floor": (ort["retention"] >= floor
                                                            if ort.get("retention") is not None else None)}
    searched = [r for r in rows if r.get("best_latency_ratio") is not None]
    if searched:
        best = min(searched, key=lambda r: r["best_latency_ratio"])
        out["search_best"] = {"combo": best["combo"], "trial": best["best_trial"], "plan": best["best_plan"],
                              "latency_ratio": best["best_latency_ratio"], "retention": best["best_retention"],
                              "distinct_pairs": best.get("best_distinct_pairs"), "exact": best.get("best_exact"),
                              "protocol": best.get("protocol"), "sticky_actions": best.get("sticky_actions"),
                              "starts": best.get("starts")}
    confirmed = [r for r in rows if (r.get("confirm") or {}).get("confirmed")]
    if confirmed:
        best = min(confirmed, key=lambda r: r["confirm"]["latency_ratio"])
        c = best["confirm"]
        out["confirmed_best"] = {"combo": best["combo"], "trial": c["trial"], "plan": c["summary"],
                                 "latency_ratio": c["latency_ratio"], "retention": c["retention"],
                                 "retention_low": c["retention_low"], "retention_high": c["retention_high"],
                                 "exact": c["exact"], "episodes": c["episodes"], "distinct_pairs": c["distinct_pairs"],
                                 "protocol": c["protocol"], "sticky_actions": c["sticky_actions"],
                                 "starts": c["starts"]}
    ratio = ort.get("latency_ratio")
    for key in ("search_best", "confirmed_best"):
        if key in out and ratio:
            out[key]["speedup_vs_onnxruntime_int8"] = ratio / out[key]["latency_ratio"]
    return out


def window_check(runs: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], head: Mapping[str, Any], *,
                 calls: int) -> list[dict[str, Any]]:
    """fp32, onnxruntime's uniform int8 and every search's best plan (confirmed one, else the
    search-time best) timed interleaved in ONE window on the target's thread count: the only
    latency ratios here that were all measured at the same time."""
    from autoquant.compress import CompressionPlan
    from autoquant.runtimes import onnxruntime_uniform_int8

    first = next(iter(runs.values()))
    threads = int(first.info.target.facts.get("threads") or 1)
    models: list[tuple[str, str, bytes]] = [("fp32", "fp32 ONNX export", first.problem.reference_onnx)]
    try:
        models.append(("onnxruntime int8", "quantize_static QDQ, per-channel int8",
                       onnxruntime_uniform_int8(first.problem.reference_onnx, first.states.states)))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        print(f"  onnxruntime int8 could not be built: {type(exc).__name__}: {exc}", flush=True)
    seen: set[str] = set()
    for row in rows:
        run, confirm = runs[row["combo"]], row.get("confirm") or {}
        if confirm.get("confirmed"):
            summary, onnx = confirm["summary"], (run.folder / "best" / "policy.onnx").read_bytes()
            label = f"{row['combo']} #{confirm['trial']} (confirmed)"
        elif row.get("best_plan") is not None and (head.get("search_best") or {}).get("combo") == row["combo"]:
            _, plan = run.plan_of(row["best_trial"])
            summary, onnx = row["best_plan"], run.compress(plan).onnx
            label = f"{row['combo']} #{row['best_trial']} (search-time best, not confirmed)"
        else:
            continue
        if summary not in seen:
            seen.add(summary)
            models.append((label, summary or CompressionPlan().describe(), onnx))
    timed = time_window([(label, onnx) for label, _, onnx in models], first.held_out[:1], calls=calls,
                        threads=threads)
    return [{**row, "plan": summary} for row, (_, summary, _) in zip(timed, models)]


def window_headline(window: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The fastest plan of the window against onnxruntime int8 in the same window."""
    ort = next((w for w in window if w["label"] == "onnxruntime int8"), None)
    plans = [w for w in window if w["label"] not in ("fp32", "onnxruntime int8")]
    if ort is None or not plans:
        return None
    best = min(plans, key=lambda w: w["ratio_p10"])
    return {"plan": best["label"], "summary": best["plan"], "latency_ratio": best["ratio_p10"],
            "onnxruntime_int8_latency_ratio": ort["ratio_p10"],
            "speedup_vs_onnxruntime_int8": ort["ratio_p10"] / best["ratio_p10"]}


# --- writing ---------------------------------------------------------------------------------------
# Results measured before the protocol and distinct games were recorded lack their keys: "n/a".


def _confirm_text(c: Mapping[str, Any]) -> str:
    """The confirmed retention: interval or exact, then its episodes and distinct pairs of games."""
    return (retention_words(c.get("retention"), c.get("retention_low"), c.get("retention_high"), c.get("exact"),
                            c.get("starts"), recorded="retention_low" in c, missing="-")
            + f" ({c.get('episodes')} episodes, {_pairs(c.get('distinct_pairs'))})")


def _attempt_text(a: Mapping[str, Any], starts: Any) -> str:
    return (f"#{a['trial']} {a['retention']:.2f}, "
            + (_starts(starts) if a.get("exact") else _pairs(a.get("distinct_pairs"))))


def _best_retention(row: Mapping[str, Any]) -> str:
    """The best played trial's retention (search seeds) with the distinct pairs of games behind it."""
    if row.get("best_retention") is None:
        return "-"
    if row.get("best_exact"):
        return f"{row['best_retention']:.3f} {_starts(row.get('starts'))}"
    return f"{row['best_retention']:.3f} ({_pairs(row.get('best_distinct_pairs'))})"


def _played_text(row: Mapping[str, Any]) -> str:
    """Episodes / distinct pairs of games per played trial, median (range)."""
    played = row.get("played_trials")
    if played is None:
        return "n/a"
    return f"{_spread_text(played.get('episodes'))} / {_spread_text(played.get('distinct_pairs'))}"


def _reference_episodes(ref: Mapping[str, Any]) -> str:
    """fp32's reference episodes: how many, the distinct games behind them, exact where so."""
    games = ref.get("fp32_distinct_games")
    text = (f"{ref.get('fp32_episodes', len(ref['fp32_rewards']))} episodes, "
            f"{games if games is not None else 'n/a'} distinct games")
    return text + (f", {_starts(ref.get('starts'))}" if ref.get("fp32_exact") else "")


def _protocols_line(data: Mapping[str, Any]) -> str:
    """The episode protocol of each search (one sentence when they all share one)."""
    texts = {row["combo"]: _protocol_text(row) for row in data["rows"]}
    if len(set(texts.values())) == 1:
        return f"Episode protocol of every search: {next(iter(texts.values()))}."
    return "Episode protocol of each search: " + "; ".join(f"{k}: {v}" for k, v in texts.items()) + "."


def network_markdown(key: str, data: Mapping[str, Any], png: str | None) -> str:
    s, ref, head = data["settings"], data["reference"], data["headline"]
    ort = ref["onnxruntime_int8"]
    budget = (f"{s['seconds']:.0f} s of wall-clock per search (at most {s['trials']} trials)" if s.get("seconds")
              else f"{s['trials']} trials per search")
    settings = (f"`{data['policy']}` on {data['env_id']}; {budget}, at most {s['episodes']} "
                f"episodes per played trial ({s['envs']} envs in lockstep; the sequential test stops sooner), "
                f"{s['confirm_episodes']} fresh episodes to confirm, {s['states']} recorded states, retention floor "
                f"{s['min_retention']}, initial proxy screen {s['fidelity_floor']}, seed {s['seed']}, target "
                f"{s['target']}.")
    rewards = ", ".join(_fmt(float(x), 1) for x in ref["fp32_rewards"])
    episodes = (f"Reference episodes (seeds {ref['seeds'][0]}..{ref['seeds'][-1]}; episode protocol: "
                f"{_protocol_text(ref)}): fp32 "
                f"reward {ref['fp32_reward']:.2f} ({rewards}) over {_reference_episodes(ref)}; acting at random "
                f"{ref['random_reward']:.2f}.")
    lines = [f"### {data['title']}", "", settings, "", episodes, ""]
    if "latency_ratio" in ort:
        agreement = (ort.get("fidelity") or {}).get("action_agreement")
        retention = retention_words(ort["retention"], ort.get("retention_low"), ort.get("retention_high"),
                                    ort.get("exact"), ref.get("starts"), recorded="retention_low" in ort, missing="-")
        point = (f"onnxruntime uniform static int8 (reference point, measured at set-up on the reference seeds): "
                 f"latency ratio {ort['latency_ratio']:.3f}, retention {retention} "
                 f"({_pairs(ort.get('distinct_pairs'))}; reward {_fmt(ort.get('reward'), 2)}), size ratio "
                 f"{ort['size_ratio']:.3f}, action agreement {_fmt(agreement)}.")
        lines += [point, ""]
    else:
        lines += [f"onnxruntime uniform int8 could not be built: {ort.get('error')}", ""]
    headers = ["combo", "best latency ratio", "its retention", "hypervolume", "trials to 95 %", "best at 10",
               "trials", "search s", "total s", "speed-up vs ort int8", "played / feasible / failed",
               "per played trial: episodes / distinct pairs (median, range)", "confirmed (fresh seeds)"]
    lines += ["| " + " | ".join(headers) + " |", "|:---|" + "---:|" * 11 + ":---|"]
    for row in data["rows"]:
        c = row.get("confirm")
        if c is None:
            confirm = "none faster than fp32 kept the floor"
        elif c["confirmed"]:
            confirm = f"#{c['trial']} ratio {c['latency_ratio']:.3f}, retention {_confirm_text(c)}"
        else:
            confirm = "none kept the floor (" + "; ".join(_attempt_text(a, c.get("starts"))
                                                          for a in c["attempts"]) + ")"
        counts = row["counts"]
        speedup = (row.get("speedup_vs") or {}).get("onnxruntime int8")
        lines.append("| " + " | ".join([
            row["combo"], _fmt(row["best_latency_ratio"]), _best_retention(row),
            _fmt(row["hypervolume"], 4), _fmt(row["trials_to_95"]), _fmt(row.get("best_at_10")),
            str(counts["complete"] - counts["cached"] + counts["failed"]), _fmt(row.get("search_s", row["wall_s"]), 0),
            _fmt(row.get("total_s"), 0), _fmt(speedup, 2) + ("x" if speedup is not None else ""),
            f"{counts['played']} / {counts['feasible']} / {counts['failed']}", _played_text(row), confirm]) + " |")
    lines += ["", _protocols_line(data), ""]
    setup = f"{data['setup_s']:.0f} s" if data.get("setup_s") is not None else "not recorded"
    model = data.get("latency_model")
    if model:
        setup += f", of which the target's latency model {model['seconds']:.0f} s ({model['probes']} probes)"
    lines += [f"Wall time: {data['wall_s'] / 60:.1f} min (set-up {setup}, then the searches with their "
              "confirmations, then the one-window timing)"
              + ("" if data.get("wall_s_complete") else "; some parts were run before this script kept time")
              + ".", ""]
    first = data.get("agent_first")
    if first:
        lines += [f"joint/ddpg's first proposal ({first['how']}"
                  + (f", pretrained weights {first['weights']}" if first.get("weights") else "")
                  + f"): trial {first['trial']}, `{first['summary']}`, latency ratio {_fmt(first['latency_ratio'])}, "
                  + (f"retention {_fmt(first['retention'])}" if first.get("retention") is not None
                     else f"not played ({first.get('skip_reason')})") + ".", ""]
    lines += ["Best plan of each search:", ""]
    lines += [f"- {row['combo']}: " + (f"trial {row['best_trial']}: {row['best_plan']}" if row["best_plan"]
                                        else "no plan both met the floor and ran faster than fp32")
              for row in data["rows"]]
    lines.append("")
    window = data.get("one_window") or []
    if window:
        protocol = window[0]["protocol"]
        intro = (f"One window: fp32, onnxruntime int8 and the best plans timed interleaved ({protocol['calls']} "
                 f"calls each, blocks of {protocol['block']}, {protocol['threads']} thread, batch 1) after the "
                 "searches; ratios to fp32 of this window:")
        lines += [intro, "",
                  "| model | plan | p10 ms | median ms | ratio (p10) | ratio (median) |",
                  "|:---|:---|---:|---:|---:|---:|"]
        lines += [f"| {w['label']} | {w['plan']} | {w['p10_ms']:.4f} | {w['median_ms']:.4f} | "
                  f"{w['ratio_p10']:.3f} | {w['ratio_median']:.3f} |" for w in window]
        lines.append("")
    lines.append("**Headline:** " + headline_text(head))
    lines.append("")
    if png:
        lines += [f"![{key} compare]({png})", ""]
    return "\n".join(lines)


def headline_text(head: Mapping[str, Any]) -> str:
    ort_ratio, ort_ret = head.get("onnxruntime_int8_latency_ratio"), head.get("onnxruntime_int8_retention")
    ort_games = (_starts(head.get("starts")) if head.get("onnxruntime_int8_exact")
                 else _pairs(head.get("onnxruntime_int8_distinct_pairs")))
    ort_text = (f"onnxruntime uniform int8 {ort_ratio:.3f} (retention {ort_ret:.3f}, {ort_games}, "
                + ("meets" if head.get("onnxruntime_int8_meets_floor") else "misses") + f" the floor {head['floor']})"
                if ort_ratio is not None else "onnxruntime uniform int8 unavailable")
    parts = []
    for key, what in (("confirmed_best", "confirmed on fresh seeds"), ("search_best", "at search time")):
        best = head.get(key)
        if not best:
            continue
        factor = best.get("speedup_vs_onnxruntime_int8")
        if key == "confirmed_best":
            retention = _confirm_text(best)
        else:
            retention = (f"{best['retention']:.3f} {_starts(best.get('starts'))}" if best.get("exact")
                         else f"{best['retention']:.3f} ({_pairs(best.get('distinct_pairs'))})")
        parts.append(f"fastest plan {what}: {best['combo']} trial {best['trial']} ({best['plan']}), latency "
                     f"ratio {best['latency_ratio']:.3f} at retention {retention}"
                     + (f" = {factor:.2f}x the speed of onnxruntime int8" if factor else ""))
    if not parts:
        return f"no autoquant plan met the floor {head['floor']}; {ort_text}."
    text = "; ".join(parts) + f"; vs {ort_text}."
    window = head.get("one_window")
    if window:
        text += (f" In one window: {window['plan']} {window['latency_ratio']:.3f} vs onnxruntime int8 "
                 f"{window['onnxruntime_int8_latency_ratio']:.3f}, "
                 f"{window['speedup_vs_onnxruntime_int8']:.2f}x its speed.")
    return text


def _noise_note(results: Mapping[str, Any]) -> str:
    """How far one played trial's retention can move by seed alone, per network, from the
    fp32 episodes this run measured: the spread of fp32's own rewards against its gap to random."""
    parts = []
    for key, data in results["networks"].items():
        ref, settings = data.get("reference") or {}, data.get("settings") or {}
        rewards = ref.get("fp32_rewards") or []
        if len(rewards) < 2 or ref.get("random_reward") is None:
            continue
        gap = float(ref["fp32_reward"]) - float(ref["random_reward"])
        spread = float(max(rewards) - min(rewards))
        parts.append(f"{key}: floor {settings.get('min_retention')}, at most {settings.get('episodes')} episodes a "
                     f"trial (episode protocol: {_protocol_text(ref)}); "
                     f"fp32's rewards spread over {spread:.1f} between seeds ({_reference_episodes(ref)}) against an "
                     "fp32-minus-random gap of "
                     f"{gap:.1f}" + (f", so one episode can move retention by up to {spread / gap:.2f}"
                                     if gap > 0 else ""))
    return ("Measured noise: " + "; ".join(parts) + ".") if parts else ""


def document(results: Mapping[str, Any], sections: Sequence[str], facts_md: str) -> str:
    combos = ", ".join(f"{m}/{a}" for m, a in COMBOS)
    return (
        "# Search: meta-RL agent vs ILP vs TPE vs random, joint vs prune-only vs quant-only\n\n"
        f"autoquant {results['autoquant_version']}. Reproduce from the repository root "
        f"({results['total_wall_s'] / 60:.1f} min here for everything below):\n\n"
        f"    {results['command']}\n\n"
        f"{code_text(results)}\n\n"
        f"Six searches per network ({combos}) with the same wall-clock budget, seed, recorded states, "
        "reference episodes and retention floor, run by `autoquant.search._compare.compare`. "
        "Latency ratio = p10 latency of the compressed ONNX model / the fp32 ONNX export, timed "
        "interleaved in one window on the target (batch 1, 1 thread); retention = (R_plan - R_random) / "
        "(R_fp32 - R_random) on the same seeds. A trial plays episodes only when it could beat the best "
        "feasible plan so far and passes the proxy screen (agreement with fp32 on states the plan visits "
        "itself; learnt from the run's played trials once there are five), and stops playing when the "
        "sequential test (95 %) puts its retention clearly above or below the floor. Feasible: its interval "
        "lies above the floor, or it stayed undecided with its mean at or above it.\n\n"
        "Every reward and retention names the episode protocol it was played under and the distinct games "
        "behind it (README, \"Episodes, protocols and distinct games\"): copies of one game count once, so on a "
        "deterministic game the episodes can be fewer distinct games, and a retention is paired over distinct "
        "pairs of games (fp32's game, the plan's game on the same seed). Where every start of a deterministic "
        "game was played a retention is exact for the protocol and has no interval; elsewhere intervals are 95 %. "
        "\"n/a\": not recorded by the run that wrote these results.\n\n"
        "Columns: **best latency ratio** / **its retention**: the fastest played trial at or above the "
        "floor (search seeds), with the distinct pairs of games behind its retention; **hypervolume**: area "
        "dominated in (latency ratio, retention) from (1.5, floor - 0.1); **trials to 95 %**: trials until a "
        "search is within 95 % of the best speed-up "
        "any search on the network found; **best at 10**: the best feasible latency ratio after the first 10 trials; "
        "**trials**: trials measured (repeats of a measured plan not "
        "counted); **search s**: what the wall-clock budget counts, the agent's set-up (sensitivities) and "
        "every trial; "
        "**total s**: the search plus its confirmation and report, timed by the invocation that ran it; **speed-up vs ort int8**: "
        "onnxruntime int8's latency ratio / the best latency ratio; **per played trial**: the episodes each "
        "played trial played and the distinct pairs of games behind its retention, median (range); "
        "**confirmed**: the best feasible plans replayed on fresh seeds, the first that keeps the floor, with "
        "its retention's 95 % interval (or exact over the starts), its episodes and distinct pairs of games.\n\n"
        "Notes: the target's latency model is measured once per network at set-up (reported with it) and "
        "read by joint/ddpg and joint/ilp, as a user's later searches on the same target read it. "
        + _noise_note(results) +
        " The confirmation on fresh seeds guards against plans that passed by luck; retentions above 1 are "
        "that noise too. Searches with the same seed share their first trials when their samplers "
        "start alike (TPE's start-up trials are random search's first trials).\n\n"
        f"## Device\n\n{facts_md}\n\n## Results\n\n" + "\n".join(sections)
    )


def code_text(results: Mapping[str, Any]) -> str:
    code = results.get("code") or {}
    text = f"Library code: git commit {code.get('commit') or 'unknown'}"
    if code.get("uncommitted"):
        text += f" with uncommitted changes in {', '.join(code['uncommitted'])}"
    others = sorted({(row.get("code") or {}).get("commit") or "unknown"
                     for data in results["networks"].values() for row in data["rows"]} - {code.get("commit")})
    if others:
        text += f"; some searches were run by an earlier invocation at commit {', '.join(others)}"
    return text + "."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=Path, default=None,
                        help="directory holding the policies (default: ../shared/policies from the repo root)")
    parser.add_argument("--networks", nargs="+", choices=[n.key for n in NETWORKS],
                        default=[n.key for n in NETWORKS], help="which networks to search")
    parser.add_argument("--out", type=Path, default=None,
                        help="work folder for the run folders (default benchmarks/scratch/search, git ignored; "
                             "with --quick a temporary folder). Resumable: the same command continues")
    parser.add_argument("--results", type=Path, default=None,
                        help="where search.json, search.md and search/<network>/compare.png go (default "
                             "benchmarks/results; with --quick: --out if given, else nothing is written)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the chosen networks' run folders under --out first")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny budgets")
    parser.add_argument("--render", action="store_true",
                        help="only write search.md again from the measured search.json in --results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per model in the final one-window check (default 1000; --quick 200)")
    for network in NETWORKS:
        for name in SETTINGS:
            default = getattr(network.full, name)
            flag = f"--{network.key}-{name.replace('_', '-')}"
            parser.add_argument(flag, type=type(default), default=None, dest=f"{network.key}_{name}",
                                help=f"{network.key}: {name.replace('_', ' ')} (default {default}; "
                                     f"--quick {getattr(network.quick, name)})")
    args = parser.parse_args(argv)
    if args.calls is None:
        args.calls = 200 if args.quick else 1000
    if args.calls < 1:
        parser.error("--calls must be positive")
    args.budgets = {}
    for network in NETWORKS:
        budget = network.quick if args.quick else network.full
        changes = {name: getattr(args, f"{network.key}_{name}") for name in SETTINGS
                   if getattr(args, f"{network.key}_{name}") is not None}
        budget = dataclasses.replace(budget, **changes)
        if min(budget.trials, budget.seconds, budget.episodes, budget.confirm_episodes, budget.envs,
               budget.states) <= 0:
            parser.error(f"{network.key}: budgets must be positive")
        if not 0.0 < budget.min_retention <= 1.5:
            parser.error(f"{network.key}: the retention floor must be in (0, 1.5]")
        args.budgets[network.key] = budget
    return args


def _command_args(argv: list[str]) -> list[str]:
    """The arguments with any path written relative to the repo root."""
    paths = ("--policies", "--out", "--results")
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in paths:
            out.extend([arg, rel(Path(next(it, ".")))])
        elif arg.startswith(tuple(p + "=" for p in paths)):
            key, value = arg.split("=", 1)
            out.append(f"{key}={rel(Path(value))}")
        else:
            out.append(arg)
    return out


def render(results_dir: Path) -> int:
    """search.md from search.json: the prose again, nothing measured again."""
    results = json.loads((results_dir / "search.json").read_text())
    sections = [network_markdown(key, data, data.get("compare_png")) for key, data in results["networks"].items()]
    facts_md = "\n".join(f"- {k}: {v}" for k, v in results["facts"].items())
    (results_dir / "search.md").write_text(document(results, sections, facts_md))
    print(f"wrote {rel(results_dir / 'search.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.results if args.results is not None else DEFAULT_RESULTS)
    # measure this checkout's library, not whatever an editable install elsewhere points to
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    quiet()
    import torch

    import autoquant
    from autoquant.errors import AutoquantError

    policies = (args.policies if args.policies is not None else DEFAULT_POLICIES).resolve()
    networks = [n for n in NETWORKS if n.key in args.networks]
    missing = [n.path for n in networks if not (policies / n.path).is_file()]
    if missing:
        print(f"error: policy files not found under {rel(policies)}: {', '.join(missing)} "
              "(pass --policies DIR)", file=sys.stderr)
        return 2
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/search.py", *_command_args(raw_argv)])
    if args.results is not None:
        results_dir: Path | None = args.results
    elif args.quick:
        results_dir = args.out
    else:
        results_dir = DEFAULT_RESULTS

    tmp = tempfile.TemporaryDirectory(prefix="autoquant-search-") if args.quick and args.out is None else None
    work = Path(tmp.name) if tmp is not None else (args.out if args.out is not None else DEFAULT_WORK)
    code = code_state()
    if Path(autoquant.__file__).resolve().parents[1] != REPO:
        print(f"error: autoquant was imported from {Path(autoquant.__file__).parent}, not from this checkout",
              file=sys.stderr)
        return 2
    results: dict[str, Any] = {"autoquant_version": autoquant.__version__, "code": code, "command": command,
                               "combos": [f"{m}/{a}" for m, a in COMBOS], "networks": {}}
    sections: list[str] = []
    facts: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        for network in networks:
            budget = args.budgets[network.key]
            out = work / network.key
            if args.fresh and out.exists():
                shutil.rmtree(out)
            print(f"\n{network.title}: {network.path} ({budget}); run folders in {rel(out)}", flush=True)
            try:
                data = run_network(network, policies, out, budget, args.seed, ["benchmarks/search.py", *raw_argv],
                                   args.calls, code)
            except AutoquantError as exc:
                print(f"error: {network.key}: {exc}", file=sys.stderr)
                return 2
            facts = facts or {**data["target_facts"], "isa": _isa_flags(), "torch": torch.__version__}
            png = None
            if results_dir is not None:
                target = results_dir / "search" / network.key / "compare.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "compare.png", target)
                png = os.path.relpath(target, results_dir)
            data["compare_png"] = png
            results["networks"][network.key] = data
            section = network_markdown(network.key, data, png)
            sections.append(section)
            print("\n" + section, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    results["this_invocation_s"] = time.perf_counter() - t0
    results["total_wall_s"] = sum(d["wall_s"] for d in results["networks"].values())
    results["facts"] = facts
    facts_md = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    print("Device facts:\n" + facts_md)
    print(f"total {results['total_wall_s'] / 60:.1f} min of set-up, searches, confirmations and timing "
          f"({results['this_invocation_s'] / 60:.1f} min this invocation)")
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "search.json").write_text(json.dumps(_clean(results), indent=2) + "\n")
        (results_dir / "search.md").write_text(document(results, sections, facts_md))
        print(f"\nwrote {rel(results_dir / 'search.json')} and {rel(results_dir / 'search.md')}")
    return 0


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
