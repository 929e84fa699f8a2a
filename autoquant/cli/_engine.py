"""Engine commands: ``inspect`` and ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoquant._io import check_output_file
from autoquant._limits import MAX_ENVS, MAX_EPISODES, MAX_FINETUNE_EPOCHS, MAX_FINETUNE_ROUNDS, MAX_SEED, MAX_STATES
from autoquant.cli import Command
from autoquant.cli._options import (
    add_policy_arguments,
    add_protocol_argument,
    add_target_arguments,
    integer,
    load_from_args,
)
from autoquant.errors import UsageError

__all__ = ["EvaluateCommand", "InspectCommand"]


def policy_json(bundle: Any) -> dict[str, Any]:
    return {"source": str(bundle.source), "algo": bundle.algo, "env_id": bundle.env_id,
            "input_shape": list(bundle.input_shape), "action": bundle.action.to_json(),
            "obs_scale": bundle.obs_scale}


def _fmt_int(n: int) -> str:
    return f"{n:,}"


class InspectCommand(Command):
    name = "inspect"
    help = "print a policy's layer table (shapes, params, MACs, what may be compressed)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_policy_arguments(parser)

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant.policy import analyse

        bundle = load_from_args(args)
        table = analyse(bundle)
        return {"policy": policy_json(bundle), **table.to_json()}

    def render(self, result: dict[str, Any]) -> str:
        p = result["policy"]
        lines = [
            f"policy  {p['source']}",
            f"algo    {p['algo']}    env {p['env_id'] or '(unknown: pass --env)'}    "
            f"input {tuple(p['input_shape'])}    action {p['action']['kind']}",
            "",
            f"{'layer':<8} {'type':<7} {'in':<14} {'out':<14} {'params':>11} {'MACs':>12}  "
            f"{'prunable':<9}{'quantizable':<12}{'head'}",
        ]
        for layer in result["layers"]:
            lines.append(
                f"{layer['name']:<8} {layer['type']:<7} {str(tuple(layer['in_shape'])):<14} "
                f"{str(tuple(layer['out_shape'])):<14} {_fmt_int(layer['params']):>11} "
                f"{_fmt_int(layer['macs']):>12}  {('yes' if layer['prunable'] else 'no'):<9}"
                f"{('yes' if layer['quantizable'] else 'no'):<12}{'yes' if layer['action_head'] else ''}"
            )
        lines.append(f"{'total':<8} {'':<7} {'':<14} {'':<14} {_fmt_int(result['total_params']):>11} "
                     f"{_fmt_int(result['total_macs']):>12}")
        return "\n".join(lines)


class EvaluateCommand(Command):
    name = "evaluate"
    help = "play and time the fp32 policy and, with --plan, its compressed version side by side"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_policy_arguments(parser)
        parser.add_argument("--plan", type=Path, help="compression plan JSON")
        parser.add_argument("--episodes", type=integer(0, MAX_EPISODES), default=None,
                            help="episodes per policy, on shared seeds (default: every start of a deterministic "
                                 f"Atari game, the 30 no-op starts, else 20; at most {MAX_EPISODES:,})")
        add_protocol_argument(parser)
        add_target_arguments(parser)
        parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
        parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                            help=f"seed of states and episodes (default 0, at most {MAX_SEED:,})")
        parser.add_argument("--states", type=integer(1, MAX_STATES), default=1024,
                            help=f"recorded states for calibration and fidelity (default 1024, at most {MAX_STATES:,})")
        parser.add_argument("--finetune", type=integer(0, MAX_FINETUNE_EPOCHS), default=0, metavar="EPOCHS",
                            help="fine-tune the compressed network by distillation from fp32 (default 0, at most "
                                 f"{MAX_FINETUNE_EPOCHS:,})")
        parser.add_argument("--finetune-rounds", type=integer(0, MAX_FINETUNE_ROUNDS), default=2,
                            help="DAgger rounds after the first distillation, each on states the compressed "
                                 f"network visits itself (default 2, at most {MAX_FINETUNE_ROUNDS})")
        parser.add_argument("--envs", type=integer(1, MAX_ENVS), default=8,
                            help=f"environments stepped in lockstep (default 8, at most {MAX_ENVS})")
        parser.add_argument("--save-onnx", type=Path, help="write the evaluated compressed model here")

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from autoquant._io import atomic_write
        from autoquant.compress import CompressionPlan
        from autoquant.evaluate import evaluate
        from autoquant.policy import analyse
        from autoquant.targets import get_target

        if args.save_onnx is not None:
            if args.plan is None:
                raise UsageError("--save-onnx needs --plan")
            check_output_file(args.save_onnx, "--save-onnx")
        plan = CompressionPlan.load(args.plan) if args.plan else None
        target = None if args.no_latency else get_target(args.target or "host", device=args.device,
                                                          secret_file=args.secret_file,
                                                          runtime=plan.runtime if plan is not None else None)
        bundle = load_from_args(args)
        if bundle.env_id is None:
            raise UsageError(f"{args.policy}: the environment is unknown; pass --env (a gymnasium id)")
        if plan is not None:
            plan.validate(analyse(bundle))
        result = evaluate(bundle, target=target, plan=plan, episodes=args.episodes, seed=args.seed,
                          sticky_actions=args.sticky_actions,
                          n_states=args.states, finetune_epochs=args.finetune,
                          finetune_rounds=args.finetune_rounds, n_envs=args.envs)
        if args.save_onnx is not None:
            args.save_onnx.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.save_onnx, result.compressed.onnx)
        out = result.to_json()
        out["policy"] = policy_json(bundle)
        out["target"] = None if target is None else target.name
        return out

    def render(self, result: dict[str, Any]) -> str:
        p = result["policy"]
        lines = [f"policy {p['source']} ({p['algo']}, {p['env_id']})"]
        fp32, plan, lat = result["fp32"], result["plan"], result["latency"]

        def reward(r: dict[str, Any] | None) -> str:
            if not r:
                return "-"
            games = f"{r['episodes']} ep, {r['distinct_games']} distinct"
            if r.get("exact"):
                return f"{r['mean']:.2f} exact ({games})"
            half = r["ci95"]
            return f"{r['mean']:.2f} ± {half:.2f} ({games})" if half == half else f"{r['mean']:.2f} ({games})"

        rows = [("", "fp32", "plan" if plan else "")]
        rows.append(("reward (95% CI)", reward(fp32["reward"]), reward(plan.get("reward")) if plan else ""))
        if plan and "retention" in plan:
            paired = plan["paired"]
            interval = ("exact" if paired["exact"] else
                        f"[{paired['retention_low']:.3f}, {paired['retention_high']:.3f}]")
            rows.append(("retention vs fp32", "1.000", f"{plan['retention']:.3f} {interval} "
                         f"({paired['distinct_pairs']} distinct pairs of games)"))
        if plan:
            fid = plan["fidelity"]
            key = "action_agreement" if "action_agreement" in fid else "action_error"
            rows.append((key.replace("_", " "), "", f"{fid[key]:.4f}"))
            rows.append(("output error (rel.)", "", f"{fid['output_error']:.4f}"))
        if lat:
            ref = lat["reference"] or lat["candidate"]
            rows.append(("latency p10 ms", f"{ref['p10']:.4f}", f"{lat['candidate']['p10']:.4f}" if plan else ""))
            rows.append(("latency median ms", f"{ref['median']:.4f}",
                         f"{lat['candidate']['median']:.4f}" if plan else ""))
            if lat["ratio"] is not None:
                rows.append((f"latency ratio ({lat['statistic']})", "1.000", f"{lat['ratio']:.3f}"))
        rows.append(("size bytes (weights)", f"{fp32['size_bytes']:,}", f"{plan['size_bytes']:,}" if plan else ""))
        rows.append(("MACs", f"{fp32['macs']:,}", f"{plan['macs']:,}" if plan else ""))
        kernels = lambda k: " ".join(f"{n}:{v}" for n, v in k["layers"].items())  # noqa: E731
        rows.append(("kernels", kernels(fp32["kernels"]), kernels(plan["kernels"]) if plan else ""))
        width = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        for name, a, b in rows:
            lines.append(f"{name:<{width}}  {a:<{w1}}  {b}")
        if plan:
            lines.insert(1, f"plan   {plan['summary']}")
        protocol = result.get("protocol") or {}
        if fp32.get("reward"):
            exact = (f"; every one of its {protocol['starts']} starts played: means exact for it"
                     if fp32["reward"].get("exact") else "")
            lines.append(f"protocol: {protocol.get('name')}{exact}; intervals count each distinct game once")
        if result.get("random"):
            lines.append(f"random policy on the same seeds: {result['random']['mean']:.2f}")
        if lat:
            facts = lat["facts"]
            lines.append(f"measured on {result['target']}: {facts.get('cpu')}, {facts.get('threads')} thread(s), "
                         f"onnxruntime {facts.get('onnxruntime')}, {lat['calls']} calls interleaved with fp32")
        return "\n".join(lines)
