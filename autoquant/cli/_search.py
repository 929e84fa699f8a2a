"""Search commands: ``search`` and ``export``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from autoquant._io import check_output_folder
from autoquant._limits import (
    MAX_ENVS,
    MAX_EPISODES,
    MAX_FINETUNE_EPOCHS,
    MAX_FINETUNE_ROUNDS,
    MAX_SEED,
    MAX_STATES,
    MAX_TRIALS,
)
from autoquant.cli import Command
from autoquant.cli._options import (
    add_policy_arguments,
    add_protocol_argument,
    add_target_arguments,
    integer,
    names,
    seconds,
)
from autoquant.errors import DeviceUnreachable, UsageError

__all__ = ["CompareCommand", "ExportCommand", "SearchCommand"]


class _Progress:
    """trials, best so far, elapsed and ETA on stderr."""

    def __init__(self, total: int, initial: int, quiet: bool, desc: str = "search") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="trial", file=sys.stderr, disable=quiet,
                        dynamic_ncols=True, desc=desc)

    def __call__(self, outcome: Any, runner: Any) -> None:
        best = runner.best_latency
        self.bar.set_postfix_str(f"best latency ratio {best:.3f}" if best is not None else "no feasible plan yet")
        if not outcome.cached:  # a repeat of a measured plan costs no budget
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summary_json(run: Any, confirmed: Any, wall_s: float) -> dict[str, Any]:
    """What ``search --json`` prints: the run, its trial counts, and the confirmed plan
    (``confirmed``: the ``ConfirmedPlan`` that ``Run.confirm`` returned, or None)."""
    records = run.records()
    fp32 = run.problem.fp32_episodes
    ort = run.info.references.onnxruntime_int8
    out: dict[str, Any] = {
        "run": str(run.folder), "agent": run.config.agent, "method": run.config.method,
        "target": run.config.target,
        "trials": sum(1 for r in records if r.state in ("COMPLETE", "FAIL") and not r.repeat),
        "complete": sum(1 for r in records if r.state == "COMPLETE" and not r.repeat),
        "failed": sum(1 for r in records if r.state == "FAIL"),
        "repeats": sum(1 for r in records if r.repeat),  # plans proposed again: recorded, not counted
        "wall_s": round(wall_s, 1), "best": None,
        "protocol": run.protocol.to_json(), "sticky_actions": run.protocol.sticky_actions,
        "fp32_episodes": {"episodes": len(fp32.seeds), "distinct_games": fp32.distinct_games,
                          "mean": fp32.mean, "exact": fp32.exact},
        "reference": {"onnxruntime_int8": ort} if ort is not None else {},
        "confirmation": None,
    }
    found = run.confirmation()
    if found is not None:
        out["confirmation"] = {"passed": confirmed is not None,
                               "attempts": [{"trial": a.trial, "summary": a.summary, "retention": a.retention,
                                             "passed": a.passed} for a in found.attempts]}
    if confirmed is not None:
        record = next((r for r in records if r.number == confirmed.trial), None)
        search, confirm = confirmed.search, confirmed.confirm
        out["best"] = {
            "trial": confirmed.trial, "plan": confirmed.plan.to_json(), "summary": confirmed.summary,
            "latency_ratio": search.latency_ratio, "retention": confirm.retention,
            "search_retention": search.retention, "size_ratio": search.size_ratio,
            "retention_low": confirm.retention_low, "retention_high": confirm.retention_high,
            "exact": confirm.exact, "distinct_pairs": confirm.distinct_pairs, "distinct_games": confirm.distinct_games,
            "confirm_episodes": confirm.episodes, "size_bytes": confirmed.size_bytes, "reward": confirm.reward.mean,
            "fp32_reward": confirm.fp32_reward.mean,
            "latency": record.result.latency if record is not None and record.result is not None else None,
        }
    return out


def _measured(latency: dict[str, Any] | None) -> str:
    """" (p10 0.0712 ms vs 0.3604 ms)", in the target's statistic and unit (instructions on
    an emulated target); "" when the latency or its reference is unknown."""
    if not latency or not latency.get("reference"):
        return ""
    stat, unit = latency.get("statistic", "p10"), latency.get("unit", "ms")
    if unit == "ms":
        return f" ({stat} {latency['candidate'][stat]:.4f} ms vs {latency['reference'][stat]:.4f} ms)"
    return f" ({latency['candidate'][stat]:,.0f} vs {latency['reference'][stat]:,.0f} {unit})"


def _add_run_arguments(parser: argparse.ArgumentParser, *, policy_required: bool) -> None:
    """Options shared by search and compare: the policy, target, budget and scoring. argparse
    converts them (capping the numbers that size work, as --help says); the RunConfig they
    make checks their values (see ``_config``)."""
    add_policy_arguments(parser, required=policy_required)
    add_target_arguments(parser)
    parser.add_argument("--trials", type=integer(1, MAX_TRIALS), default=None,  # None: 200, or a resumed run's own
                        help=f"trial budget (default 200, at most {MAX_TRIALS:,}; a resumed run keeps its own unless "
                             "given)")
    parser.add_argument("--time-budget", type=seconds, default=None, metavar="SECONDS",
                        help="wall-clock budget of the search, the agent's set-up included (its latency model and "
                             "sensitivities); it ends at whichever of --trials and this comes first, never mid-trial "
                             "(default: none)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--min-retention", type=float, default=0.98,
                       help="reward retention floor vs fp32 on the same seeds (default 0.98)")
    group.add_argument("--pareto", action="store_true", help="search a Pareto front (latency, reward, size)")
    parser.add_argument("--episodes", type=integer(1, MAX_EPISODES), default=10,
                        help="most episodes a played trial may take; a sequential test stops sooner once retention "
                             "is clearly above or below the floor, counting each distinct game once (default 10, "
                             f"at most {MAX_EPISODES:,}; at most 30 on a deterministic Atari game: one per no-op "
                             "start)")
    add_protocol_argument(parser)
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence of that test's decisions, in [0.5, 1) (default 0.95)")
    parser.add_argument("--confirm-episodes", type=integer(1, MAX_EPISODES), default=20,
                        help=f"episodes on fresh seeds that confirm the best plan (default 20, at most "
                             f"{MAX_EPISODES:,}; a deterministic "
                             "Atari game is confirmed on all its 30 no-op starts instead)")
    parser.add_argument("--fidelity-floor", type=float, default=0.5,
                        help="the proxy (action agreement with fp32 on states the plan visits itself) below which a "
                             "trial is not played, until the run has played enough trials to fit retention on the "
                             "proxy and screen by that fit (default 0.5)")
    parser.add_argument("--proxy-states", type=integer(1, MAX_STATES), default=None,
                        help="states the proxy's rollouts of each plan record (default 128 for images, 512 else; "
                             f"at most {MAX_STATES:,})")
    parser.add_argument("--finetune", type=integer(0, MAX_FINETUNE_EPOCHS), default=0, metavar="EPOCHS",
                        help="fine-tune plans whose held-out fidelity is below --finetune-below before they are "
                             "judged, when their latency could still beat the best: EPOCHS of distillation from fp32, "
                             "then DAgger rounds on states the plan visits itself (default 0: off; 10 is about 30 s a "
                             f"plan on the Pong CNN; at most {MAX_FINETUNE_EPOCHS:,}); fine-tuning stops at the "
                             "best epoch so far when --time-budget is spent")
    parser.add_argument("--finetune-rounds", type=integer(0, MAX_FINETUNE_ROUNDS), default=2,
                        help=f"DAgger rounds after the first distillation (default 2, at most {MAX_FINETUNE_ROUNDS})")
    parser.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                        help="empirical bias correction of plans rounded to nearest: each quantized layer's bias "
                             "absorbs the mean output shift its rounded weights cause on the recorded states "
                             "(default on; fine-tuned and GPTQ plans keep their own)")
    parser.add_argument("--settle", action=argparse.BooleanOptionalAction, default=True,
                        help="under a protocol with finitely many starts (deterministic Atari: 30 no-op starts), a "
                             "plan the sequential test leaves undecided at or above the floor plays every start, so "
                             "that the exact retention decides whether it is feasible, as confirmation will "
                             "(default on)")
    parser.add_argument("--finetune-below", type=float, default=0.98,
                        help="held-out fidelity score (action agreement, or 1 - action error) below which a plan is "
                             "fine-tuned, in [0, 1] (default 0.98)")
    parser.add_argument("--states", type=integer(1, MAX_STATES), default=1024,
                        help=f"recorded states (default 1024, at most {MAX_STATES:,})")
    parser.add_argument("--envs", type=integer(1, MAX_ENVS), default=8,
                        help=f"environments stepped in lockstep (default 8, at most {MAX_ENVS})")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help=f"seed of states, episodes and agents (default 0, at most {MAX_SEED:,})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace, *, method: str, agent: str) -> Any:
    """The options as a RunConfig, passed through: the config checks them (argparse only
    converted them), and an option left out keeps the config's default."""
    from autoquant.search import ProblemSettings, RunConfig

    settings = ProblemSettings(
        mode="pareto" if args.pareto else "single", min_retention=args.min_retention, episodes=args.episodes,
        fidelity_floor=args.fidelity_floor, n_envs=args.envs, seed=args.seed, confidence=args.confidence,
        proxy_states=args.proxy_states, finetune_epochs=args.finetune, finetune_rounds=args.finetune_rounds,
        finetune_below=args.finetune_below, bias_correction=args.bias_correction,
        settle=args.settle)
    given = {"target": args.target, "storage": getattr(args, "storage", None), "n_trials": args.trials}
    return RunConfig(
        policy=args.policy, env_id=args.env, activation=args.activation, conv_strides=args.conv_strides,
        device=args.device, secret_file=args.secret_file, method=method, agent=agent,
        time_budget_s=args.time_budget, confirm_episodes=args.confirm_episodes, n_states=args.states,
        sticky_actions=args.sticky_actions, study_name=getattr(args, "study", None), argv=args.argv,
        settings=settings, **{k: v for k, v in given.items() if v is not None})  # left out: the config's default


