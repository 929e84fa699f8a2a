"""ActorQ commands: ``actorq run`` (quantized Ray actors feeding an fp32 SB3 learner).

``--learner``'s choices and the learner options come from the learner registry
(``autoquant.actorq.learners()``): each learner's options are declared once per flag, and a
flag the run's learner does not take is refused in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from autoquant._io import check_output_folder
from autoquant.cli import Command
from autoquant._limits import MAX_ACTORS, MAX_ENVS, MAX_EPISODES, MAX_SEED, MAX_STEPS, MAX_THREADS
from autoquant.cli._options import integer

__all__ = ["ActorQCommand"]


def _learner_options(entries: Iterable[Any]) -> list[tuple[Any, list[Any]]]:
    """Each learner flag once, with the learners that take it: (the first one's option, learners)."""
    by_flag: dict[str, tuple[Any, list[Any]]] = {}
    for entry in entries:
        for option in entry.options:
            by_flag.setdefault(option.flag, (option, []))[1].append(entry)
    return list(by_flag.values())


def _option_help(flag: str, takers: Sequence[Any], everyone: int) -> str:
    """An option's help: its text, named after the learners that take it unless all do."""
    texts = [next(o.help for o in entry.options if o.flag == flag) for entry in takers]
    if len(takers) == everyone and len(set(texts)) == 1:
        text = texts[0]
    else:
        text = "; ".join(f"{entry.name.upper()}: {t}" for entry, t in zip(takers, texts))
    return f"learner: {text} (default: the env's rl-zoo3 preset)".replace("%", "%%")


class ActorQCommand(Command):
    name = "actorq"
    help = "'autoquant actorq run': Ray actors with the bundle's quantized policy feed an fp32 SB3 learner"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from autoquant.actorq import learners

        entries = learners()
        parser.add_argument("action", choices=("run",))
        parser.add_argument("--bundle", required=True, type=Path,
                            help="ActorQ bundle folder (autoquant export RUN --format actorq --out DIR), or a ladder "
                                 "of them (--trial front) with --monitor")
        parser.add_argument("--env", required=True, help="gymnasium id; must be the bundle's env")
        parser.add_argument("--actors", type=integer(1, MAX_ACTORS), default=4,
                            help=f"Ray actors (default 4, at most {MAX_ACTORS:,})")
        parser.add_argument("--envs-per-actor", type=integer(1, MAX_ENVS), default=1,
                            help="envs each actor steps in lockstep with one batched policy call (default 1, at "
                                 f"most {MAX_ENVS})")
        parser.add_argument("--learner", choices=tuple(entries),
                            help=("the learner: " + "; ".join(f"{e.name}: {e.help}" for e in entries.values())
                                  + " (default: the one the bundle's policy was trained with)").replace("%", "%%"))
        parser.add_argument("--correction", choices=("tis", "vtrace", "none"), default=None,
                            help="off-policy correction for quantized (and, for IMPALA, stale) actors: PPO's "
                                 "truncated importance sampling (its default), IMPALA's V-trace (its default), "
                                 "or none")
        parser.add_argument("--stop-at", type=float, default=None, metavar="SCORE",
                            help="stop once a greedy evaluation's mean reaches SCORE; the report gives the "
                                 "wall-clock to it (time to threshold)")
        parser.add_argument("--monitor", action="store_true",
                            help="at every broadcast: re-calibrate the actors' activation ranges on their recent "
                                 "states, measure KL(mu || pi), and raise the actors' precision above --kl-bound "
                                 "(PPO and IMPALA learners)")
        parser.add_argument("--kl-bound", type=float, default=0.02, help="the monitor's bound on KL(mu || pi)")
        parser.add_argument("--monitor-patience", type=integer(1, 1000), default=3,
                            help="checks in a row under half the bound before the precision goes back down")
        parser.add_argument("--recalibrate-tolerance", type=float, default=1.25,
                            help="re-calibrate a quantizer whose range moved by more than this ratio (default 1.25)")
        parser.add_argument("--precision-level", type=Path, action="append", default=[], metavar="BUNDLE",
                            help="a more precise bundle of the same network, a level between the bundle and fp32 "
                                 "(repeat, cheapest first; e.g. plans from the search's Pareto front)")
        parser.add_argument("--is-truncation", type=float, default=2.0,
                            help="PPO: the largest importance weight pi_learner / pi_actor (default 2)")
        parser.add_argument("--rebuild", choices=("auto", "session", "preoptimized"), default="auto",
                            help="how actors rebuild per broadcast: auto (default: the faster of the two, checked), "
                                 "a fresh session, or a session on a graph optimized once")
        parser.add_argument("--steps", type=integer(1, MAX_STEPS), default=200_000,
                            help=f"env steps, all actors together (default 200000, at most {MAX_STEPS:,})")
        parser.add_argument("--fp32-actors", action="store_true",
                            help="actors run the fp32 network (same loop, for comparison)")
        parser.add_argument("--central", action="store_true",
                            help="the learner quantizes and broadcasts int8 (default: actors quantize fp32 weights)")
        parser.add_argument("--broadcast-every", type=integer(1, MAX_STEPS), default=1000,
                            help="DQN: env steps between weight broadcasts (default 1000; PPO broadcasts every "
                                 "iteration)")
        parser.add_argument("--chunk", type=integer(1, MAX_STEPS), default=250,
                            help="env steps an actor collects per request (default 250)")
        parser.add_argument("--eval-every", type=integer(1, MAX_STEPS), help="env steps between greedy "
                            "evaluations of the learner (default: steps / 10)")
        parser.add_argument("--eval-episodes", type=integer(0, MAX_EPISODES), default=10,
                            help=f"episodes per greedy evaluation, fixed seeds (default 10; 0: none; at most "
                                 f"{MAX_EPISODES:,})")
        parser.add_argument("--init-from-policy", type=Path, metavar="PATH",
                            help="start the learner from this policy's weights (default: from scratch)")
        parser.add_argument("--ray-address", help="join this Ray cluster (default: start Ray locally)")
        parser.add_argument("--learner-threads", type=integer(1, MAX_THREADS), default=1,
                            help=f"torch threads (default 1, at most {MAX_THREADS})")
        parser.add_argument("--actor-threads", type=integer(1, MAX_THREADS), default=1,
                            help=f"onnxruntime threads (default 1, at most {MAX_THREADS})")
        parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                            help=f"seed of the learner, actors and evaluations (default 0, at most {MAX_SEED:,})")
        for option, takers in _learner_options(entries.values()):
            kind = integer(option.low, option.high) if option.type is int and option.low is not None else option.type
            parser.add_argument(option.flag, type=kind, dest=option.dest,
                                help=_option_help(option.flag, takers, len(entries)))
        parser.add_argument("--out", type=Path, help="write actorq_run.json and curve.png here")
        parser.add_argument("--quiet", action="store_true", help="no progress lines")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        import dataclasses

        from autoquant._io import write_json
        from autoquant.actorq import (ActorRunConfig, is_ladder, learner_algo, learner_entry, learners, load_bundle,
                                      load_ladder, run_actorq)
        from autoquant.errors import UsageError
        from autoquant.report import plot_learning_curves

        if args.out is not None:
            check_output_folder(args.out, "--out")
        if not args.bundle.is_dir():
            raise UsageError(f"--bundle {args.bundle} is not a folder: pass an ActorQ bundle "
                             "(autoquant export RUN --format actorq --out DIR)")
        bundle_folder, levels = args.bundle, [str(p) for p in args.precision_level]
        if is_ladder(args.bundle):  # a ladder: its cheapest level is the bundle, the others the monitor's levels
            if not args.monitor:
                raise UsageError(f"--bundle {args.bundle} is a ladder of bundles, the monitor's precision levels: add "
                                 "--monitor, or pass one of its level folders")
            if levels:
                raise UsageError("--precision-level with a ladder: the ladder names its levels; drop one of them")
            ladder = load_ladder(args.bundle)
            bundle_folder, levels = ladder[0].folder, [str(b.folder) for b in ladder[1:]]
        algo = learner_algo(load_bundle(bundle_folder), args.learner)
        entry = learner_entry(algo)
        mine = {option.flag: option for option in entry.options}
        overrides: dict[str, Any] = {}
        for option, takers in _learner_options(learners().values()):
            if getattr(args, option.dest, None) is None:
                continue
            if option.flag not in mine:
                names = " or ".join(taker.name.upper() for taker in takers)
                raise UsageError(f"{option.flag} sets a {names} learner's option; this run's learner is "
                                 f"{algo.upper()}: drop {option.flag}")
            overrides[mine[option.flag].field] = getattr(args, option.dest)
        source, preset = entry.preset(args.env)
        learner = dataclasses.replace(preset, **overrides) if overrides else None
        config = ActorRunConfig(
            bundle=str(bundle_folder), env_id=args.env, actors=args.actors, steps=args.steps,
            fp32_actors=args.fp32_actors, central=args.central, broadcast_every=args.broadcast_every,
            chunk=args.chunk, eval_every=args.eval_every, eval_episodes=args.eval_episodes, seed=args.seed,
            init_from_policy=str(args.init_from_policy) if args.init_from_policy else None,
            ray_address=args.ray_address, learner=learner,
            learner_source=f"{source} with {', '.join(sorted(overrides))} given" if overrides else None,
            learner_threads=args.learner_threads,
            actor_threads=args.actor_threads, learner_algo=algo, envs_per_actor=args.envs_per_actor,
            correction=args.correction, is_truncation=args.is_truncation, rebuild=args.rebuild,
            stop_at=args.stop_at, monitor=args.monitor, kl_bound=args.kl_bound,
            monitor_patience=args.monitor_patience, recalibrate_tolerance=args.recalibrate_tolerance,
            precision_levels=tuple(levels))
        log = (lambda s: None) if args.quiet else (lambda s: print(f"autoquant: {s}", file=sys.stderr, flush=True))
        report = run_actorq(config, log=log)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "actorq_run.json", report)
            plot_learning_curves({report["actors"]["kind"]: report}, args.out / "curve.png")
            report["files"] = [str(args.out / "actorq_run.json"), str(args.out / "curve.png")]
        return report

    def render(self, result: dict[str, Any]) -> str:
        rate, learner = result["actor_steps_per_s"], result["learner"]
        per_actor = ", ".join(f"{v:.0f}" for v in rate["per_actor"])
        lines = [
            (f"actorq run: {result['env_id']}, {result['actors']['count']} {result['actors']['kind']} actors "
             f"x {result['actors']['envs_per_actor']} envs, {learner['algo']} learner, "
             f"{result['env_steps']} env steps in {result['wall_s']:.1f} s"),
            (f"  placement: {len(result['placement']['nodes'])} node(s): "
             + ", ".join(f"actor {i} on {str(w.get('node_id'))[:12]} (pid {w.get('pid')})"
                         for i, w in enumerate(result["placement"]["actors"]))),
            f"  actor env-steps/s: {rate['total']:.0f} total ({per_actor} per actor), {rate['achieved']:.0f} achieved",
            (f"  env steps per actor CPU-second: {_num(rate['per_cpu_s'])}; policy per call: "
             f"{_ms(result['policy_ms_per_call'])} ({_ms(result['policy_cpu_ms_per_call'])} CPU); env per step: "
             f"{_ms(result['env_ms_per_step'])}"),
            (f"  learner: {learner['updates']} updates, {learner['updates_per_s']:.0f}/s training "
             f"({learner['updates_per_s_wall']:.0f}/s over the loop)"),
        ]
        rebuild = result["broadcasts"]["actor_rebuild_ms"]
        if rebuild:
            paths = ", ".join(result["broadcasts"]["rebuild_paths"]) or "n/a"
            lines.append(f"  broadcasts: {result['broadcasts']['count']}, actor rebuild median "
                         f"{rebuild['median']:.2f} ms ({paths})")
        weights = learner.get("importance_weights")
        if weights:
            lines.append(f"  importance weights pi_learner/pi_actor ({learner['correction']}): mean "
                         f"{weights['rho_mean']:.3f}, range [{weights['rho_min']:.3f}, {weights['rho_max']:.3f}], "
                         f"{weights['truncated_share']:.2%} above {learner['is_truncation']:g}")
        vt = learner.get("vtrace")
        if vt:
            lag = vt["policy_lag_updates"]
            lines.append(f"  V-trace ({learner['correction']}): rho mean {vt['rho_mean']:.3f}, "
                         f"{vt['rho_clipped_share']:.2%} clipped; policy lag {lag['mean']:.1f} updates (max "
                         f"{lag['max']:.0f}); KL(mu||pi) {vt['kl_mu_pi_mean']:.2e}")
        monitor = result.get("monitor")
        if monitor:
            kl = monitor["kl"] or {}
            lines.append(f"  monitor: {monitor['checks']} checks, KL mean {kl.get('mean', float('nan')):.2e} (bound "
                         f"{monitor['kl_bound']:g}), {len(monitor['decisions'])} decisions, final level "
                         f"{monitor['final_level']}")
        reached = result.get("threshold")
        if reached:
            lines.append(f"  reached {reached['score']:g} at {reached['env_steps']} env steps, "
                         f"{reached['train_wall_s']:.1f} s" if reached.get("reached") else
                         f"  never reached {reached['score']:g}")
        evals = result["curve"]["eval"]
        if evals:
            lines.append("  greedy learner (fp32): " + ", ".join(f"{e['step']}: {e['mean']:.1f}" for e in evals))
        final = result.get("final") or {}
        if final.get("actor"):
            lines.append(f"  final: learner fp32 {final['learner_fp32']['mean']:.1f}, actor policy "
                         f"{final['actor']['mean']:.1f}, random {final['random']['mean']:.1f}")
        for path in result.get("files", []):
            lines.append(f"  wrote {path}")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} ms"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