def _disk_full(exc: Exception, run: Any) -> None:
    """A full disk during a search, said in one line with the command that resumes it."""
    from autoquant.search import disk_full

    if disk_full(exc):
        raise UsageError(f"no space left on the device of {run.folder}: the trials so far are in the study; free "
                         f"some space, then resume with: {run.resume_command()}") from None


class SearchCommand(Command):
    name = "search"
    help = "search per-layer bit widths and pruning ratios, measured on the target and played"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _add_run_arguments(parser, policy_required=False)  # not with --resume
        parser.add_argument("--method", default="joint",
                            help="search space: joint, prune, quant, or a .toml path (default joint)")
        from autoquant.search import agent_help, agent_names

        parser.add_argument("--agent", default="ilp", choices=agent_names(),
                            help=f"{agent_help()} (the default, ilp, finds the fastest plans at the floor in "
                                 "benchmarks/results/search.md)")
        parser.add_argument("--out", type=Path, help="run folder (default runs/<policy name>)")
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
        parser.add_argument("--fleet-proposals", choices=("turns", "each"), default="turns",
                            help="several targets (--target a,b,...): 'turns' spends --trials plans in all, each "
                                 "target's agent proposing in its turn, every plan measured on every target; 'each' "
                                 "lets every target's agent propose --trials plans of its own, also measured on the "
                                 "others (default turns; benchmarks/results/fleet.md measures both)")
        parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: SQLite in --out)")
        parser.add_argument("--study", help="study name in --storage, the same for every worker of one search "
                            "(default: the run folder's name)")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.search import is_fleet, load_run, start_run

        log = (lambda s: None) if args.quiet else (lambda s: print(f"autoquant: {s}", file=sys.stderr))
        if (args.resume and args.out is not None and is_fleet(args.out)) or (
                not args.resume and args.target is not None and "," in args.target):
            return self._fleet(args, log)
        if args.resume:
            if args.out is None:
                raise UsageError("--resume needs --out, the run folder to continue")
            run = load_run(args.out, trust_pickle=args.trust_pickle,
                           n_trials=args.trials,
                           time_budget_s=args.time_budget, sticky_actions=args.sticky_actions,
                           storage=args.storage, target=args.target,
                           device=args.device, secret_file=args.secret_file)
        else:
            if args.policy is None:
                raise UsageError("search needs --policy (or --resume --out RUN)")
            out = args.out or Path("runs") / args.policy.stem
            run = start_run(out, _config(args, method=args.method, agent=args.agent), trust_pickle=args.trust_pickle,
                            log=log)
        start = time.perf_counter()
        used = len([t for t in run.study().get_trials(deepcopy=False)])
        progress = _Progress(run.config.n_trials, min(used, run.config.n_trials), args.quiet)
        try:
            runner = run.search(progress=progress)
        except KeyboardInterrupt:
            progress.close()
            print(f"autoquant: interrupted; the trials so far are in the study. Resume with:\n  "
                  f"{run.resume_command()}", file=sys.stderr)
            raise
        except DeviceUnreachable as exc:
            progress.close()
            raise DeviceUnreachable(f"{exc} The trials so far are in the study; once the device is back, "
                                    f"resume with: {run.resume_command()}") from exc
        except Exception as exc:
            progress.close()
            _disk_full(exc, run)
            raise
        progress.close()
        if runner.stopped:
            log(f"stopped before the budget: {runner.stopped}")
        log("confirming the best plan on fresh seeds")
        try:
            confirmed = run.confirm()
            run.write_report()
        except Exception as exc:
            _disk_full(exc, run)
            raise
        if confirmed is None:
            log(f"no plan both kept retention >= {run.config.settings.min_retention} and ran faster than fp32: keep "
                f"the uncompressed policy; see {run.folder / 'report.md'}")
        return summary_json(run, confirmed, time.perf_counter() - start)

    def _fleet(self, args: argparse.Namespace, log: Any) -> dict[str, Any]:
        """``--target a,b,c``: one search for several targets (``autoquant.search.Fleet``)."""
        from autoquant.search import load_fleet, parse_targets, start_fleet

        targets = parse_targets(args.target) if args.target is not None else None
        if args.resume:
            fleet = load_fleet(args.out, targets=targets, trust_pickle=args.trust_pickle, n_trials=args.trials,
                               sticky_actions=args.sticky_actions)
        else:
            if args.policy is None:
                raise UsageError("search needs --policy (or --resume --out RUN)")
            assert targets is not None  # a fleet is started only from a list
            first = argparse.Namespace(**{**vars(args), "target": targets[0]})
            out = args.out or Path("runs") / args.policy.stem
            fleet = start_fleet(out, _config(first, method=args.method, agent=args.agent), targets,
                                proposals=args.fleet_proposals, trust_pickle=args.trust_pickle, log=log)
        start = time.perf_counter()
        bars: list[_Progress] = []

        def progress(name: str, quota: int, used: int) -> _Progress:
            for bar in bars:
                bar.close()
            bars.append(_Progress(quota, min(used, quota), args.quiet, desc=name))
            return bars[-1]

        try:
            fleet.search(log=log, progress=progress)
        except (KeyboardInterrupt, DeviceUnreachable) as exc:
            for bar in bars:
                bar.close()
            print(f"autoquant: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}; the trials so far are "
                  f"in the targets' studies. Resume with:\n  {fleet.resume_command()}", file=sys.stderr)
            raise
        finally:
            for bar in bars:
                bar.close()
        log("confirming each target's best plan on fresh seeds")
        confirmed = fleet.confirm()
        fleet.write_report()
        wall = time.perf_counter() - start
        return {"run": str(fleet.folder), "fleet": list(fleet.members), "wall_s": round(wall, 1),
                "targets": {name: summary_json(run, confirmed[name], wall) for name, run in fleet.members.items()}}

    def render(self, result: dict[str, Any]) -> str:
        if "fleet" in result:
            lines = [f"fleet   {result['run']}  ({', '.join(result['fleet'])}; {result['wall_s']} s)"]
            for name, one in result["targets"].items():
                best = one["best"]
                lines.append(f"{name:<20} " + ("fp32: no plan kept the floor and ran faster" if best is None else
                                               f"trial {best['trial']}: {best['summary']}, latency ratio "
                                               f"{best['latency_ratio']:.3f}, retention {best['retention']:.3f}"))
            lines.append(f"report  {Path(result['run']) / 'report.md'}")
            return "\n".join(lines)
        lines = [f"run     {result['run']}  ({result['method']} / {result['agent']} on {result['target']}, "
                 f"{result['complete']} complete, {result['failed']} failed, {result['repeats']} repeats, "
                 f"{result['wall_s']} s)"]
        protocol = result.get("protocol") or {}
        fp32 = result.get("fp32_episodes") or {}
        lines.append(f"episodes {protocol.get('name')}; fp32 {fp32.get('mean', float('nan')):.2f} over "
                     f"{fp32.get('episodes')} episodes, {fp32.get('distinct_games')} distinct games")
        best = result["best"]
        failed = [a for a in (result.get("confirmation") or {}).get("attempts", []) if not a.get("passed")]
        for attempt in failed:
            lines.append(f"failed  trial {attempt['trial']} ({attempt['summary']}) failed confirmation: retention "
                         f"{attempt['retention']:.3f}")
        ort = result["reference"].get("onnxruntime_int8") or {}
        if best is None:
            lines.append("best    fp32: no plan both met the retention floor and ran faster than fp32")
        else:
            if best.get("exact"):
                where = f"exact over all {best['confirm_episodes']} starts"
            elif best.get("retention_low") is not None and best["retention_low"] == best["retention_low"]:
                where = (f"[{best['retention_low']:.3f}, {best['retention_high']:.3f}] on {best['confirm_episodes']} "
                         "fresh seeds")
            else:
                where = f"on {best.get('confirm_episodes')} fresh seeds"
            games = best.get("distinct_pairs")
            lines += [
                f"best    trial {best['trial']}: {best['summary']}",
                f"        latency ratio {best['latency_ratio']:.3f} to fp32" + _measured(best.get("latency"))
                + (f", {best['latency_ratio'] / ort['latency_ratio']:.2f}x onnxruntime uniform int8's"
                   if ort.get("latency_ratio") else ""),
                f"        retention {best['retention']:.3f} {where}"
                + (f", {games} distinct pairs of games" if games is not None else "")
                + f" (reward {best['reward']:.2f} vs fp32 {best['fp32_reward']:.2f}); size {best['size_bytes']:,} "
                f"bytes ({best['size_ratio']:.3f} of fp32)",
            ]
        if "latency_ratio" in ort:
            lines.append(f"ref     onnxruntime uniform int8: latency ratio {ort['latency_ratio']:.3f}, "
                         f"retention {ort['retention']:.3f} on the search's seeds")
        lines.append(f"report  {Path(result['run']) / 'report.md'}")
        return "\n".join(lines)


class ExportCommand(Command):
    name = "export"
    help = "export a plan of a run as a runnable model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run", type=Path, help="run folder")
        parser.add_argument("--trial", default="best",
                            help="'best' (confirmed), a trial number, or 'front' (with --format actorq: the Pareto "
                                 "front as a ladder of bundles, cheapest first, for 'actorq run --monitor')")
        from autoquant.export import export_formats, exporter_help

        parser.add_argument("--format", choices=export_formats(), default="onnx", help=exporter_help())
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        add_target_arguments(parser)
        parser.add_argument("--storage", help="the Optuna storage URL of a run whose study is not its own study.db "
                            "(a run folder never chooses a database by itself)")
        parser.add_argument("--trust-pickle", action="store_true",
                            help="allow the run's policy to be a pickled module or TorchScript (runs code "
                            "from the file); a run folder never grants this by itself")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.export import export_plan
        from autoquant.search import fleet_member, is_fleet, load_run

        if args.trial not in ("best", "front") and not args.trial.isdigit():
            raise UsageError(f"--trial must be 'best', 'front' or a trial number, got {args.trial!r}")
        check_output_folder(args.out, "--out")
        folder, target = args.run, args.target
        if is_fleet(args.run):  # a fleet: --target picks the target's run
            folder, target = fleet_member(args.run, args.target)
        run = load_run(folder, trust_pickle=args.trust_pickle, storage=args.storage, target=target,
                       device=args.device, secret_file=args.secret_file)
        return export_plan(run, args.trial, fmt=args.format, out=args.out)

    def render(self, result: dict[str, Any]) -> str:
        if result["trial"] == "front":
            lines = [f"exported the Pareto front as a ladder of {len(result['levels'])} ActorQ bundles, cheapest first"]
            lines += [f"  {level['path']}: trial {level['trial']} ({level['summary']})" for level in result["levels"]]
            if result["skipped_fine_tuned"]:
                lines.append(f"  left out, fine-tuned: trials {result['skipped_fine_tuned']}")
            return "\n".join(lines)
        return "\n".join([f"exported trial {result['trial']} ({result['summary']}) as {result['format']}",
                          *(f"  {f}" for f in result["files"])])


class CompareCommand(Command):
    name = "compare"
    help = "run several methods and agents on the same budget and seeds, and tabulate them"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _add_run_arguments(parser, policy_required=True)
        parser.add_argument("--methods", type=names, default=["prune", "quant", "joint"],
                            help="comma-separated search spaces (default prune,quant,joint)")
        from autoquant.search import agent_names

        parser.add_argument("--agents", type=names, default=["ilp", "ddpg", "tpe", "random"],
                            help=f"comma-separated agents, of {', '.join(agent_names())} (default "
                                 "ilp,ddpg,tpe,random; 'autoquant search --help' says what each is)")
        parser.add_argument("--out", type=Path, required=True, help="comparison folder (resumable)")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.search import compare

        log = (lambda s: None) if args.quiet else (lambda s: print(f"autoquant: {s}", file=sys.stderr))
        bars: list[_Progress] = []

        def progress(label: str, total: int) -> _Progress:
            for bar in bars:
                bar.close()
            bars.append(_Progress(total, 0, args.quiet, desc=label))
            return bars[-1]

        try:
            return compare(args.out, _config(args, method=args.methods[0], agent=args.agents[0]),
                           methods=args.methods, agents=args.agents, trust_pickle=args.trust_pickle, log=log,
                           progress=progress)
        finally:
            for bar in bars:
                bar.close()

    def render(self, result: dict[str, Any]) -> str:
        def fmt(v: Any) -> str:
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

        head = ["combo", "best latency ratio", "retention", "hypervolume", "trials to 95%", "wall s"]
        lines = [" | ".join(head)]
        for row in result["rows"]:
            lines.append(" | ".join(fmt(row.get(k)) for k in ("combo", "best_latency_ratio", "best_retention",
                                                              "hypervolume", "trials_to_95", "wall_s")))
        lines.append(f"table and plot: {Path(result['out']) / 'compare.md'}, {Path(result['out']) / 'compare.png'}")
        return "\n".join(lines)
